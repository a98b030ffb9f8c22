"""`flan-jax infer` (`python -m flan_jax.cli.infer`): gin flags (model, feature lengths and
vocabulary from the checkpoint's run), then flan_jax.evaluation.infer.run_inference."""

from __future__ import annotations

import argparse
import importlib
import sys

import gin
from flan_jax.cli import gin_flags
from flan_jax.evaluation import infer


def main(argv: list[str] | None = None) -> int:
    """`flan-jax infer --gin_file=runs/infer.gin --gin.CHECKPOINT_PATH=...
    [--gin.MIXTURE_OR_TASK_NAME=... | --input_file=F.jsonl] [--mode score] [--output_file=F]`.

    MODEL, TASK_FEATURE_LENGTHS and the vocabulary come from the run CHECKPOINT_PATH belongs
    to (its config.gin) unless the command line sets them.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="flan-jax infer", add_help=False)
    parser.add_argument("--mode", choices=infer.MODES, default=None)
    parser.add_argument("--input_file", default=None, help='JSONL of {"inputs": ...} lines')
    parser.add_argument("--output_file", default=None, help="JSONL out ('-': stdout)")
    ours, rest = parser.parse_known_args(argv)
    gin.clear_config()
    args = gin_flags.parse(rest, "flan-jax infer", run_dir_macros=("CHECKPOINT_PATH",))
    gin_flags.require_macros(
        ("MODEL", "TASK_FEATURE_LENGTHS"),
        "flan-jax infer",
        gin_flags.NO_RUN_CONFIG,
    )
    gin_flags.enable_compilation_cache(args)  # before anything compiles
    gin_flags.initialize_distributed(args)
    overrides = {k: v for k, v in vars(ours).items() if v is not None}
    run_task = args.run_macros.get("MIXTURE_OR_TASK_NAME")
    if run_task:  # its vocabulary tokenizes --input_file unless VOCABULARY is set
        module = args.run_macros.get("MIXTURE_OR_TASK_MODULE") or "flan_jax.registry"
        importlib.import_module(module)
        overrides["vocabulary_task"] = run_task
    run = gin.get_configurable(infer.run_inference)
    try:
        count = run(**overrides)
    except ValueError as e:
        print(f"flan-jax infer: {e}", file=sys.stderr)
        return 2
    print(f"flan-jax infer: wrote {count} lines", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
