"""OPT-IML's mixture tools: benchmark proportions ("4/2/20/25/45/2/2") and the three
evaluation splits (fully held-out clusters, partially held-out tasks, fully supervised), with
the check that no data source feeds both training and a held-out split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from flan_jax.data import tasks as tasks_lib

OPT_IML_SPLITS = ("fully_held_out", "partially_held_out", "fully_supervised")


@dataclasses.dataclass(frozen=True)
class Excluded:
    """What a registered mixture leaves out of its spec: clusters and task base names."""

    clusters: frozenset[str] = frozenset()
    tasks: frozenset[str] = frozenset()

    def drops(self, variant: str) -> bool:
        return cluster_of(variant) in self.clusters or base_task(variant) in self.tasks


NOTHING = Excluded()


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptImlSplits:
    """OPT-IML's evaluation splits of a mixture (its section 3.2).

    Registers `<name>_train` (the mixture without `held_out_clusters` and `held_out_tasks`) and
    three evaluation mixtures: `<name>_fully_held_out` (every task of the held-out clusters),
    `<name>_partially_held_out` (the held-out tasks: datasets of clusters seen in training)
    and `<name>_fully_supervised` (the training tasks, evaluated on their held-out examples).
    No data source may feed both training and a held-out split.
    """

    held_out_clusters: tuple[str, ...] = ()
    held_out_tasks: tuple[str, ...] = ()

    def __post_init__(self):
        for key in ("held_out_clusters", "held_out_tasks"):
            value = getattr(self, key)
            if isinstance(value, str):
                raise ValueError(f"opt_iml_splits.{key} must be a list, got {value!r}")
            object.__setattr__(self, key, tuple(value))
        if not self.held_out_clusters and not self.held_out_tasks:
            raise ValueError("opt_iml_splits needs held_out_clusters and/or held_out_tasks")


def parse_proportions(
    where: str, names: Sequence[str], value: str | Mapping[str, float]
) -> dict[str, float]:
    """Benchmark proportions -> weights summing to 1, e.g. "4/2/20/25/45/2/2" (one number per
    member, in order, as OPT-IML writes them) or a mapping {member: share}."""
    if isinstance(value, str):
        parts = value.split("/")
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"{where}: proportions {value!r} must be numbers separated by '/', "
                'e.g. "4/2/20/25/45/2/2"'
            ) from None
        if len(numbers) != len(names):
            raise ValueError(
                f"{where}: proportions {value!r} has {len(numbers)} numbers for "
                f"{len(names)} members {list(names)}; give one per member, in order"
            )
        given = dict(zip(names, numbers))
    else:
        given = {str(k): float(v) for k, v in value.items()}
        missing, unknown = sorted(set(names) - set(given)), sorted(set(given) - set(names))
        if missing or unknown:
            raise ValueError(
                f"{where}: proportions must name every member once; missing {missing}, "
                f"not members {unknown}"
            )
    if any(not v > 0 for v in given.values()):
        raise ValueError(f"{where}: proportions must be > 0, got {given}")
    total = sum(given.values())
    return {k: v / total for k, v in given.items()}


def cluster_of(task_name: str) -> str | None:
    """The cluster of a registered variant (None for tasks not made from a TaskSpec)."""
    spec = tasks_lib.find_task_spec(task_name)
    return None if spec is None else spec.cluster


def base_task(task_name: str) -> str:
    """The TaskSpec name of a registered variant (the name itself for plain seqio tasks)."""
    spec = tasks_lib.find_task_spec(task_name)
    return task_name if spec is None else spec.name


def source_key(task_name: str) -> tuple:
    """What identifies a variant's data: its source type, TFDS builder (no version), files or
    generator function and arguments. Variants of one TaskSpec share it."""
    spec = tasks_lib.find_task_spec(task_name)
    if spec is None:
        return ("seqio", task_name)
    source = spec.source
    if source.type == "tfds":
        return ("tfds", source.name.split(":")[0])
    if source.type == "function":
        return ("function", source.fn, tuple(sorted((k, repr(v)) for k, v in source.args.items())))
    return (source.type, tuple(sorted(source.splits.values())))


def split_plan(name: str, splits: OptImlSplits, tasks: Sequence[str]) -> list[tuple]:
    """[(mixture name, Excluded, variants kept or None)] of the train mixture and OPT-IML's
    three evaluation mixtures, validated."""
    where = f"mixture {name!r}: opt_iml_splits"
    clusters = sorted({c for c in map(cluster_of, tasks) if c is not None})
    bases = sorted({base_task(t) for t in tasks})
    for c in splits.held_out_clusters:
        if c not in clusters:
            raise ValueError(f"{where}: held-out cluster {c!r} is not one of {clusters}")
    for t in splits.held_out_tasks:
        if t not in bases:
            raise ValueError(f"{where}: {tasks_lib.unknown_name_error('task', t, bases)}")
    excluded = Excluded(frozenset(splits.held_out_clusters), frozenset(splits.held_out_tasks))
    train = [t for t in tasks if not excluded.drops(t)]
    if not train:
        raise ValueError(f"{where}: holding out {excluded} leaves no training task")
    seen = {cluster_of(t) for t in train}
    partial = [t for t in tasks if base_task(t) in splits.held_out_tasks]
    for t in partial:
        if cluster_of(t) in splits.held_out_clusters or cluster_of(t) not in seen:
            raise ValueError(
                f"{where}: held-out task {base_task(t)!r} (cluster {cluster_of(t)!r}) must "
                "belong to a cluster seen in training (partially held-out); drop it from "
                "held_out_tasks or keep another task of its cluster"
            )
    full = [t for t in tasks if cluster_of(t) in splits.held_out_clusters]
    train_sources = {source_key(t): t for t in train}
    shared = sorted(
        f"{t} and {train_sources[source_key(t)]}" for t in full + partial
        if source_key(t) in train_sources
    )  # fmt: skip
    if shared:
        raise ValueError(
            f"{where}: a held-out task reads the same data as a training task: {shared[:5]}; "
            "hold out every task of that dataset"
        )
    plan = [
        (f"{name}_train", excluded, None),
        (f"{name}_fully_held_out", NOTHING, tuple(full)),
        (f"{name}_partially_held_out", NOTHING, tuple(partial)),
        (f"{name}_fully_supervised", excluded, tuple(train)),
    ]
    return [p for p in plan if p[2] is None or p[2]]  # an empty split is not registered
