"""MixtureSpec -> seqio Mixtures: examples-proportional rates with a cap, temperature, weights,
weighted sub-mixtures (flattened to per-task rates), benchmark proportions, held-out
`<name>_minus_<cluster>` splits and OPT-IML's three evaluation splits.
"""

from __future__ import annotations

import dataclasses
import pathlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import seqio

from flan_jax.data import formats as formats_lib
from flan_jax.data import opt_iml
from flan_jax.data import tasks as tasks_lib
from flan_jax.data.opt_iml import NOTHING, Excluded, cluster_of
from flan_jax.data.templates import read_yaml
from flan_jax.specs import spec_dir

DEFAULT_CAP = 3000  # FLAN 2021's examples-proportional cap per task
# name -> (spec, what it excludes, the variants it keeps: None = all but the excluded)
_MIXTURES: dict[str, tuple[MixtureSpec, Excluded, tuple[str, ...] | None]] = {}
_RATES: dict[tuple[str, Excluded], tuple[MixtureSpec, dict[str, float]]] = {}
_LOCK = threading.RLock()


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixtureMember:
    """A task base name, a task variant, or a mixture; `weight` replaces its computed rate."""

    name: str
    weight: float | None = None

    def __post_init__(self):
        if self.weight is not None and not self.weight > 0:
            raise ValueError(f"member {self.name!r}: weight must be > 0, got {self.weight}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixtureSpec:
    """A declarative mixture (see docs/internals.md "Mixture spec").

    A task's rate is `min(num_examples(train), cap) ** (1 / temperature)` unless weighted; a
    sub-mixture's rate (its weight, else the sum of its task rates) is split over its tasks in
    proportion to their rates inside it.
    """

    name: str
    members: tuple[MixtureMember, ...]
    formats: tuple[str, ...] | None = None
    cap: int = DEFAULT_CAP
    temperature: float = 1.0
    held_out: tuple[str, ...] | str | None = None  # "all" or clusters
    proportions: str | Mapping[str, float] | None = None
    opt_iml_splits: opt_iml.OptImlSplits | Mapping[str, Any] | None = None
    # Flan 2022's input inversion for every member task: that share of examples is asked the
    # other way round (0: forward templates only). None: each task spec's own setting.
    inversion_share: float | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)
        members = [MixtureMember(name=m) if isinstance(m, str) else m for m in self.members]
        members = [MixtureMember(**m) if isinstance(m, Mapping) else m for m in members]
        if self.proportions is not None:
            members = _apply_proportions(self.name, members, self.proportions)
            set_("proportions", None)  # now in the members' weights (one spec, one meaning)
        set_("members", tuple(members))
        if isinstance(self.opt_iml_splits, Mapping):
            set_("opt_iml_splits", opt_iml.OptImlSplits(**self.opt_iml_splits))
        if self.formats is not None:
            set_("formats", tuple(self.formats))
        if isinstance(self.held_out, (list, tuple)):
            set_("held_out", tuple(self.held_out))
        where = f"mixture {self.name!r}"
        if not self.name.isidentifier():
            raise ValueError(f"{where}: name must be an identifier ([A-Za-z0-9_])")
        if not self.members:
            raise ValueError(f"{where}: `members:` is empty; list tasks or mixtures")
        if not isinstance(self.cap, int) or self.cap <= 0:
            raise ValueError(f"{where}: cap must be a positive int, got {self.cap!r}")
        if not self.temperature > 0:
            raise ValueError(f"{where}: temperature must be > 0, got {self.temperature!r}")
        bad = [f for f in self.formats or () if f not in formats_lib.FORMATS]
        if bad:
            raise ValueError(f"{where}: formats {bad} are not in {formats_lib.FORMATS}")
        if self.inversion_share is not None and not 0.0 <= self.inversion_share <= 1.0:
            raise ValueError(
                f"{where}: inversion_share must be in [0, 1] or absent, got {self.inversion_share}"
            )
        if isinstance(self.held_out, str) and self.held_out != "all":
            raise ValueError(f"{where}: held_out must be 'all' or a list, got {self.held_out!r}")
        if self.opt_iml_splits is not None and self.held_out is not None:
            raise ValueError(
                f"{where}: give `held_out:` (<name>_minus_<cluster> mixtures) or "
                "`opt_iml_splits:` (its held_out_clusters), not both"
            )


def _apply_proportions(name, members, value) -> list[MixtureMember]:
    where = f"mixture {name!r}"
    weighted = [m.name for m in members if m.weight is not None]
    if weighted:
        raise ValueError(f"{where}: give `proportions:` or member weights, not both ({weighted})")
    shares = opt_iml.parse_proportions(where, [m.name for m in members], value)
    return [MixtureMember(name=m.name, weight=shares[m.name]) for m in members]


def mixture_spec_files(root: str | pathlib.Path | None = None) -> list[pathlib.Path]:
    """Every mixture YAML under `root` (default: shipped mixtures/)."""
    return sorted(pathlib.Path(root or spec_dir("mixtures")).rglob("*.yaml"))


def load_mixture_spec(spec: str | pathlib.Path | Mapping[str, Any]) -> MixtureSpec:
    """Loads a MixtureSpec from a YAML path or a mapping."""
    if isinstance(spec, (str, pathlib.Path)):
        data, where = read_yaml(spec), str(spec)
    else:
        data, where = spec, f"mixture spec {spec.get('name')!r}"
    known = {f.name for f in dataclasses.fields(MixtureSpec)}
    unknown = sorted(set(data or {}) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; known keys: {sorted(known)}")
    try:
        return MixtureSpec(**data)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}: {e}") from None


def inversion_variant(name: str, share: float) -> str:
    """Registers (once) the spec of task `name` (a base or variant name) with `inversion_share`
    = `share`, named `<base>_fwd` for 0 (forward templates only) or `<base>_inv<percent>`;
    returns the matching base or variant name of the new spec. Other tasks, and tasks without
    inverted templates for a share of 0, come back as is.

    Example: inversion_variant("tiny_topic_zs_opt", 0.0) -> "tiny_topic_fwd_zs_opt".
    """
    specs = tasks_lib.registered_specs()
    try:
        spec = tasks_lib.get_task_spec(name)
    except ValueError:  # a mixture or a plain seqio task: not ours to re-render
        return name
    suffix = "_fwd" if share == 0 else f"_inv{round(100 * share):02d}"
    sets = [t for t in (spec.templates, spec.cot_templates) if t is not None]
    forward_only = not any(t.inverted for tset in sets for t in tset.templates)
    if spec.inversion_share == share or spec.name.endswith(suffix) or (share == 0 and forward_only):
        return name
    derived = spec.name + suffix
    if derived not in specs:
        tasks_lib.register_task_spec(dataclasses.replace(spec, name=derived, inversion_share=share))
    return derived + name[len(spec.name) :]


def _with_inversion(spec: MixtureSpec) -> MixtureSpec:
    """`spec` with its task members replaced by their `inversion_share` variants."""
    if spec.inversion_share is None:
        return spec
    members = [
        dataclasses.replace(m, name=inversion_variant(m.name, spec.inversion_share))
        for m in spec.members
    ]
    return dataclasses.replace(spec, members=tuple(members))


def _expand_task(name: str, spec_formats: tuple[str, ...] | None) -> list[str]:
    """Task variant names of a member: a variant as is, a base name -> its formats."""
    specs = tasks_lib.registered_specs()
    if name in specs:
        fmts = [f for f in specs[name].formats if spec_formats is None or f in spec_formats]
        return [f"{name}_{f}" for f in fmts]
    return [name]


def _is_mixture(name: str) -> bool:
    return name in _MIXTURES or name in seqio.MixtureRegistry.names()


def _check_member(spec: MixtureSpec, member: MixtureMember) -> None:
    name = member.name
    if _is_mixture(name) or name in seqio.TaskRegistry.names():
        return
    if name in tasks_lib.registered_specs():
        return
    known = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
    known += list(tasks_lib.registered_specs())
    err = tasks_lib.unknown_name_error("task or mixture", name, known)
    raise ValueError(f"mixture {spec.name!r}: {err}")


def member_tasks(spec: MixtureSpec) -> list[str]:
    """Every task variant the mixture draws from (sub-mixtures flattened)."""
    out: list[str] = []
    for member in spec.members:
        if member.name in _MIXTURES:
            names = member_tasks(_MIXTURES[member.name][0])
        elif _is_mixture(member.name):
            names = [t.name for t in seqio.get_mixture_or_task(member.name).tasks]
        else:
            names = _expand_task(member.name, spec.formats)
        out += [n for n in names if n not in out]
    return out


def task_rate(task_name: str, cap: int, temperature: float = 1.0) -> float:
    """min(num train examples, cap) ** (1 / temperature) (recorded counts without the data)."""
    spec = tasks_lib.find_task_spec(task_name)  # None: a plain seqio task (its own size)
    if spec is not None:  # a malformed data file fails here, naming the file and line
        n = tasks_lib.count_examples(spec, "train")
    else:
        n = seqio.get_mixture_or_task(task_name).num_input_examples("train")
        if n is None:
            raise ValueError(
                f"task {task_name!r} does not know its train size; weight it"
            ) from None
    return float(min(n, cap)) ** (1.0 / temperature)


def flat_rates(spec: MixtureSpec, excluded: Excluded = NOTHING) -> dict[str, float]:
    """Per-task rates of a mixture with sub-mixtures flattened (unnormalised).

    Example: members [a (900 ex), b (5000 ex)] with cap 3000 -> {a: 900.0, b: 3000.0}; adding
    `{name: sub, weight: 100}` where sub = [c (10 ex), d (30 ex)] adds {c: 25.0, d: 75.0}.
    Excluded tasks are left out before a sub-mixture's weight is split over its tasks.
    """
    key = (spec.name, excluded)
    with _LOCK:
        cached = _RATES.get(key)
        if cached is not None and cached[0] == spec:
            return dict(cached[1])
    rates: dict[str, float] = {}
    for member in spec.members:
        if _is_mixture(member.name):
            sub = _sub_rates(member.name, excluded)
            total = sum(sub.values())
            scale = 1.0 if member.weight is None or not total else member.weight / total
            parts = {t: r * scale for t, r in sub.items()}
        else:
            parts = {
                t: member.weight or task_rate(t, spec.cap, spec.temperature)
                for t in _expand_task(member.name, spec.formats)
                if not excluded.drops(t)
            }
        for t, r in parts.items():
            rates[t] = rates.get(t, 0.0) + r
    with _LOCK:
        _RATES[key] = (spec, rates)
    return dict(rates)


def _sub_rates(name: str, excluded: Excluded) -> dict[str, float]:
    if name in _MIXTURES:
        return flat_rates(_MIXTURES[name][0], excluded)
    mixture = seqio.get_mixture_or_task(name)
    return {t.name: float(mixture.get_rate(t)) for t in mixture.tasks if not excluded.drops(t.name)}


def _rates_of(name: str) -> dict[str, float]:
    spec, excluded, keep = _MIXTURES[name]
    rates = flat_rates(spec, excluded)
    return rates if keep is None else {t: r for t, r in flat_rates(spec).items() if t in keep}


def mixture_rates(name: str) -> dict[str, float]:
    """Per-task rates of a mixture registered here (flattened, unnormalised)."""
    if name not in _MIXTURES:
        raise tasks_lib.unknown_name_error("mixture", name, list(_MIXTURES))
    return _rates_of(name)


def held_out_cluster(name: str) -> str | None:
    """The cluster a `<mixture>_minus_<cluster>` mixture leaves out (None otherwise)."""
    spec, excluded, keep = _MIXTURES.get(name, (None, NOTHING, None))
    if keep is None and len(excluded.clusters) == 1 and not excluded.tasks:
        return next(iter(excluded.clusters))
    return None


def mixture_spec_of(name: str) -> MixtureSpec | None:
    """The spec a mixture registered here was made from (None for other mixtures)."""
    return _MIXTURES.get(name, (None,))[0]


def _held_out_clusters(spec: MixtureSpec, tasks: Sequence[str]) -> list[str]:
    clusters = sorted({c for c in map(cluster_of, tasks) if c is not None})
    if spec.held_out is None:
        return []
    if spec.held_out == "all":
        return [c for c in clusters if any(cluster_of(t) != c for t in tasks)]
    for c in spec.held_out:
        if c not in clusters:
            raise ValueError(
                f"mixture {spec.name!r}: held-out cluster {c!r} does not exist; its tasks "
                f"have clusters {clusters}"
            )
        if all(cluster_of(t) == c for t in tasks):
            raise ValueError(f"mixture {spec.name!r}: holding out {c!r} leaves no task")
    return list(spec.held_out)


def register_mixture_spec(spec: MixtureSpec | str | pathlib.Path | Mapping[str, Any]) -> list[str]:
    """Registers a mixture and its held-out splits with seqio; returns their names.

    Idempotent for an equal spec; everything is validated before anything is registered
    (but the `inversion_share` variants of its tasks, which are kept).
    """
    if not isinstance(spec, MixtureSpec):
        spec = load_mixture_spec(spec)
    with _LOCK:
        for member in spec.members:
            _check_member(spec, member)
        spec = _with_inversion(spec)
        if spec.name in _MIXTURES and _MIXTURES[spec.name][0] == spec:
            return [n for n, (s, _, _) in _MIXTURES.items() if s == spec]
        if spec.name in _MIXTURES or spec.name in seqio.MixtureRegistry.names():
            raise ValueError(f"a different mixture named {spec.name!r} is already registered")
        tasks = member_tasks(spec)
        plan = [(spec.name, NOTHING, None)]
        plan += [
            (f"{spec.name}_minus_{c}", Excluded(clusters=frozenset([c])), None)
            for c in _held_out_clusters(spec, tasks)
        ]
        if spec.opt_iml_splits is not None:
            plan += opt_iml.split_plan(spec.name, spec.opt_iml_splits, tasks)
        for name, _, _ in plan:
            if name in seqio.MixtureRegistry.names() or name in seqio.TaskRegistry.names():
                raise ValueError(f"mixture name {name!r} is already registered with seqio")
        for name, excluded, keep in plan:
            if keep is None:
                members = [t for t in tasks if not excluded.drops(t)]
            else:
                members = [t for t in tasks if t in keep]
            rate_fns = [(t, _RateFn(name, t)) for t in members]
            seqio.MixtureRegistry.add_provider(name, seqio.Mixture(name, rate_fns))
            _MIXTURES[name] = (spec, excluded, keep)
    return [name for name, _, _ in plan]


@dataclasses.dataclass(frozen=True)
class _RateFn:
    """A lazy seqio rate: counting examples waits until a dataset is built."""

    mixture: str
    task: str

    def __call__(self, task: seqio.Task | None = None) -> float:
        return _rates_of(self.mixture)[self.task]


def unregister_mixture(name: str) -> None:
    """Removes a mixture registered here (its held-out splits too) from seqio."""
    with _LOCK:
        spec = _MIXTURES.get(name, (None,))[0]
        for other in [n for n, (s, _, _) in _MIXTURES.items() if s is spec and spec is not None]:
            seqio.MixtureRegistry.remove(other)
            del _MIXTURES[other]


def registered_mixtures() -> list[str]:
    """Names of every mixture registered through this module (held-out splits included)."""
    return sorted(_MIXTURES)
