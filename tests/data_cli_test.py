"""`flan-jax tasks ...` / `flan-jax mixture ...` through flan_jax.cli.main, and the
docs/adding_a_task.md walkthrough followed literally."""

import json
import pathlib
import re
import shlex

import pytest

from flan_jax import cli

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = str(REPO / "examples" / "my_task")
MC_SECTION = "## Multiple-choice data from a file"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_command_lists_close_ones(capsys):
    code, _, err = run(capsys, "mixtures", "stats", "x")
    assert code == 2 and "unknown command 'mixtures'; did you mean ['mixture']" in err


def test_tasks_list_by_cluster(capsys):
    code, out, _ = run(capsys, "tasks", "list", "--cluster", "geography", "--specs", EXAMPLE)
    assert code == 0
    assert out.splitlines() == ["capitals\tgeography\tzs_noopt,fs_noopt\tjsonl"]
    code, _, err = run(capsys, "tasks", "list", "--cluster", "geograpy", "--specs", EXAMPLE)
    assert code == 2 and "unknown cluster 'geograpy'; closest: ['geography']" in err


def test_tasks_show_prints_rendered_examples_and_token_counts(capsys):
    code, out, _ = run(
        capsys,
        "tasks",
        "show",
        "capitals",
        "--specs",
        EXAMPLE,
        "--format",
        "zs_noopt",
        "-n",
        "2",
        "--split",
        "train",
    )
    assert code == 0
    question = "What is the capital of France?"
    assert out.splitlines() == [
        "== capitals_zs_noopt (cluster geography, split train)",
        "-- example 0: template 0 (zs_noopt)",
        f"inputs ({len(question) + 1} tokens):",  # byte vocabulary: one token a byte, + EOS
        question,
        "targets (6 tokens):",
        "Paris",
        "-- example 1: template 1 (zs_noopt)",
        "inputs (32 tokens):",
        "Name the capital city of Italy.",
        "targets (5 tokens):",
        "Rome",
    ]
    code, _, err = run(capsys, "tasks", "show", "capitalz", "--specs", EXAMPLE)
    assert code == 2 and "unknown task 'capitalz'; closest: ['capitals'" in err


def parse_table(out: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    header = lines[1].split()
    assert header[:4] == ["task", "examples", "rate", "share%"]
    return {row.split()[0]: row.split()[1:] for row in lines[2:] if not row.startswith("(")}


def test_mixture_stats_rates_shares_and_truncation(capsys):
    code, out, _ = run(
        capsys,
        "mixture",
        "stats",
        "my_mixture",
        "--specs",
        EXAMPLE,
        "--feature_lengths",
        "inputs=40,targets=8",
        "--sample",
        "12",
    )
    assert code == 0
    rows = parse_table(out)
    # capitals: 12 train examples (< cap 1000); tiny_arithmetic: 3000 capped to 1000;
    # tiny_topic: weight 500 for each of its variants in the mixture's formats.
    rates = {
        "capitals_zs_noopt": 12,
        "capitals_fs_noopt": 12,
        "tiny_arithmetic_zs_noopt": 1000,
        "tiny_arithmetic_fs_noopt": 1000,
        "tiny_topic_zs_opt": 500,
        "tiny_topic_zs_noopt": 500,
        "tiny_topic_fs_noopt": 500,
    }
    assert rows.pop("total") == [f"{sum(rates.values()):.1f}", "100.00"]
    assert sorted(rows) == sorted(rates)
    total = sum(rates.values())
    for task, rate in rates.items():
        assert float(rows[task][1]) == rate
        assert rows[task][2] == f"{100 * rate / total:.2f}"
    assert rows["capitals_zs_noopt"][0] == "12"
    # Untruncated capitals inputs: the 12 train questions, byte tokens + EOS; 40-token limit.
    from flan_jax.data import tasks

    spec = tasks.get_task_spec("capitals")
    lengths = []
    for i, ex in enumerate(tasks.get_examples(spec, "train")):
        template = spec.templates.templates[i % len(spec.templates)]
        text = template.inputs.format(options_="", **ex).strip()
        lengths.append(len(text.encode()) + 1)
    mean_inputs, _, _, _, trunc_inputs, _ = rows["capitals_zs_noopt"][3:]
    assert float(mean_inputs) == pytest.approx(sum(lengths) / 12, abs=0.05)
    assert trunc_inputs == f"{100 * sum(n > 40 for n in lengths) / 12:.1f}"


def test_mixture_stats_flan2021_without_the_data(capsys, monkeypatch, tmp_path):
    """Rates and shares come from the recorded split sizes; token columns wait for the data."""
    import tensorflow_datasets as tfds

    from flan_jax import registry  # noqa: F401 (registers flan2021)
    from flan_jax.data import tasks

    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path))  # nothing prepared
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    code, out, _ = run(capsys, "mixture", "stats", "flan2021")
    assert code == 0
    rows = parse_table(out)
    total = rows.pop("total")
    assert len(rows) == 67 and out.rstrip().endswith("check those sizes.)")
    want = {}
    for variant in rows:
        spec = tasks.get_task_spec(variant)
        want[variant] = min(spec.num_examples["train"], 3000)
        assert rows[variant][0] == str(spec.num_examples["train"])
        assert rows[variant][3:] == ["-"] * 6  # no token lengths without examples
    for variant, rate in want.items():
        assert float(rows[variant][1]) == rate
        assert rows[variant][2] == f"{100 * rate / sum(want.values()):.2f}"
    assert total == [f"{sum(want.values()):.1f}", "100.00"]


def test_adding_a_task_walkthrough(capsys, monkeypatch):
    """Runs the shell and Python blocks of docs/adding_a_task.md as written."""
    monkeypatch.chdir(REPO)
    # sections 1-4 (section 5's OPT-IML command runs in tests/journeys_test.py)
    doc = (REPO / "docs" / "adding_a_task.md").read_text().split("## 5. OPT-IML")[0]
    shell = re.findall(r"```sh\n(.*?)```", doc, re.S)
    commands = [shlex.split(line) for block in shell for line in block.splitlines() if line]
    assert [c[:3] for c in commands] == [
        ["flan-jax", "tasks", "show"],
        ["flan-jax", "mixture", "stats"],
    ]
    code, out, _ = run(capsys, *commands[0][1:])
    assert code == 0 and "What is the capital of France?\ntargets (6 tokens):\nParis" in out
    code, out, _ = run(capsys, *commands[1][1:], "--sample", "8")
    assert code == 0 and out.startswith("== my_mixture: 7 tasks") and "capitals_fs_noopt" in out
    (python,) = re.findall(r"```python\n(.*?)```", doc, re.S)
    scope: dict = {}
    exec(python, scope)
    batch = next(scope["ds"].as_numpy_iterator())
    assert batch["encoder_input_tokens"].shape == (512,)
    assert batch["decoder_segment_ids"].max() >= 1


def _doc_commands(text: str) -> list[list[str]]:
    """The lines of a doc's ```sh blocks, backslash continuations joined, split like a shell."""
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip()]


def test_multiple_choice_walkthrough(capsys, monkeypatch, tmp_path):
    """docs/adding_a_task.md "Multiple-choice data from a file": its files, written as shown,
    and its commands run as written (train and eval at 2 steps, MODEL_DIR in tmp_path)."""
    import gin
    from flan_jax.data import tasks

    section = (REPO / "docs" / "adding_a_task.md").read_text().split(MC_SECTION)[1]
    files = re.findall(r"`(my_quiz/[\w.]+)`[^`]*?:\n\n```\w+\n(.*?)```", section, re.S)
    assert [name for name, _ in files] == [
        "my_quiz/quiz.jsonl",
        "my_quiz/quiz.yaml",
        "my_quiz/quiz_prep.py",
    ]
    for name, text in files:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    commands = _doc_commands(section)
    assert [c[:2] for c in commands] == [
        ["flan-jax", "tasks"],
        ["export", "FLAN_JAX_SPECS=my_quiz"],
        ["flan-jax", "train"],
        ["flan-jax", "eval"],
    ]
    try:
        code, out, err = run(capsys, *commands[0][1:])
        assert code == 0, err
        spec = tasks.get_task_spec("quiz")
        train, validation = (
            tasks.get_examples(spec, "train"),
            tasks.get_examples(spec, "validation"),
        )
        questions = [ex["question"] for ex in train + validation]
        assert (len(train), len(validation)) == (8, 2) and len(set(questions)) == 10
        assert "Which gas do plants take in?" in questions  # the preprocessor beside the spec
        gold = {ex["question"]: ex["answer"] for ex in train + validation}
        assert gold["Which planet is closest to the sun?"] == "Mercury"  # choices[gold]
        first = validation[0]
        assert f"{first['question']}\n\nOPTIONS:\n- " + "\n- ".join(first["choices"]) in out
        monkeypatch.setenv(*commands[1][1].split("=", 1))
        model_dir = f"--gin.MODEL_DIR='{tmp_path / 'runs' / 'quiz'}'"
        gin.clear_config()
        code, _, err = run(capsys, *commands[2][1:], "--gin.TRAIN_STEPS=2", model_dir)
        assert code == 0, err
        gin.clear_config()
        code, out, err = run(
            capsys,
            *commands[3][1:],
            model_dir,
            f"--gin.CHECKPOINT_PATH='{tmp_path / 'runs' / 'quiz'}'",
        )
        assert code == 0, err
        lines = (tmp_path / "runs" / "quiz" / "eval" / "2" / "quiz_zs_opt.jsonl").read_text()
        records = [json.loads(line) for line in lines.splitlines()]
        assert sorted(r["target"] for r in records) == sorted(ex["answer"] for ex in validation)
    finally:
        tasks.unregister_task_spec("quiz")


def test_registry_registers_shipped_specs_idempotently(monkeypatch):
    import seqio

    from flan_jax import registry
    from flan_jax.data import mixtures, tasks

    shipped = {tasks.load_task_spec(p).name for p in tasks.task_spec_files()}
    assert shipped <= set(tasks.registered_specs())
    for path in mixtures.mixture_spec_files():
        assert mixtures.load_mixture_spec(path).name in seqio.MixtureRegistry.names()
    monkeypatch.setenv(registry.SPECS_ENV, EXAMPLE)
    first = registry.register_all()
    assert "capitals_fs_noopt" in first[0] and "my_mixture" in first[1]
    assert registry.register_all() == first


def test_console_filters_tensorflow_noise():
    import io

    sink = io.StringIO()
    stream = cli._FilteredStderr(sink)
    stream.write("I0000 12:00 cudart_stub.cc:31] Could not find cuda drivers on your machine\n")
    stream.write("error: unknown task 'x'\n")
    assert sink.getvalue() == "error: unknown task 'x'\n"
