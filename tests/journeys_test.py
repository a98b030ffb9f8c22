"""Journeys: README.md's and docs/*.md's commands, run as a user types them.

Each command runs as a subprocess (`python -m flan_jax.cli`, what the `flan-jax` script runs)
from the repository root with relative paths. The README's commands are taken from the README
itself, with `SUBSTITUTIONS` (a relative MODEL_DIR under tmp/, a few steps, small lengths and
evals) so that the suite stays fast; `test_every_doc_command_is_run_or_skipped_with_a_reason`
makes sure no documented command is left out. The train -> eval -> infer -> generate ->
convert and demo journeys are in tests/journeys_run_test.py.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# xdist: every test of this file on one worker, so the trained MODEL_DIR is made once
pytestmark = pytest.mark.xdist_group("journeys")

TMP = f"tmp/journeys-{os.getpid()}"  # relative, under the repository's gitignored tmp/
RUN = f"{TMP}/flan_tiny_t5"
STEPS = 2
LENGTHS = "{'inputs': 64, 'targets': 16}"
SMALL_TRAIN = f'--gin.TRAIN_STEPS={STEPS} --gin.BATCH_SIZE=4 --gin.TASK_FEATURE_LENGTHS="{LENGTHS}"'
SMALL_EVAL = "--gin.MAX_EXAMPLES=2 --gin.BATCH_SIZE=2 --gin.MAX_DECODE_LEN=8"
# README text -> what the test runs instead (a smaller, relative, throw-away version)
SUBSTITUTIONS = {
    "runs/flan_tiny_t5": RUN,
    # the README's train writes to the gin file's MODEL_DIR, runs/flan_tiny_t5: here, RUN
    "--gin.TRAIN_STEPS=200": f"--gin.MODEL_DIR=\"'{RUN}'\" {SMALL_TRAIN}",
    "runs/ft/checkpoints/1000": f"{RUN}/checkpoints/{STEPS}",
    "exported_hf": f"{TMP}/exported_hf",
    # eval: flan_tiny's ~70 task variants take minutes on 2 cores; one variant, same code path
    "MIXTURE_OR_TASK_NAME=\"'flan_tiny'\"": "MIXTURE_OR_TASK_NAME=\"'tiny_topic_zs_opt'\"",
}


def _env() -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    env["FLAN_JAX_COMPILATION_CACHE"] = str(REPO / TMP / "jax_cache")  # shared by the commands
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user has
    return env


def flan_jax(command: str, *, check: bool = True) -> subprocess.CompletedProcess:
    """Runs a `flan-jax ...` command line (shell quoting) from the repository root."""
    argv = shlex.split(command)
    assert argv[0] == "flan-jax", command
    done = subprocess.run(
        [sys.executable, "-m", "flan_jax.cli", *argv[1:]],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check:
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


# ----------------------------------------------------------------------------- doc commands

BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def doc_commands() -> list[tuple[str, str]]:
    """(doc, command) for every command line of the sh / bash blocks of README.md and
    docs/*.md (and `flan-jax` lines of unlabelled blocks): continuation lines joined,
    comments and blank lines dropped."""
    out = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for lang, body in BLOCK.findall(path.read_text()):
            if lang not in ("sh", "bash", ""):
                continue
            text = body.replace("\\\n", " ")
            for line in text.splitlines():
                line = re.sub(r"\s+#\s.*$", "", line).strip()
                # an unlabelled block also shows file layouts and flag fragments: its commands
                # are the lines that start with flan-jax
                command = lang or line.startswith("flan-jax ")
                if line and not line.startswith("#") and command:
                    out.append((path.relative_to(REPO).as_posix(), " ".join(line.split())))
    return out


def readme_command(prefix: str) -> str:
    """The README command starting with `prefix`, with SUBSTITUTIONS applied."""
    (command,) = [c for doc, c in doc_commands() if doc == "README.md" and c.startswith(prefix)]
    for old, new in SUBSTITUTIONS.items():
        command = command.replace(old, new)
    return command


# How each documented command is run: by a journey test here, in-process through the CLI
# (fast commands), or not at all, with the reason.
JOURNEY = {
    "flan-jax train --gin_file=experiments/flan_tiny_t5.gin": "trained_run",
    "flan-jax eval --gin_file=runs/eval.gin": "test_eval_reads_the_run_and_logs_what_it_prints",
    "flan-jax infer --gin_file=runs/infer.gin": "test_infer_uses_the_runs_vocabulary_and_decodes",
    "flan-jax generate --model_dir runs/flan_tiny_t5": "test_generate_is_the_greedy_decode",
    "flan-jax convert flan-to-hf runs/ft/": "test_flan_to_hf_export_matches_the_flan_model",
    "make demo": "test_demo_trains_then_restores_and_prints_its_json",
    "flan-jax train --gin_file=experiments/flan_tiny_opt.gin": "test_opt_iml_recipe_trains",
}
IN_PROCESS = {  # command prefix -> (flags added to keep it fast, a string its output holds)
    "flan-jax tasks list --cluster nli": ("", "tiny_height_nli"),
    "flan-jax tasks show tiny_height_nli --format zs_opt -n 2": ("", "tiny_height_nli_zs_opt"),
    "flan-jax tasks show glue_rte --format fs_opt -n 1": ("", "glue_rte_fs_opt"),
    "flan-jax mixture stats flan_tiny --feature_lengths": (" --sample 8", "== flan_tiny"),
    "flan-jax mixture stats opt_iml_tiny_train": (" --sample 8", "== opt_iml_tiny_train"),
    "DRY_RUN=1 flan-jax cache flan2022": ("", "--runner=DataflowRunner --project=my-project"),
}
WALKTHROUGH = "tests/data_cli_test.py::test_multiple_choice_walkthrough runs it"
SUITE_DOC = "tests/eval_suite_report_test.py runs the same commands on a tiny trained run"
CACHE_TEST = (
    "tests/cache_test.py builds caches on the DirectRunner (a flan_tiny spec, a JSONL task)"
)
ERROR_LINE = "an error message shown in the docs, not a command (tests/faults_test.py checks it)"
SKIPPED = {  # command prefix -> why no test runs it
    "flan-jax report runs/flan_tiny_t5": SUITE_DOC,
    "flan-jax tasks show quiz --specs my_quiz": WALKTHROUGH,
    "export FLAN_JAX_SPECS=my_quiz": WALKTHROUGH,
    "flan-jax train --gin_file=models/t5_1_1/tiny.gin --gin_file=runs/finetune.gin "
    "--gin.MODEL_DIR=\"'runs/quiz'\"": WALKTHROUGH,
    "flan-jax eval --gin_file=models/t5_1_1/tiny.gin --gin_file=runs/eval.gin "
    "--gin.CHECKPOINT_PATH=\"'runs/quiz'\"": WALKTHROUGH,
    "flan-jax train: cannot write": ERROR_LINE,
    "flan-jax train: 20480 of 39297": ERROR_LINE,
    "flan-jax train: MODEL_DIR runs/x is in use": ERROR_LINE,
    "export FLAN_JAX_DATA_DIR=../shared/data": "shell set-up (the Makefile and tests set it)",
    "flan-jax eval --gin_file=models/t5_1_1/tiny.gin --gin_file=runs/eval.gin "
    "--gin.CHECKPOINT_PATH=\"'$PWD/runs/eval_doc'\"": SUITE_DOC,
    "flan-jax report runs/eval_doc": SUITE_DOC,
    "flan-jax eval --gin_file=runs/eval.gin --gin.CHECKPOINT_PATH=\"'runs/flan_tiny_opt'\"": (
        "tests/eval_suite_report_test.py::test_suite_opt_iml_end_to_end runs the opt_iml suite"
    ),
    "make test": "is this test suite",
    ".venv/bin/flan-jax demo --gin.demo.DemoConfig.cluster_scaling": "trains one model per "
    "cluster count (minutes); tests/demo_test.py checks its mixtures, pooled rows, table and PNG",
    "flan-jax mixture stats flan2021": "tests/data_cli_test.py::test_mixture_stats_flan2021_"
    "without_the_data runs it",
    "flan-jax mixture stats flan2022 --decontaminate": "reads every FLAN 2022 source (minutes); "
    "tests/decontaminate_test.py checks flan2022 against the eval sets",
    ". .venv/bin/activate": "shell set-up (the tests call the venv's Python)",
    "flan-jax train --gin_file=models/t5_1_1/small.gin": "needs the TFDS data of flan2021 and a "
    "converted Flan-T5 checkpoint; the train journey runs the same entry point",
    "flan-jax convert hf-to-flan": "needs a downloaded Hugging Face checkpoint "
    "(tests/convert_hf_test.py converts ones it builds)",
    "flan-jax convert t5x-to-flan": "needs a T5X checkpoint (tests/convert_t5x_test.py converts "
    "../shared/fixtures/t5x_tiny)",
    "flan-jax convert flan-to-hf ~/": "the README's flan-to-hf command runs in the journey",
    "flan-jax tasks show capitals --specs examples/my_task": "tests/data_cli_test.py::"
    "test_adding_a_task_walkthrough runs docs/adding_a_task.md",
    "flan-jax mixture stats my_mixture --specs examples/my_task": "tests/data_cli_test.py::"
    "test_adding_a_task_walkthrough runs docs/adding_a_task.md",
    "pip install -e '.[beam]'": "installs packages (make test installs the beam extra)",
    "flan-jax cache tiny_arithmetic --output_dir caches": CACHE_TEST,
    "flan-jax cache flan_tiny --output_dir caches": CACHE_TEST,
    "flan-jax cache flan2022 --output_dir gs://": "needs a Google Cloud project and bucket; its "
    "DRY_RUN=1 line is run here",
    "flan-jax train --gin_file=models/t5_1_1/tiny.gin --gin_file=runs/finetune.gin "
    "--gin.USE_CACHED=True": "tests/cache_test.py::test_training_from_cache_sees_the_same_batches "
    "trains from a cache it builds",
}
TPU_DOC = "docs/tpu.md"  # every command needs gcloud and Cloud TPUs (tpu_scripts_test.py dry-runs)


def _how(doc: str, command: str) -> str | None:
    if doc == TPU_DOC:
        return "skip"
    for table, kind in ((JOURNEY, "journey"), (IN_PROCESS, "cli"), (SKIPPED, "skip")):
        if any(command.startswith(p) for p in table):
            return kind
    return None


def test_every_doc_command_is_run_or_skipped_with_a_reason(capsys, monkeypatch):
    """A new or changed command in the docs must be added to a table above, so it is run."""
    from flan_jax import cli

    commands = doc_commands()
    assert len(commands) > 20
    unknown = [(d, c) for d, c in commands if _how(d, c) is None]
    assert not unknown, f"commands no test runs or skips: {unknown}"
    for prefix in JOURNEY:  # each journey command is still in the docs
        assert any(c.startswith(prefix) for _, c in commands), prefix
    ran = 0
    for doc, command in commands:
        if _how(doc, command) != "cli" or ("glue_rte" in command and not _has_data()):
            continue
        extra, expected = next(v for k, v in IN_PROCESS.items() if command.startswith(k))
        argv = shlex.split(command + extra)
        while argv[0] != "flan-jax":  # leading VAR=value assignments (DRY_RUN=1)
            monkeypatch.setenv(*argv.pop(0).split("=", 1))
        assert cli.main(argv[1:]) == 0, command
        assert expected in capsys.readouterr().out, command
        ran += 1
    assert ran >= 3


def _has_data() -> bool:
    return bool(os.environ.get("FLAN_JAX_DATA_DIR")) and os.path.isdir(
        os.environ["FLAN_JAX_DATA_DIR"]
    )
