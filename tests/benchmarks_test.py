"""Benchmark loaders, prompts and registered tasks: format errors, oracle and chance checks."""

import collections
import csv
import glob
import json
import os

import pytest
import seqio
from conftest import DATA_DIR, needs_data

from flan_jax.evaluation import benchmarks

MMLU_DIR = os.path.join(DATA_DIR, "mmlu", "data", "mmlu")


@pytest.fixture(scope="module")
def registered():
    return set(benchmarks.register(seqio.ByteVocabulary()))


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_loader_errors_name_file_line_and_fix(tmp_path):
    header = "question,choice0,choice1,choice2,choice3,answer\n"
    bad = _write(tmp_path / "a.csv", header + "q1,a,b,c,d,1\nq2,a,b,c,d,4\n")
    with pytest.raises(ValueError, match=r"a\.csv:3: answer '4' should be an index 0-3"):
        benchmarks.load_mmlu_csv(bad)
    bad = _write(tmp_path / "b.csv", header + "q1,a,b,c,1\n")
    with pytest.raises(ValueError, match=r"b\.csv:2: expected 6 CSV columns"):
        benchmarks.load_mmlu_csv(bad)
    bad = _write(tmp_path / "c.csv", "q,a,b,c,d,answer\n")
    with pytest.raises(ValueError, match=r"c\.csv:1: header"):
        benchmarks.load_mmlu_csv(bad)
    bad = _write(
        tmp_path / "g.jsonl",
        '{"question": "q", "answer": "1 #### 1"}\n{"question": "q", "answer": "2"}\n',
    )
    with pytest.raises(ValueError, match=r"g\.jsonl:2: expected .*#### N"):
        benchmarks.load_gsm8k_jsonl(bad)
    bad = _write(tmp_path / "h.jsonl", '{"question": "q", "answer": "1 #### 1"}\n{oops\n')
    with pytest.raises(ValueError, match=r"h\.jsonl:2: malformed JSON line"):
        benchmarks.load_gsm8k_jsonl(bad)
    bad = _write(
        tmp_path / "t.json", '{"examples": [\n{"input": "x", "target": "y"},\n{"input": 3}]}'
    )
    with pytest.raises(ValueError, match=r"t\.json: examples\[1\] should be"):
        benchmarks.load_bbh_json(bad)
    bad = _write(tmp_path / "u.json", '{"examples": [\n{"input": "x",, }]}')
    with pytest.raises(ValueError, match=r"u\.json:2: invalid JSON"):
        benchmarks.load_bbh_json(bad)
    with pytest.raises(FileNotFoundError, match="set FLAN_JAX_DATA_DIR"):
        benchmarks.data_dir(str(tmp_path / "missing"))


def test_prompts_on_a_small_copy(tmp_path):
    """Exact prompt strings, from files a user could point the loaders at."""
    header = "question,choice0,choice1,choice2,choice3,answer\n"
    base = tmp_path / "mmlu" / "data" / "mmlu"
    _write(base / "dev" / "anatomy_dev.csv", header + "D1?,a,b,c,d,2\nD2?,e,f,g,h,0\n")
    _write(base / "test" / "anatomy_test.csv", header + '"T1, really?",w,x,y,z,3\n')
    got = benchmarks.mmlu_examples("test", subject="anatomy", shots=5, root=str(tmp_path))
    assert got == [
        {
            "inputs": "The following are multiple choice questions (with answers) "
            "about anatomy.\n\n"
            "D1?\nA. a\nB. b\nC. c\nD. d\nAnswer: C\n\n"
            "D2?\nA. e\nB. f\nC. g\nD. h\nAnswer: A\n\n"
            "T1, really?\nA. w\nB. x\nC. y\nD. z\nAnswer:",
            "targets": "D",
        }
    ]
    prompt = (
        "canary\n-----\nSay it.\n\nQ: 1+1?\nA: Let's think step by step.\nOne and one. "
        "So the answer is 2.\n\nQ: 2+2?\nA: Two and two. So the answer is 4."
    )
    _write(tmp_path / "bbh" / "cot-prompts" / "sums.txt", prompt)
    _write(
        tmp_path / "bbh" / "bbh" / "sums.json",
        json.dumps({"examples": [{"input": "3+3?", "target": "6"}]}),
    )
    direct = benchmarks.bbh_examples("test", task="sums", cot=False, root=str(tmp_path))
    assert direct == [
        {"inputs": "Say it.\n\nQ: 1+1?\nA: 2\n\nQ: 2+2?\nA: 4\n\nQ: 3+3?\nA:", "targets": "6"}
    ]
    cot = benchmarks.bbh_examples("test", task="sums", cot=True, root=str(tmp_path))
    assert cot[0]["inputs"] == (
        "Say it.\n\nQ: 1+1?\nA: Let's think step by step.\nOne and one. So the answer is 2.\n\n"
        "Q: 2+2?\nA: Two and two. So the answer is 4.\n\nQ: 3+3?\nA: Let's think step by step."
    )
    gsm = tmp_path / "gsm8k" / "grade_school_math" / "data"
    _write(
        gsm / "test.jsonl",
        json.dumps({"question": "How many?", "answer": "2*3=<<2*3=6>>6\nSo 1,006.\n#### 1,006"}),
    )
    got = benchmarks.gsm8k_examples("test", shots=0, root=str(tmp_path))
    assert got == [
        {
            "inputs": "Q: How many?\nA: Let's think step by step.",
            "targets": "2*3=6 So 1,006. The answer is 1006.",
        }
    ]


@needs_data
def test_tables_match_the_files():
    subjects = sorted(
        os.path.basename(p)[: -len("_test.csv")] for p in glob.glob(f"{MMLU_DIR}/test/*.csv")
    )
    assert tuple(subjects) == benchmarks.MMLU_SUBJECTS and len(subjects) == 57
    counts = collections.Counter(benchmarks.MMLU_CATEGORIES.values())
    assert counts == {"stem": 18, "humanities": 13, "social_sciences": 12, "other": 14}
    tasks = sorted(os.path.basename(p)[:-5] for p in glob.glob(f"{DATA_DIR}/bbh/bbh/*.json"))
    assert tuple(tasks) == benchmarks.BBH_TASKS and len(tasks) == 27


@needs_data
def test_registered_task_yields_the_prompts_tokenized(registered):
    assert {"mmlu_0shot", "mmlu_5shot", "bbh_direct", "bbh_cot", "gsm8k_8shot_cot"} <= registered
    assert len(registered) == 2 * 57 + 2 + 2 * 27 + 2 + 2
    ds = seqio.get_mixture_or_task("mmlu_anatomy_5shot").get_dataset(
        {"inputs": 4096, "targets": 8}, split="test", shuffle=False
    )
    ex = next(ds.as_numpy_iterator())
    want = benchmarks.mmlu_examples("test", subject="anatomy", shots=5)[0]
    assert ex["inputs_pretokenized"].decode() == want["inputs"]
    assert ex["targets_pretokenized"].decode() == want["targets"]
    assert list(ex["targets"]) == [ord(want["targets"]) + 3, 1]  # byte vocab offset 3, then EOS
    assert [o.decode() for o in ex["options"]] == ["A", "B", "C", "D"]
    assert (
        ex["_cluster"].decode() == "mmlu_other"
        and ex["_task_name"].decode() == "mmlu_anatomy_5shot"
    )
    assert want["inputs"].count("\nAnswer: ") == 5


def _examples(name):
    if name.startswith("mmlu_"):
        subject, shots = name[len("mmlu_") :].rsplit("_", 1)
        return benchmarks.mmlu_examples("test", subject=subject, shots=int(shots[0]))
    if name.startswith("bbh_"):
        task, mode = name[len("bbh_") :].rsplit("_", 1)
        return benchmarks.bbh_examples("test", task=task, cot=mode == "cot")
    return benchmarks.gsm8k_examples("test", shots=int(name.split("_")[1][0]))


def _score(name, predictions, targets):
    task = seqio.get_mixture_or_task(name)
    post = task.postprocess_fn
    preds = [post(p, example=None, is_target=False) for p in predictions]
    golds = [post(t, example=None, is_target=True) for t in targets]
    (metric,) = task.metric_fns
    return metric(golds, preds)["accuracy"]


@needs_data
def test_oracle_gold_targets_score_100_and_constant_answers_score_chance(registered):
    names = [
        n
        for n in sorted(registered)
        if n.startswith(("mmlu_", "bbh_", "gsm8k_"))
        and n not in ("mmlu_0shot", "mmlu_5shot", "bbh_direct", "bbh_cot")
    ]
    assert len(names) == 2 * 57 + 2 * 27 + 2
    for name in names:
        targets = [r["targets"] for r in _examples(name)]
        assert _score(name, targets, targets) == 100.0, name
        if name.startswith("mmlu_"):
            # chance of always answering "A", from the raw CSV (answer column == "0")
            subject = name[len("mmlu_") :].rsplit("_", 1)[0]
            with open(f"{MMLU_DIR}/test/{subject}_test.csv", newline="") as f:
                answers = [row["answer"] for row in csv.DictReader(f)]
            expected, constant = 100.0 * answers.count("0") / len(answers), "Answer: A"
        elif name.startswith("bbh_"):
            task = name[len("bbh_") :].rsplit("_", 1)[0]
            with open(f"{DATA_DIR}/bbh/bbh/{task}.json") as f:
                golds = [e["target"] for e in json.load(f)["examples"]]
            expected, constant = 100.0 * golds.count("(A)") / len(golds), "So the answer is (A)."
        else:
            with open(f"{DATA_DIR}/gsm8k/grade_school_math/data/test.jsonl") as f:
                finals = [json.loads(line)["answer"].split("####")[1].strip() for line in f]
            expected, constant = 100.0 * finals.count("2") / len(finals), "The answer is 2."
        got = _score(name, [constant] * len(targets), targets)
        assert got == pytest.approx(expected), name


@needs_data
def test_gsm8k_8shot_uses_fixed_train_exemplars():
    row = benchmarks.gsm8k_examples("test", shots=8)[0]
    assert row["inputs"].count("\nA: ") == 9 and row["inputs"].count("The answer is") == 8
    assert row["inputs"].startswith("Q: Natalia sold clips to 48 of her friends in April")
    assert "<<" not in row["inputs"] and row["targets"].endswith("The answer is 18.")


def test_mmlu_summary_means_subjects_per_category():
    per_task = {
        "mmlu_anatomy_0shot": {"accuracy": 40.0},
        "mmlu_virology_0shot": {"accuracy": 60.0},
        "mmlu_philosophy_0shot": {"accuracy": 20.0},
    }
    out = benchmarks.mmlu_summary(per_task, shots=0)
    assert out == {
        "anatomy": 40.0,
        "philosophy": 20.0,
        "virology": 60.0,
        "other": 50.0,
        "humanities": 20.0,
        "average": 40.0,
    }
