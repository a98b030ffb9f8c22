"""A tiny trained run: `flan-jax eval --suite flan2022` end to end, then `flan-jax report`."""

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import seqio
import train_test
from conftest import DATA_DIR, needs_data

from flan_jax import cli
from flan_jax.cli import evaluate as evaluate_cli
from flan_jax.evaluation import benchmarks_mmlu_cot, report, suites

VOID = {"meta", "img", "br", "hr", "link", "input"}


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """2 training steps (teacher-forced eval at 1 and 2), then the flan2022 suite at step 2
    (one task per benchmark, 2 examples each); returns (run folder, what the suite printed)."""
    if not (DATA_DIR and os.path.isdir(DATA_DIR)):
        pytest.skip("needs FLAN_JAX_DATA_DIR")
    d = str(tmp_path_factory.mktemp("suite") / "run")
    rc, out = train_test.run_trainer(d, "--gin.EVAL_PERIOD=1", steps=2)
    assert rc == 0, out
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.delenv(benchmarks_mmlu_cot.EXEMPLARS_ENV, raising=False)
        assert evaluate_cli.main([
            "--gin_file=test/tiny_t5.gin", "--gin_file=runs/eval.gin",
            "--compilation_cache_dir=none",
            f"--gin.CHECKPOINT_PATH='{d}'", f"--gin.MODEL_DIR='{d}'",
            "--gin.MIXTURE_OR_TASK_MODULE=None", "--gin.BATCH_SIZE=8", "--gin.MAX_DECODE_LEN=4",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
            "--suite=flan2022", "--max_examples_per_task=2", "--max_tasks_per_benchmark=1",
            "--vocabulary=byte",  # the tiny model's, instead of T5's
        ]) == 0  # fmt: skip
    return d, printed.getvalue()


@needs_data
def test_suite_flan2022_end_to_end(run_dir):
    run_dir, printed = run_dir
    record = read_jsonl(f"{run_dir}/metrics.jsonl")[-1]
    assert record["kind"] == "suite" and record["step"] == 2
    tasks = {  # the first task of each benchmark
        "MMLU-Direct": "mmlu_abstract_algebra_5shot",
        "MMLU-CoT (0-shot)": "mmlu_abstract_algebra_0shot_cot",
        "BBH-Direct": "bbh_boolean_expressions_direct",
        "BBH-CoT": "bbh_boolean_expressions_cot",
        "MGSM": "mgsm_en_8shot_cot",
    }
    # chance from the files: 4 options; True/False labels; a free-form number
    with open(f"{DATA_DIR}/bbh/bbh/boolean_expressions.json") as f:
        assert {e["target"] for e in json.load(f)["examples"]} == {"True", "False"}
    chance = {"MMLU-Direct": 25.0, "MMLU-CoT (0-shot)": 25.0, "BBH-Direct": 50.0, "BBH-CoT": 50.0}
    normalized = []
    for bench, name in tasks.items():
        rows = read_jsonl(f"{run_dir}/eval/2/{name}.jsonl")
        post = seqio.get_mixture_or_task(name).postprocess_fn
        assert len(rows) == 2
        score = 100.0 * sum(r["answer"] == post(r["target"], is_target=True) for r in rows) / 2
        assert record[f"{bench}/tasks"] == 1.0
        assert record[f"{bench}/score"] == pytest.approx(score), bench
        assert record[f"{bench}/chance"] == chance.get(bench, 0.0), bench
        assert record[f"{bench}/normalized"] == pytest.approx(score - chance.get(bench, 0.0))
        normalized.append(score - chance.get(bench, 0.0))
    assert record["normalized_average"] == pytest.approx(sum(normalized) / 5)
    assert "normalized average" in printed and f"{record['normalized_average']:.2f}" in printed
    # no TyDiQA data here: skipped with the reason, not a crash and not a 0 in the average
    assert "TyDiQA skipped: TFDS tydi_qa/goldp:3.0.0 is not prepared" in printed
    assert not any(k.startswith("TyDiQA/") for k in record)


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
    pytest.importorskip("matplotlib", reason="flan-jax report draws with matplotlib")
    run_dir, _ = run_dir
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
    assert [s for s, _ in series["eval-accuracy"]["trainer_test_reverse"]] == [1, 2]
    # every number of the tables equals metrics.jsonl
    cells = [a["data-value"] for t, a in parser.elements if t == "td" and "data-value" in a]
    suite = [r for r in records if r["kind"] == "suite"][-1]
    assert {k for k in suite if k.endswith("/score")} == {
        f"{b}/score" for b in ("MMLU-Direct", "MMLU-CoT (0-shot)", "BBH-Direct", "BBH-CoT", "MGSM")
    }
    want = [
        suite[f"{b}/{c}"]
        for b in [k[: -len("/score")] for k in suite if k.endswith("/score")]  # as in the file
        for c in ("tasks", "score", "chance", "normalized")
    ] + [suite["normalized_average"]]
    inference = [r for r in records if r["kind"] == "inference"][-1]
    want += [v for k, v in inference.items() if k.startswith("eval/")]
    assert [float(c) for c in cells] == want
    # links to the inference files, and their first examples escaped in the page
    links = [a["href"] for t, a in parser.elements if t == "a"]
    assert len(links) == 5
    for href in links:
        assert os.path.isfile(os.path.join(out.parent, href)), href
    first = read_jsonl(f"{run_dir}/eval/2/mgsm_en_8shot_cot.jsonl")[0]
    assert f"<pre>{report.html.escape(first['input'])}</pre>" in page
    assert f"<pre>{report.html.escape(first['prediction'])}</pre>" in page
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser:  # where installed: the page renders in a headless browser too
        done = subprocess.run(
            [browser, "--headless", "--disable-gpu", "--dump-dom", out.as_uri()],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0 and 'id="suite"' in done.stdout, done.stderr


def test_suite_scores_subtract_each_benchmarks_chance():
    suite = [
        suites.Benchmark("MMLU", ("m1", "m2"), lambda _: 25.0),
        suites.Benchmark("BBH", ("b1", "b2"), lambda name: {"b1": 50.0, "b2": 0.0}[name]),
        suites.Benchmark("MGSM", ("g1",), lambda _: 0.0),
        suites.Benchmark("TyDiQA", ("t1",), lambda _: 0.0),  # not evaluated: left out
    ]
    per_task = {
        n: {"accuracy": a} for n, a in [("m1", 30), ("m2", 50), ("b1", 60), ("b2", 10), ("g1", 5)]
    }
    scores = suites.suite_scores(suite, per_task)
    assert scores == {
        "MMLU": {"score": 40.0, "chance": 25.0, "normalized": 15.0, "tasks": 2.0},
        "BBH": {"score": 35.0, "chance": 25.0, "normalized": 10.0, "tasks": 2.0},
        "MGSM": {"score": 5.0, "chance": 0.0, "normalized": 5.0, "tasks": 1.0},
        "normalized_average": {"score": 10.0},
    }
    table = suites.format_suite(scores)
    assert table.splitlines()[-1].split() == ["normalized", "average", "10.00"]


@needs_data
def test_suite_opt_iml_end_to_end(run_dir, tmp_path):
    """--suite opt_iml on a copy of the tiny run: every level's score is the mean of its
    tasks' OPT-IML scores recomputed from the written inferences, and the summary line is
    the mean of the three levels."""
    d = str(tmp_path / "run")
    shutil.copytree(run_dir[0], d)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert evaluate_cli.main([
            "--gin_file=test/tiny_t5.gin", "--gin_file=runs/eval.gin",
            "--compilation_cache_dir=none",
            f"--gin.CHECKPOINT_PATH='{d}'", f"--gin.MODEL_DIR='{d}'",
            "--gin.BATCH_SIZE=8", "--gin.MAX_DECODE_LEN=4",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
            "--suite=opt_iml", "--suite_mixture=opt_iml_tiny",
            "--max_examples_per_task=2", "--max_tasks_per_benchmark=1",
        ]) == 0  # fmt: skip
    record = read_jsonl(f"{d}/metrics.jsonl")[-1]
    assert record["kind"] == "suite" and record["suite"] == "opt_iml"
    levels = {}
    for bench in suites.opt_iml_suite("opt_iml_tiny"):
        task = bench.tasks[0]
        rows = read_jsonl(f"{d}/eval/2/{task}.jsonl")
        assert len(rows) == 2
        want = suites.opt_iml_score(rows)
        assert record[f"{bench.name}/score"] == pytest.approx(want), bench.name
        levels.setdefault(bench.name.split()[0], []).append(want)
    mean = sum(sum(v) / len(v) for v in levels.values()) / len(levels)
    assert len(levels) == 3 and record["normalized_average"] == pytest.approx(mean)
    assert printed.getvalue().splitlines()[-1].split()[-1] == f"{mean:.2f}"
    assert "mean of the levels" in printed.getvalue()


def test_opt_iml_suite_levels_shots_and_scores():
    import flan_jax.registry  # noqa: F401  (registers opt_iml_tiny)

    suite = suites.opt_iml_suite("opt_iml_tiny_train")  # a split names its spec
    assert [b.name for b in suite] == [
        "fully_held_out 0-shot", "fully_held_out few-shot",
        "partially_held_out 0-shot", "partially_held_out few-shot",
        "fully_supervised 0-shot", "fully_supervised few-shot",
    ]  # fmt: skip
    by_name = {b.name: b.tasks for b in suite}
    assert by_name["fully_held_out 0-shot"] == (
        "tiny_height_nli_zs_opt",
        "tiny_location_nli_zs_opt",
    )
    assert by_name["partially_held_out few-shot"] == ("tiny_restaurant_reviews_fs_opt",)
    assert "tiny_arithmetic_zs_noopt" in by_name["fully_supervised 0-shot"]  # no options
    assert all(b.metric == suites.OPT_IML_METRIC and b.split is None for b in suite)
    ranked = [
        {"mode": "rank_classification", "prediction": p, "target": t}
        for p, t in [("yes", "yes"), ("no", "yes"), ("no", "no"), ("yes", "yes")]
    ]
    assert suites.opt_iml_score(ranked) == 75.0
    decoded = [{"mode": "generation", "prediction": "the cat sat", "target": "the cat sat down"}]
    # Rouge-L F: LCS 3 of 3 predicted and 4 target words -> 2 * 1 * 0.75 / 1.75
    assert suites.opt_iml_score(decoded) == pytest.approx(100 * 1.5 / 1.75)


@needs_data
def test_bbh_chance_from_the_files():
    assert suites.bbh_chance("boolean_expressions") == 50.0  # True / False
    assert suites.bbh_chance("logical_deduction_five_objects") == pytest.approx(20.0)  # (A)-(E)
    assert suites.bbh_chance("word_sorting") == 0.0  # free-form


def test_bad_suite_flags_and_report_dir_exit_2(tmp_path, capsys):
    argv = ["--gin_file=test/tiny_t5.gin", "--gin_file=runs/eval.gin", "--gin.MODEL_DIR='x'"]
    argv += ["--gin.CHECKPOINT_PATH='x'", "--gin.TASK_FEATURE_LENGTHS={}"]
    assert evaluate_cli.main([*argv, "--suite=flan2021"]) == 2
    assert "unknown suite 'flan2021'; known: ['flan2022', 'opt_iml']" in capsys.readouterr().err
    assert evaluate_cli.main([*argv, "--suite=opt_iml", "--suite_mixture=flan_tiny"]) == 2
    assert "--suite opt_iml needs a mixture registered with opt_iml_splits; 'flan_tiny'" in (
        capsys.readouterr().err
    )
    assert evaluate_cli.main([*argv, "--suite=flan2022", "--max_examples_per_task=0"]) == 2
    assert "--max_examples_per_task is 0; use a number >= 1" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "metrics.jsonl' not found; give a run folder" in capsys.readouterr().err
    pytest.importorskip("matplotlib", reason="flan-jax report draws with matplotlib")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2,\n')
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "metrics.jsonl:2: invalid JSON" in capsys.readouterr().err


def test_record_kind_is_inferred_when_missing():
    assert report.record_kind({"kind": "eval", "task": "t"}) == "eval"
    assert report.record_kind({"step": 1, "loss": 2.0}) == "train"
    assert report.record_kind({"step": 1, "task": "t", "accuracy": 0.5}) == "eval"
    assert report.record_kind({"step": 1, "eval/t/accuracy": 50.0}) == "inference"
    assert report.record_kind({"step": 1, "suite": "flan2022"}) == "suite"
