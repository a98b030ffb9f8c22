"""Tests of the task specs over the real data: GLUE TSVs, FLAN CoT TSVs, GSM8K, the T0 subset."""

import json
import os
import pathlib

import pytest
from conftest import DATA_DIR, needs_data

from flan_jax.data import collection, formats, tasks

ROOT = pathlib.Path(__file__).resolve().parents[1]
GLUE = ["glue_rte", "glue_sst2", "glue_mrpc", "glue_cola", "glue_qnli"]
COT_COUNTS = {
    "aqua": 2728,
    "creak": 6915,
    "ecqa": 7112,
    "gsm8k": 7471,  # 7,473 rows less 2 copies of GSM8K test questions (decontaminated)
    "qasc": 1084,
    "sensemaking": 6070,
    "strategyqa": 2061,
}
T0_DIR = "t0_subset/data/finetuning/t0_train_50k/data_per_template"


def _spec(path: str) -> tasks.TaskSpec:
    return tasks.load_task_spec(ROOT / "tasks" / path)


def _glue_rows(path: str) -> int:
    """Data rows of a GLUE TSV, counted without the loader (CoLA has no header)."""
    full = os.path.expandvars(path)
    with open(full, encoding="utf-8-sig") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    return len(lines) - (0 if "/CoLA/" in full else 1)


@pytest.mark.parametrize("name", GLUE)
def test_glue_templates_have_options_and_inversions(name):
    spec = _spec(f"glue/{name}.yaml")  # loading validates every placeholder against `fields`
    assert len(spec.templates) >= 10
    forward = [t for t in spec.templates.templates if not t.inverted]
    assert all("options_" in t.fields for t in forward)
    assert sum(t.inverted for t in spec.templates.templates) >= 2
    assert set(spec.label_map.values()) == set(spec.options)


@needs_data
@pytest.mark.parametrize("name", GLUE)
def test_glue_counts_labels_and_rendering(name):
    spec = _spec(f"glue/{name}.yaml")
    for split, path in spec.source.splits.items():
        examples = tasks.get_examples(spec, split)
        assert len(examples) == _glue_rows(path) == spec.num_examples[split]
        assert {ex["answer"] for ex in examples} == set(spec.options)
    examples = tasks.get_examples(spec, "validation")[:40]
    for i, template in enumerate(spec.templates.templates):
        for ex in examples:
            inputs, targets, scorable = formats.render_zero_shot(
                ex, template, options=spec.options, with_options=True
            )
            assert "{" not in template.inputs.format_map({**ex, "options_": ""})
            if not template.inverted:
                assert targets == ex["answer"] and scorable == list(spec.options), i
                assert inputs.endswith("OPTIONS:\n- " + "\n- ".join(spec.options))


@needs_data
def test_glue_rte_first_example_renders_exactly():
    import seqio

    tasks.register_task_spec(ROOT / "tasks" / "glue" / "glue_rte.yaml")
    task = seqio.get_mixture_or_task("glue_rte_zs_opt")
    ds = task.get_dataset({"inputs": 256, "targets": 8}, split="train", shuffle=False)
    first = next(ds.as_numpy_iterator())
    expected = (
        "No Weapons of Mass Destruction Found in Iraq Yet.\n\n"
        'Based on the passage above, is it true that "Weapons of Mass Destruction Found in '
        'Iraq."?\nOPTIONS:\n- yes\n- no'
    )
    assert first["inputs_pretokenized"].decode() == expected
    assert first["targets_pretokenized"].decode() == "no"
    vocab = task.output_features["inputs"].vocabulary
    assert first["inputs"].tolist() == list(vocab.encode(expected)) + [1]
    assert first["_template_type"] == b"zs_opt" and first["_cluster"] == b"nli"


@needs_data
@pytest.mark.parametrize("name", sorted(COT_COUNTS))
def test_cot_counts_and_unescaped_newlines(name):
    spec = _spec(f"cot/cot_{name}.yaml")
    examples = tasks.get_examples(spec, "train")
    assert len(examples) == COT_COUNTS[name] == spec.num_examples["train"]
    for ex in examples:
        assert all(ex[k] and "\\n" not in ex[k] for k in ("question", "rationale", "answer"))
        assert not ex["question"].endswith("\n")
    if name in ("aqua", "qasc", "ecqa", "sensemaking"):  # options are inside the question
        assert all("\nOptions:\n" in ex["question"] for ex in examples)
    if name in ("creak", "strategyqa"):
        assert {ex["answer"] for ex in examples} == {"yes", "no"}


@needs_data
def test_cot_gsm8k_first_example_renders_exactly():
    import seqio

    tasks.register_task_spec(ROOT / "tasks" / "cot" / "cot_gsm8k.yaml")
    task = seqio.get_mixture_or_task("cot_gsm8k_cot")
    ds = task.get_dataset({"inputs": 256, "targets": 128}, split="train", shuffle=False)
    first = next(ds.as_numpy_iterator())
    assert first["inputs_pretokenized"].decode() == (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?\n"
        "Let's think step by step."
    )
    assert first["targets_pretokenized"].decode() == (
        "Natalia sold 48 / 2 = 24 clips in May. Natalia sold 48 + 24 = 72 clips altogether "
        "in April and May. So the answer is 72."
    )
    assert first["_template_type"] == b"cot"


def test_cot_template_sets_end_with_the_answer_sentence():
    spec = _spec("cot/cot_aqua.yaml")
    forward = [t for t in spec.cot_templates.templates if not t.inverted]
    assert len(forward) >= 10
    assert all(t.targets == "{rationale} So the answer is {answer}." for t in forward)
    assert sum(t.inverted for t in spec.cot_templates.templates) >= 2
    assert len(spec.templates) >= 10


@needs_data
def test_gsm8k_rationale_and_answer_split():
    spec = _spec("gsm8k/gsm8k.yaml")
    train, test = tasks.get_examples(spec, "train"), tasks.get_examples(spec, "test")
    assert (len(train), len(test)) == (7473, 1319) == tuple(spec.num_examples.values())
    assert train[0] == {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half "
        "as many clips in May. How many clips did Natalia sell altogether in April and May?",
        "rationale": "Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips "
        "altogether in April and May.",
        "answer": "72",
    }
    path = os.path.join(DATA_DIR, "gsm8k/grade_school_math/data/train.jsonl")
    with open(path) as f:
        raw = [json.loads(line) for line in f]
    for ex, row in zip(train, raw):
        assert row["answer"].endswith(f"#### {ex['answer']}")
        assert "<<" not in ex["rationale"] and "####" not in ex["rationale"]


def test_gsm8k_preprocessor_rejects_an_answer_without_marker():
    with pytest.raises(ValueError, match=r"must end with '#### N', got 'about 5 apples'"):
        collection.gsm8k({"question": "Q?", "answer": "about 5 apples"})


@needs_data
def test_t0_one_spec_per_non_empty_file():
    files = sorted(pathlib.Path(DATA_DIR, T0_DIR).glob("*.jsonl"))
    non_empty = [f for f in files if f.stat().st_size > 0]
    assert (len(files), len(non_empty)) == (294, 283)
    specs = {p.stem: tasks.load_task_spec(p) for p in (ROOT / "tasks" / "t0").glob("*.yaml")}
    assert sorted(specs) == sorted(f"t0_{f.stem.lower()}" for f in non_empty)
    total = 0
    for f in non_empty:
        spec = specs[f"t0_{f.stem.lower()}"]
        rows = sum(1 for line in open(f) if line.strip())
        assert spec.num_examples == {"train": rows} and spec.formats == ("zs_noopt",)
        total += rows
    assert total == 55185
    assert specs["t0_sciq_multiple_choice"].cluster == "multiple_choice_qa"
    assert specs["t0_paws_labeled_final_meaning"].cluster == "paraphrase"


@needs_data
def test_t0_prompt_kept_and_endoftext_stripped():
    spec = _spec("t0/t0_imdb_movie_expressed_sentiment.yaml")
    path = pathlib.Path(DATA_DIR, T0_DIR, "imdb_Movie_Expressed_Sentiment.jsonl")
    with open(path) as f:
        raw = [json.loads(line) for line in f if line.strip()]
    examples = tasks.get_examples(spec, "train")
    assert len(examples) == len(raw)
    for ex, row in zip(examples, raw):
        assert row["completion"].endswith("<|endoftext|>")
        assert ex["prompt"] == row["prompt"]
        assert ex["completion"] == row["completion"][: -len("<|endoftext|>")].strip()
        assert "<|endoftext|>" not in ex["completion"]
    inputs, targets, _ = formats.render_zero_shot(
        examples[0], spec.templates.templates[0], options=None, with_options=False
    )
    assert (inputs, targets) == (raw[0]["prompt"].strip(), examples[0]["completion"])
