"""MMLU chain of thought: zero-shot prompts, a user exemplar file, letter extraction, oracle."""

import csv
import json
import os

import pytest
import seqio
from conftest import DATA_DIR, needs_data

from flan_jax.evaluation import benchmarks, benchmarks_mmlu_cot
from flan_jax.metrics import accuracy

EXEMPLARS = os.path.join(os.path.dirname(__file__), "testdata", "mmlu_cot_exemplars.jsonl")
MMLU_DIR = os.path.join(DATA_DIR, "mmlu", "data", "mmlu")


@pytest.fixture(scope="module")
def registered():
    return set(benchmarks_mmlu_cot.register(seqio.ByteVocabulary(), exemplars=EXEMPLARS))


@pytest.mark.parametrize(
    "text, want",
    [
        ("Mercury is first. So the answer is (B).", "B"),
        ("The answer is C.", "C"),
        ("(A) is too small and (D) too big, so (C) fits.", "C"),  # no marker: the last (X)
        ("B. 42", "B"),
        ("Answer: D", "D"),
        ("So the answer is (B).\n\nQ: ... So the answer is (A).", "B"),  # the first answer
        ("A", "A"),  # a gold target
    ],
)
def test_letter_extraction(text, want):
    assert benchmarks_mmlu_cot.mmlu_cot_letter(text) == want


def test_exemplar_file_is_read_by_subject_and_checked(tmp_path):
    by_subject = benchmarks_mmlu_cot.load_cot_exemplars(EXEMPLARS)
    assert {s: [r["answer"] for r in rows] for s, rows in by_subject.items()} == {
        "astronomy": ["B", "C"],
        "high_school_mathematics": ["D", "A"],
    }
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"subject": "astronomy", "question": "q", "choices": []}) + "\n")
    with pytest.raises(
        ValueError, match=r"bad\.jsonl:1: expected keys .* missing: \['rationale', 'answer'\]"
    ):
        benchmarks_mmlu_cot.load_cot_exemplars(str(bad))
    bad.write_text(json.dumps({**by_subject["astronomy"][0], "subject": "astrology"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: unknown MMLU subject 'astrology'"):
        benchmarks_mmlu_cot.load_cot_exemplars(str(bad))


@needs_data
def test_prompts_zero_and_few_shot(registered, monkeypatch):
    assert len(registered) == 2 * 57 + 2
    zero = benchmarks_mmlu_cot.mmlu_cot_examples("test", subject="astronomy", shots=0)[0]
    direct = benchmarks.mmlu_examples("test", subject="astronomy", shots=0)[0]
    assert zero["inputs"] == direct["inputs"][: -len("Answer:")] + benchmarks_mmlu_cot.COT_CUE
    assert zero["targets"] == direct["targets"] == "A"
    few = benchmarks_mmlu_cot.mmlu_cot_examples(
        "test", subject="astronomy", shots=5, exemplars=EXEMPLARS
    )[0]
    shots = few["inputs"].split("\n\n")
    assert len(shots) == 4  # header, the file's 2 astronomy exemplars, the question
    assert shots[1] == (
        "Which planet of the solar system is closest to the Sun?\nA. Venus\nB. Mercury\n"
        "C. Earth\nD. Mars\nAnswer: Let's work it out one step at a time. The planets in order "
        "of distance from the Sun start Mercury, Venus, Earth, Mars. Mercury comes first. "
        "So the answer is (B)."
    )
    assert shots[3] == zero["inputs"].split("\n\n")[1]
    ds = seqio.get_mixture_or_task("mmlu_astronomy_5shot_cot").get_dataset(
        {"inputs": 4096, "targets": 4}, split="test", shuffle=False
    )
    ex = next(ds.as_numpy_iterator())
    assert ex["inputs_pretokenized"].decode() == few["inputs"]
    assert ex["_cluster"].decode() == "mmlu_cot_stem" and "options" not in ex
    monkeypatch.delenv(benchmarks_mmlu_cot.EXEMPLARS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="set \\$FLAN_JAX_MMLU_COT_EXEMPLARS"):
        benchmarks_mmlu_cot.mmlu_cot_examples("test", subject="astronomy", shots=5)
    with pytest.raises(ValueError, match="no exemplar for MMLU subject 'anatomy'"):
        benchmarks_mmlu_cot.mmlu_cot_examples(
            "test", subject="anatomy", shots=5, exemplars=EXEMPLARS
        )


@needs_data
def test_oracle_gold_scores_100_and_constant_scores_chance(registered):
    for subject in benchmarks.MMLU_SUBJECTS:
        name = f"mmlu_{subject}_0shot_cot"
        post = seqio.get_mixture_or_task(name).postprocess_fn
        rows = benchmarks_mmlu_cot.mmlu_cot_examples("test", subject=subject, shots=0)
        golds = [post(r["targets"], is_target=True) for r in rows]
        assert accuracy(golds, golds)["accuracy"] == 100.0
        with open(f"{MMLU_DIR}/test/{subject}_test.csv", newline="") as f:
            answers = [row["answer"] for row in csv.DictReader(f)]
        constant = post("Since (B) and (D) are wrong, so the answer is (C).")
        got = accuracy(golds, [constant] * len(golds))["accuracy"]
        assert got == pytest.approx(100.0 * answers.count("2") / len(answers)), subject
    summary = benchmarks_mmlu_cot.mmlu_cot_summary(
        {
            "mmlu_astronomy_0shot_cot": {"accuracy": 40.0},
            "mmlu_anatomy_0shot_cot": {"accuracy": 20.0},
        },
        0,
    )
    assert summary == {
        "astronomy": 40.0,
        "anatomy": 20.0,
        "stem": 40.0,
        "other": 20.0,
        "average": 30.0,
    }
