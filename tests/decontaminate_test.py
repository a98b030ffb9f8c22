"""Decontamination: n-gram overlap finds planted evaluation examples, none in shipped mixtures."""

from __future__ import annotations

import json

import pytest
from conftest import needs_data

from flan_jax.data import decontaminate, mixtures, tasks

GSM8K_Q0 = "Janet’s ducks lay 16 eggs per day."  # opening words of GSM8K test question 0


def test_normalize_and_ngrams():
    assert decontaminate.normalize("It's 4:30, Bob!") == ["it", "s", "4", "30", "bob"]
    assert decontaminate.ngrams("a b c d", n=3) == {("a", "b", "c"), ("b", "c", "d")}
    assert decontaminate.ngrams("A b!", n=3) == {("a", "b")}  # short text: one n-gram
    assert decontaminate.ngrams("?!", n=3) == set()


def test_planted_duplicates_are_found():
    evals = {"gsm8k_test": ["Natalia sold clips to 48 of her friends in April."]}
    index = decontaminate.EvalIndex(evals, n=8)
    train = [
        "Unrelated text about ducks and eggs on a farm in the spring time.",
        "Q: NATALIA sold clips, to 48 of her friends in April! How many?",  # planted
        "natalia sold clips to 47 of her friends in april",  # one word differs: no 8-gram
        "Bob sold clips to 48 of her friends in May.",  # 1 of 3 n-grams: under half
    ]
    count, found = decontaminate.find_overlaps(index, "planted_task", train)
    assert count == 4
    assert found == [
        decontaminate.Overlap(
            "gsm8k_test", 0, "planted_task", 1, "natalia sold clips to 48 of her friends"
        )
    ]


def test_bad_ngram_size():
    with pytest.raises(ValueError, match="n-gram size must be >= 1, got 0"):
        decontaminate.EvalIndex({}, n=0)


@needs_data
def test_eval_sets_have_readme_counts():
    sets = decontaminate.load_eval_sets()
    assert {k: len(v) for k, v in sets.items()} == {
        "mmlu": 14042,
        "bbh": 6511,
        "gsm8k_test": 1319,
        "mgsm": 11 * 250,
    }
    assert sets["gsm8k_test"][0].startswith(GSM8K_Q0)
    assert sets["mgsm"][0].startswith("জেনেটের হাঁসগুলি")  # bn, the first file in name order


@needs_data
def test_translated_mgsm_questions_are_found_in_every_script():
    sets = decontaminate.load_eval_sets()
    index = decontaminate.EvalIndex({"mgsm": sets["mgsm"]})
    for i in (3, 1253, 2503):  # bn, ja, zh: Bengali words, kana/kanji and Chinese characters
        planted = "Translate to English: " + sets["mgsm"][i]
        assert index.match(planted)[:2] == ("mgsm", i)
    # an MGSM exemplar (not a test problem) in Chinese: no match
    exemplar = "罗杰有 5 个网球。他又买了 2 罐网球。每罐有 3 个网球。他现在有多少个网球？"
    assert index.match(exemplar) is None


@needs_data
def test_check_mixture_finds_planted_gsm8k_test_question(tmp_path):
    sets = decontaminate.load_eval_sets()
    rows = [
        {"q": "What is two plus two?", "a": "4"},
        {"q": "Please solve: " + sets["gsm8k_test"][5], "a": "7"},  # planted
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "name": "planted_decontam",
        "cluster": "math",
        "source": {"type": "jsonl", "splits": {"train": str(path)}},
        "fields": {"question": "q", "answer": "a"},
        "templates": [{"inputs": "{question}", "targets": "{answer}"}],
        "formats": ["zs_noopt"],
        "vocabulary": "byte",
    }
    tasks.register_task_spec(spec)
    mixtures.register_mixture_spec({"name": "planted_mix", "members": ["planted_decontam"]})
    try:
        report = decontaminate.check_mixture("planted_mix", eval_sets=sets)
    finally:
        mixtures.unregister_mixture("planted_mix")
        tasks.unregister_task_spec("planted_decontam")
    assert report.checked == {"planted_decontam": 2}
    assert report.contaminated == 1
    assert [(o.eval_set, o.eval_index, o.train_index) for o in report.overlaps] == [
        ("gsm8k_test", 5, 1)
    ]
    assert "contaminated: 1" in decontaminate.format_report(report)


@needs_data
def test_drop_eval_overlaps_removes_exactly_the_gsm8k_test_copies():
    from flan_jax.data import sources
    from flan_jax.specs import spec_dir

    spec = tasks.load_task_spec(spec_dir("tasks") / "cot" / "cot_gsm8k.yaml")
    rows = list(sources.iter_examples(spec.source, "train"))
    dropped = [i for i, row in enumerate(rows) if decontaminate.drop_eval_overlaps(row) is None]
    assert (len(rows), dropped) == (7473, [1314, 5162])
    test_q = decontaminate.load_eval_sets()["gsm8k_test"][602]
    assert test_q.startswith("A plane travels 1200 miles in 3 hours")


@needs_data
def test_shipped_mixtures_are_clean():
    from flan_jax import registry
    from flan_jax.specs import spec_dir

    root = spec_dir("tasks")
    files = sorted((root / "flan2021").glob("*.yaml")) + sorted((root / "t0").glob("*.yaml"))
    files += sorted((root / "cot").glob("*.yaml"))
    names = ("flan2021", "flan2022_flan", "flan2022_t0", "flan2022_cot", "flan2022")
    registry.register_specs(files, [spec_dir("mixtures") / f"{n}.yaml" for n in names])
    sets = decontaminate.load_eval_sets()
    report = decontaminate.check_mixture("flan2022", eval_sets=sets)
    # FLAN's GSM8K CoT train set holds two re-numbered copies of GSM8K test question 602 ("A
    # plane travels 1200 miles in 3 hours. At the same rate, ..."), file rows 1314 and 5162;
    # the cot_gsm8k spec drops them with `drop_eval_overlaps`, so nothing is left to report.
    assert report.overlaps == [], decontaminate.format_report(report)
    assert report.checked["cot_gsm8k"] == 7471
    # every T0 and CoT task read from the real files, plus the NIv2 and dialog samples
    assert len(report.checked) == 283 + 7 + 3
    assert sum(report.checked.values()) > 50_000
    assert len(report.skipped) == 67 + 2  # FLAN 2021, e-SNLI and QED (TFDS): not prepared here
    flan2021 = decontaminate.check_mixture("flan2021_minus_nli", eval_sets=sets)
    assert flan2021.contaminated == 0 and not flan2021.checked
