"""`flan-jax tasks list|show` and `flan-jax mixture stats`: inspect registered data."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import seqio

from flan_jax.data import formats, stats, tasks


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flan-jax", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--specs",
        action="append",
        default=[],
        help="also register the task/mixture YAMLs of this folder (repeatable)",
    )
    sub = parser.add_subparsers(dest="group", required=True)
    task_cmd = sub.add_parser("tasks").add_subparsers(dest="command", required=True)
    listing = task_cmd.add_parser("list", parents=[common], help="registered tasks")
    listing.add_argument("--cluster", help="only tasks of this cluster")
    show = task_cmd.add_parser("show", parents=[common], help="rendered examples of a task")
    show.add_argument("name", help="a task base name or variant (name_format)")
    show.add_argument("--format", choices=formats.FORMATS)
    show.add_argument("-n", type=int, default=3, help="number of examples")
    show.add_argument("--split", default="validation")
    mix = sub.add_parser("mixture").add_subparsers(dest="command", required=True)
    mix_stats = mix.add_parser(
        "stats", parents=[common], help="per-task rates, shares and token lengths"
    )
    mix_stats.add_argument("name")
    mix_stats.add_argument("--feature_lengths", default="inputs=512,targets=128")
    mix_stats.add_argument("--split", default="train")
    mix_stats.add_argument("--sample", type=int, default=200, help="examples per task")
    mix_stats.add_argument(
        "--decontaminate",
        action="store_true",
        help="also check that no evaluation example (MMLU, BBH, GSM8K test, held-out "
        "clusters) appears in the mixture (normalised 13-gram overlap)",
    )
    return parser


def parse_lengths(text: str) -> dict[str, int]:
    """Parses `inputs=512,targets=128` into {"inputs": 512, "targets": 128}."""
    try:
        pairs = [item.split("=") for item in text.split(",") if item]
        return {k.strip(): int(v) for k, v in pairs}
    except ValueError:
        raise ValueError(
            f"--feature_lengths {text!r} must look like inputs=512,targets=128"
        ) from None


def list_tasks(cluster: str | None) -> None:
    specs = sorted(tasks.registered_specs().values(), key=lambda s: (s.cluster, s.name))
    clusters = sorted({s.cluster for s in specs})
    if cluster is not None and cluster not in clusters:
        raise tasks.unknown_name_error("cluster", cluster, clusters)
    for spec in specs:
        if cluster is None or spec.cluster == cluster:
            print(f"{spec.name}\t{spec.cluster}\t{','.join(spec.formats)}\t{spec.source.type}")


def show_task(name: str, fmt: str | None, n: int, split: str) -> None:
    spec = tasks.get_task_spec(name)
    variant = name if name != spec.name else f"{spec.name}_{fmt or spec.formats[0]}"
    if fmt is not None and variant != f"{spec.name}_{fmt}":
        variant = f"{spec.name}_{fmt}"
    if variant not in spec.variant_names:
        raise ValueError(f"task {spec.name!r} has no format {fmt!r}; it has {list(spec.formats)}")
    task = seqio.get_mixture_or_task(variant)
    ds = task.get_dataset(None, split=split, shuffle=False)
    print(f"== {variant} (cluster {spec.cluster}, split {split})")
    for i, ex in enumerate(ds.take(n).as_numpy_iterator()):
        kind = ex["_template_type"].decode()
        print(f"-- example {i}: template {int(ex['_template_idx'])} ({kind})")
        print(f"inputs ({len(ex['inputs'])} tokens):")
        print(ex["inputs_pretokenized"].decode())
        print(f"targets ({len(ex['targets'])} tokens):")
        print(ex["targets_pretokenized"].decode())


def _check_known(name: str, kind: str) -> None:
    """An unknown name lists the closest ones and how to register its spec folder."""
    known = set(seqio.TaskRegistry.names()) | set(tasks.registered_specs())
    if kind != "task":
        known |= set(seqio.MixtureRegistry.names())
    if name not in known:
        error = tasks.unknown_name_error(kind, name, sorted(known))
        raise ValueError(f"{error}; {tasks.specs_hint(name, flag='--specs')}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `flan-jax tasks ...` and `flan-jax mixture ...`; returns an exit code."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    import flan_jax.registry as registry  # registration on demand

    try:
        for root in args.specs:
            registry.register_dir(root)
        if getattr(args, "name", None) is not None:
            _check_known(args.name, "task" if args.group == "tasks" else "mixture or task")
        if args.group == "tasks" and args.command == "list":
            list_tasks(args.cluster)
        elif args.group == "tasks":
            show_task(args.name, args.format, args.n, args.split)
        else:
            rows = stats.mixture_stats(
                args.name, parse_lengths(args.feature_lengths), split=args.split, sample=args.sample
            )
            print(f"== {args.name}: {len(rows)} tasks, feature lengths {args.feature_lengths}")
            print(stats.format_table(rows))
            if args.decontaminate:
                from flan_jax.data import decontaminate

                print(decontaminate.format_report(decontaminate.check_mixture(args.name)))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
