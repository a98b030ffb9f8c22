"""`flan-jax cache NAME --output_dir DIR [--runner R] [Beam options]`: preprocess a task, or
every task of a mixture, into seqio caches on Apache Beam; `--gin.USE_CACHED=True` then trains
from them. `DRY_RUN=1` prints the exact command and the tasks instead of running (docs/caching.md).
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import sys
from collections.abc import Sequence

RUNNERS = ("DirectRunner", "DataflowRunner", "PrismRunner", "FlinkRunner", "SparkRunner")
# Without one of these, Dataflow workers have no flan_jax to import the tasks from.
DATAFLOW_PACKAGING = (
    "--setup_file",
    "--requirements_file",
    "--extra_package",
    "--sdk_container_image",
)
DATAFLOW_REQUIRED = ("--project", "--region", "--temp_location")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flan-jax cache",
        description=__doc__,
        allow_abbrev=False,  # a Beam flag must never pass for an abbreviation of ours
        epilog="Other --flags are Beam pipeline options (Dataflow: --project, --region, "
        "--temp_location, --setup_file=./setup.py, --num_workers, ...).",
    )
    parser.add_argument(
        "name", help="a task, a spec's base name (all its formats) or a mixture (all its tasks)"
    )
    parser.add_argument("--output_dir", required=True, help="cache folder (local or gs://)")
    parser.add_argument("--runner", default="DirectRunner", choices=RUNNERS)
    parser.add_argument(
        "--specs", action="append", default=[], help="also register this YAML folder (repeatable)"
    )
    parser.add_argument(
        "--num_shards",
        type=int,
        default=4,
        help="TFRecord files per split, 1-16 (more than 16 would change the unshuffled order)",
    )
    parser.add_argument("--overwrite", action="store_true", help="rebuild existing caches")
    return parser


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(our flags, Beam's pipeline options); Beam's must be --flags."""
    args, beam_args = _parser().parse_known_args(list(argv))
    # a bare word is the value of the Beam flag before it (`--project p`), else a stray
    stray = [
        a
        for i, a in enumerate(beam_args)
        if not a.startswith("-")
        and not (i and beam_args[i - 1].startswith("--") and "=" not in beam_args[i - 1])
    ]
    if stray:
        raise ValueError(
            f"unexpected argument {stray[0]!r}: give one task or mixture name (got "
            f"{args.name!r} already); Beam options are --flags (--project=P)"
        )
    if not 1 <= args.num_shards <= 16:
        raise ValueError(f"--num_shards {args.num_shards} must be in 1..16")
    if args.runner == "DataflowRunner":
        _check_dataflow(args, beam_args)
    return args, [f"--runner={args.runner}", *beam_args]


def _flag_names(beam_args: Sequence[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in beam_args if a.startswith("--")}


def _check_dataflow(args: argparse.Namespace, beam_args: Sequence[str]) -> None:
    given = _flag_names(beam_args)
    missing = [f for f in DATAFLOW_REQUIRED if f not in given]
    if missing:
        raise ValueError(
            f"--runner DataflowRunner needs {', '.join(missing)}; add e.g. --project=my-project "
            "--region=us-central1 --temp_location=gs://my-bucket/tmp"
        )
    if not args.output_dir.startswith("gs://"):
        raise ValueError(
            f"--output_dir {args.output_dir!r} must be a gs:// folder with DataflowRunner "
            "(the workers write there)"
        )
    if not given & set(DATAFLOW_PACKAGING):
        raise ValueError(
            "Dataflow workers need flan_jax: add --setup_file=./setup.py (from the repository "
            f"root) or one of {', '.join(DATAFLOW_PACKAGING[1:])}"
        )


def register(spec_dirs: Sequence[str]) -> None:
    """Registers flan_jax's tasks and the spec folders `spec_dirs` (run on every Beam worker)."""
    import flan_jax.registry as registry

    for folder in spec_dirs:
        registry.register_dir(folder)


def _tasks(name: str):
    """The cacheable tasks of `name` and the names of those that are not."""
    import seqio

    from flan_jax.data import cache as cache_lib
    from flan_jax.data import tasks as tasks_lib

    known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    specs = tasks_lib.registered_specs()
    if name not in known | set(specs):
        error = tasks_lib.unknown_name_error("task or mixture", name, sorted(known))
        raise ValueError(f"{error}; {tasks_lib.specs_hint(name, flag='--specs')}")
    if name in specs and name not in known:  # a spec's base name: all its format variants
        members = [seqio.get_mixture_or_task(v) for v in sorted(specs[name].variant_names)]
    else:
        members = cache_lib.member_tasks(name)
    cacheable = [t for t in members if t.supports_caching]
    skipped = [t.name for t in members if not t.supports_caching]
    if not cacheable:
        raise ValueError(
            f"{name!r} has no cacheable task ({skipped} forbid caching or have no "
            "CacheDatasetPlaceholder); train it with USE_CACHED=False"
        )
    return cacheable, skipped


def _existing(tasks, output_dir: str, overwrite: bool):
    """Tasks to build; raises when an existing cache is stale and --overwrite is not given."""
    import tensorflow as tf

    from flan_jax.data import cache as cache_lib

    todo, current = [], []
    for task in tasks:
        task_dir = cache_lib.task_cache_dir(output_dir, task.name)
        complete = tf.io.gfile.exists(os.path.join(task_dir, "COMPLETED"))
        if complete and not overwrite:
            saved = cache_lib.read_fingerprint(task_dir) or {}
            changed = cache_lib.changed_parts(saved, cache_lib.task_fingerprint(task))
            if changed:
                raise ValueError(
                    f"the cache of {task.name!r} at {task_dir} is stale (changed: {changed}); "
                    "rebuild it with --overwrite"
                )
            current.append(task.name)
            continue
        if tf.io.gfile.exists(task_dir):  # stale with --overwrite, or an unfinished run
            tf.io.gfile.rmtree(task_dir)
        todo.append(task)
    return todo, current


def _cached_examples(task_dir: str, split: str) -> int:
    import json

    import seqio
    import tensorflow as tf

    with tf.io.gfile.GFile(seqio.get_cached_stats_path(task_dir, split)) as f:
        return int(json.load(f).get("examples", 0))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `flan-jax cache`; returns an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, pipeline_args = parse(argv)
    dry_run = os.environ.get("DRY_RUN", "0")
    if dry_run not in ("0", "1"):
        raise ValueError(f"DRY_RUN={dry_run} must be 0 or 1")
    register(args.specs)  # registration on demand
    tasks, skipped = _tasks(args.name)
    for name in skipped:
        print(f"skipping {name}: not cacheable", file=sys.stderr)
    if dry_run == "1":
        command = ["flan-jax", "cache", args.name, "--output_dir", args.output_dir]
        command += ["--num_shards", str(args.num_shards)] + [f"--specs={s}" for s in args.specs]
        print(shlex.join(command + (["--overwrite"] if args.overwrite else []) + pipeline_args))
        print(f"# {len(tasks)} task(s): {' '.join(t.name for t in tasks)}")
        return 0
    try:
        from flan_jax.data import cache_pipeline
    except ImportError as e:
        raise ValueError(
            f"flan-jax cache needs Apache Beam ({e}); pip install 'flan_jax[beam]'"
        ) from None
    todo, current = _existing(tasks, args.output_dir, args.overwrite)
    for name in current:
        print(f"{name}: cache is current, kept (--overwrite rebuilds it)")
    if todo:
        dirs = cache_pipeline.run(
            todo,
            args.output_dir,
            pipeline_args=pipeline_args,
            num_shards=args.num_shards,
            setup_fn=functools.partial(register, tuple(os.path.abspath(s) for s in args.specs)),
        )
        for task, task_dir in zip(todo, dirs):
            counts = {s: _cached_examples(task_dir, s) for s in task.splits}
            print(f"{task.name}: cached {counts} -> {task_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
