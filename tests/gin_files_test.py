"""Every gin file in gin/ parses with its required macros supplied; a missing macro is named."""

import pathlib
import re

import pytest

import gin
from flan_jax.cli import gin_flags

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"
MACROS = {
    "MODEL_DIR": "'/tmp/gin_test'",
    "MIXTURE_OR_TASK_NAME": "'flan_tiny'",
    "TASK_FEATURE_LENGTHS": "{'inputs': 32, 'targets': 8}",
    "TRAIN_STEPS": "10",
    "INITIAL_CHECKPOINT_PATH": "None",
    "CHECKPOINT_PATH": "'/tmp/gin_test'",
}
TRAIN_MACROS = list(MACROS)[:5]
MODEL_GIN = "test/tiny_t5.gin"
ALL = sorted(str(p.relative_to(GIN_DIR)) for p in GIN_DIR.rglob("*.gin"))


def _parse(files, bindings=()):
    gin.clear_config()
    gin.parse_config_files_and_bindings(
        [str(GIN_DIR / f) for f in files], list(bindings), finalize_config=False
    )


@pytest.fixture(autouse=True)
def _search_path():
    gin.add_config_file_search_path(str(GIN_DIR))
    yield
    gin.clear_config()


@pytest.mark.parametrize("name", ALL)
def test_gin_file_parses_with_required_macros(name):
    files = (
        [name] if name.startswith(("models/", "test/tiny", "experiments/")) else [MODEL_GIN, name]
    )
    required = gin_flags.required_macros(files, [str(GIN_DIR)])
    _parse(files, [f"{m} = {MACROS[m]}" for m in required])
    assert gin_flags.missing_macros(required) == []
    if name.startswith(("runs/finetune", "runs/pretrain", "runs/eval", "experiments/")):
        assert gin.query_parameter("%MODEL_DIR")


def test_run_files_declare_t5x_macros():
    assert gin_flags.required_macros(["runs/finetune.gin"], [str(GIN_DIR)]) == TRAIN_MACROS
    # pretrain.gin includes finetune.gin: the same declarations
    assert gin_flags.required_macros(["runs/pretrain.gin"], [str(GIN_DIR)]) == TRAIN_MACROS
    _parse([MODEL_GIN, "runs/pretrain.gin"], [f"{m} = {MACROS[m]}" for m in TRAIN_MACROS])
    assert gin.query_parameter("%INITIAL_CHECKPOINT_PATH") is None  # pretrain overrides it


def test_missing_macro_fails_naming_it():
    argv = [f"--gin_file={MODEL_GIN}", "--gin_file=runs/finetune.gin", "--gin.MODEL_DIR='/tmp/x'"]
    missing = (
        "['MIXTURE_OR_TASK_NAME', 'TASK_FEATURE_LENGTHS', 'TRAIN_STEPS', 'INITIAL_CHECKPOINT_PATH']"
    )
    with pytest.raises(ValueError, match=re.escape(missing)):
        gin_flags.parse(argv, "flan-jax train")


def test_t5x_style_macro_flags_and_search_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/finetune.gin is found in the shipped gin dir from anywhere
    macros = [f"--gin.{k}={MACROS[k]}" for k in TRAIN_MACROS]
    argv = [f"--gin_file={MODEL_GIN}", "--gin_file=runs/finetune.gin", *macros]
    args = gin_flags.parse([*argv, "--gin.BATCH_SIZE=16"], "flan-jax train")
    assert args.gin_file == [MODEL_GIN, "runs/finetune.gin"]
    assert gin.query_parameter("%BATCH_SIZE") == 16
    assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == {"inputs": 32, "targets": 8}


def test_include_works_beside_a_runs_folder(tmp_path, monkeypatch):
    """`make demo` writes runs/flan_tiny_t5 in the working directory; a second run must still
    find `include 'runs/finetune.gin'` in the shipped gin dir (gin's sys.path reader used to
    crash on the folder, which imports as a namespace package)."""
    (tmp_path / "runs" / "flan_tiny_t5").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m` puts the working directory
    args = gin_flags.parse(["--gin_file=experiments/flan_tiny_t5.gin"], "flan_jax.cli.demo")
    assert args.gin_file == ["experiments/flan_tiny_t5.gin"]
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "flan_tiny_demo_minus_nli"
