"""`flan-jax eval` (`python -m flan_jax.cli.evaluate`): gin flags (model and feature lengths
from the evaluated run's config.gin), then flan_jax.evaluation.evaluate.evaluate_checkpoint."""

from __future__ import annotations

import importlib
import sys

import gin
from flan_jax.cli import gin_flags
from flan_jax.evaluation import evaluate, suites


def _add_suite_flags(parser) -> None:
    parser.add_argument(
        "--suite",
        default=None,
        help="evaluate a benchmark suite instead of a mixture: flan2022 or opt_iml",
    )
    parser.add_argument(
        "--suite_mixture",
        default=None,
        help="opt_iml: the mixture whose opt_iml_splits are evaluated (default: the run's "
        "MIXTURE_OR_TASK_NAME, e.g. opt_iml_tiny_train)",
    )
    parser.add_argument(
        "--max_examples_per_task", type=int, default=None, help="suite: cap for smoke runs"
    )
    parser.add_argument(
        "--max_tasks_per_benchmark", type=int, default=None, help="suite: cap for smoke runs"
    )
    parser.add_argument(
        "--vocabulary", default=None, help="suite: tasks' vocabulary, t5 (default) or byte"
    )


def main(argv: list[str] | None = None) -> int:
    """`flan-jax eval --gin_file=runs/eval.gin --gin.CHECKPOINT_PATH=...
    --gin.MIXTURE_OR_TASK_NAME=... --gin.MODEL_DIR=...` (or `--suite flan2022` instead of
    MIXTURE_OR_TASK_NAME); returns the exit code.

    MODEL and TASK_FEATURE_LENGTHS come from the config.gin of the run CHECKPOINT_PATH (or
    MODEL_DIR) belongs to, unless the command line sets them (a model gin, --gin.X=...).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--suite" or a.startswith("--suite=") for a in argv):
        argv = ["--gin.MIXTURE_OR_TASK_NAME='(suite)'", *argv]  # the suite names the tasks
    gin.clear_config()
    parser = gin_flags.make_parser("flan-jax eval")
    _add_suite_flags(parser)
    args = gin_flags.parse(
        argv, "flan-jax eval", parser, run_dir_macros=("CHECKPOINT_PATH", "MODEL_DIR")
    )
    gin_flags.require_macros(
        ("MODEL", "TASK_FEATURE_LENGTHS"), "flan-jax eval", gin_flags.NO_RUN_CONFIG
    )
    suite = None
    if args.suite is not None:
        try:
            suite = suites.SuiteOptions(
                args.suite,
                args.max_examples_per_task,
                args.max_tasks_per_benchmark,
                args.vocabulary,
                args.suite_mixture or args.run_macros.get("MIXTURE_OR_TASK_NAME"),
            )
        except ValueError as e:
            print(f"flan-jax eval: {e}", file=sys.stderr)
            return 2
    gin_flags.enable_compilation_cache(args)  # before anything compiles
    gin_flags.initialize_distributed(args)
    if args.run_macros.get("MIXTURE_OR_TASK_MODULE"):  # the module that registered the run's tasks
        importlib.import_module(args.run_macros["MIXTURE_OR_TASK_MODULE"])
    run = gin.get_configurable(evaluate.evaluate_checkpoint)
    try:
        if suite is not None:  # a bad suite fails before any checkpoint is read
            module = gin_flags.macro_value("MIXTURE_OR_TASK_MODULE")
            importlib.import_module(module or "flan_jax.registry")
            suites.get_suite(suite)
        run(suite=suite) if suite is not None else run()
    except ValueError as e:  # e.g. a task without the requested split
        print(f"flan-jax eval: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
