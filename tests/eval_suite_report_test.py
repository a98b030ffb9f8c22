"""A tiny trained run: `flan-jax eval --suite flan2022` end to end, then `flan-jax report`."""

import base64
import json
import os
import shutil
from html.parser import HTMLParser

import pytest
import seqio
from conftest import DATA_DIR, needs_data

import train_test
from flan_jax import benchmarks, benchmarks_mgsm, benchmarks_mmlu_cot, cli, evaluate, report

VOID = {"meta", "img", "br", "hr", "link", "input"}


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """4 training steps (teacher-forced eval at 2 and 4), then the suite at step 4."""
    if not (DATA_DIR and os.path.isdir(DATA_DIR)):
        pytest.skip("needs FLAN_JAX_DATA_DIR")
    d = str(tmp_path_factory.mktemp("suite") / "run")
    rc, out = train_test.run_trainer(d, "--gin.EVAL_PERIOD=2", steps=4)
    assert rc == 0, out
    vocab = seqio.ByteVocabulary()  # the tiny model's vocabulary, instead of T5's
    for module in (benchmarks, benchmarks_mgsm, benchmarks_mmlu_cot):
        module.register(vocab)
    return d


@needs_data
def test_suite_flan2022_end_to_end(run_dir, capsys, monkeypatch):
    monkeypatch.delenv(benchmarks_mmlu_cot.EXEMPLARS_ENV, raising=False)
    assert evaluate.main([
        "--gin_file=test/tiny_t5.gin", "--gin_file=runs/eval.gin", "--compilation_cache_dir=none",
        f"--gin.CHECKPOINT_PATH='{run_dir}'", f"--gin.MODEL_DIR='{run_dir}'",
        "--gin.MIXTURE_OR_TASK_MODULE=None", "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
        "--gin.BATCH_SIZE=8", "--gin.MAX_DECODE_LEN=4",
        "--suite=flan2022", "--max_examples_per_task=2", "--max_tasks_per_benchmark=2",
    ]) == 0  # fmt: skip
    record = read_jsonl(f"{run_dir}/metrics.jsonl")[-1]
    assert record["kind"] == "suite" and record["step"] == 4
    tasks = {
        "MMLU-Direct": ["mmlu_abstract_algebra_5shot", "mmlu_anatomy_5shot"],
        "MMLU-CoT (0-shot)": ["mmlu_abstract_algebra_0shot_cot", "mmlu_anatomy_0shot_cot"],
        "BBH-Direct": ["bbh_boolean_expressions_direct", "bbh_causal_judgement_direct"],
        "BBH-CoT": ["bbh_boolean_expressions_cot", "bbh_causal_judgement_cot"],
        "MGSM": ["mgsm_en_8shot_cot", "mgsm_bn_8shot_cot"],
    }
    # chance from the files: 4 options; True/False and Yes/No labels; free-form numbers
    labels = {
        t: len({e["target"] for e in json.load(open(f"{DATA_DIR}/bbh/bbh/{t}.json"))["examples"]})
        for t in ("boolean_expressions", "causal_judgement")
    }
    assert labels == {"boolean_expressions": 2, "causal_judgement": 2}
    chance = {"MMLU-Direct": 25.0, "MMLU-CoT (0-shot)": 25.0, "BBH-Direct": 50.0, "BBH-CoT": 50.0}
    normalized = []
    for bench, names in tasks.items():
        accuracies = []
        for name in names:
            rows = read_jsonl(f"{run_dir}/eval/4/{name}.jsonl")
            post = seqio.get_mixture_or_task(name).postprocess_fn
            assert len(rows) == 2
            right = [r["answer"] == post(r["target"], is_target=True) for r in rows]
            accuracies.append(100.0 * sum(right) / 2)
        score = sum(accuracies) / 2
        assert record[f"{bench}/score"] == pytest.approx(score), bench
        assert record[f"{bench}/chance"] == chance.get(bench, 0.0), bench
        assert record[f"{bench}/normalized"] == pytest.approx(score - chance.get(bench, 0.0))
        normalized.append(score - chance.get(bench, 0.0))
    assert record["normalized_average"] == pytest.approx(sum(normalized) / 5)
    printed = capsys.readouterr().out
    assert "normalized average" in printed and f"{record['normalized_average']:.2f}" in printed


class WellFormed(HTMLParser):
    """Collects tags, attributes and text; fails on a close tag that does not match."""

    def __init__(self):
        super().__init__()
        self.stack, self.elements, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


@needs_data
def test_report_renders_every_figure_and_table_from_metrics(run_dir, tmp_path):
    if not any(r.get("kind") == "suite" for r in read_jsonl(f"{run_dir}/metrics.jsonl")):
        pytest.skip("needs test_suite_flan2022_end_to_end's suite record")
    out = tmp_path / "page" / "report.html"
    out.parent.mkdir()
    assert cli.main(["report", run_dir, f"--output={out}", "--examples=2"]) == 0
    page = out.read_text(encoding="utf-8")
    parser = WellFormed()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    records = [{**r, "kind": report.record_kind(r)} for r in read_jsonl(f"{run_dir}/metrics.jsonl")]
    # every figure, each a real PNG of the records' values
    figures = {a["id"] for t, a in parser.elements if t == "figure"}
    assert figures == {
        "train-loss", "train-accuracy", "learning-rate", "tokens-per-s",
        "eval-accuracy", "eval-cross_ent_per_token", "inference-accuracy",
    }  # fmt: skip
    images = [a["src"] for t, a in parser.elements if t == "img"]
    assert len(images) == 7
    for src in images:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    series = {fig_id: s for fig_id, _, s, _ in report.figure_series(records)}
    train = [r for r in records if r["kind"] == "train"]
    assert series["train-loss"] == {"loss": [(r["step"], r["loss"]) for r in train]}
    assert [s for s, _ in series["eval-accuracy"]["trainer_test_reverse"]] == [2, 4]
    # every number of the tables equals metrics.jsonl
    cells = [a["data-value"] for t, a in parser.elements if t == "td" and "data-value" in a]
    suite = [r for r in records if r["kind"] == "suite"][-1]
    want = [
        suite[f"{b}/{c}"]
        for b in ("MMLU-Direct", "MMLU-CoT (0-shot)", "BBH-Direct", "BBH-CoT", "MGSM")
        for c in ("tasks", "score", "chance", "normalized")
    ] + [suite["normalized_average"]]
    inference = [r for r in records if r["kind"] == "inference"][-1]
    want += [v for k, v in inference.items() if k.startswith("eval/")]
    assert [float(c) for c in cells] == want
    # links to the inference files, and their first examples escaped in the page
    links = [a["href"] for t, a in parser.elements if t == "a"]
    assert len(links) == 10
    for href in links:
        assert os.path.isfile(os.path.join(out.parent, href)), href
    first = read_jsonl(f"{run_dir}/eval/4/mgsm_bn_8shot_cot.jsonl")[0]
    assert f"<pre>{report.html.escape(first['input'])}</pre>" in page
    assert f"<pre>{report.html.escape(first['prediction'])}</pre>" in page
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed: the page was checked with html.parser only")
