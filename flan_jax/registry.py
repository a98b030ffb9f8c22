"""`import flan_jax.registry` registers every shipped task and mixture with seqio.

The one module that does work on import (T5X: `--gin.MIXTURE_OR_TASK_MODULE="'flan_jax.registry'"`).
"""

from __future__ import annotations

import pathlib

from flan_jax.data import mixtures, tasks


def register_specs(
    task_files: list[pathlib.Path], mixture_files: list[pathlib.Path]
) -> tuple[list[str], list[str]]:
    """Registers task specs, then mixtures in dependency order (sub-mixtures first).

    Every spec is loaded and validated before any is registered. Returns (task variant
    names, mixture names).
    """
    task_specs = [tasks.load_task_spec(p) for p in task_files]
    mixture_specs = [mixtures.load_mixture_spec(p) for p in mixture_files]
    names = [s.name for s in task_specs] + [s.name for s in mixture_specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"spec name {duplicates[0]!r} is defined by more than one YAML file")
    task_names = [n for spec in task_specs for n in tasks.register_task_spec(spec)]
    pending, mixture_names = list(mixture_specs), []
    while pending:
        mixture_known = {m.name for m in mixture_specs}
        ready = [
            s
            for s in pending
            if all(m.name not in mixture_known or m.name in mixtures.registered_mixtures()
                   for m in s.members)
        ]
        for spec in ready or pending[:1]:  # no progress: register one to surface its error
            mixture_names += mixtures.register_mixture_spec(spec)
            pending.remove(spec)
    return task_names, mixture_names


def register_all() -> tuple[list[str], list[str]]:
    """Registers every shipped task and mixture (idempotent)."""
    return register_specs(tasks.task_spec_files(), mixtures.mixture_spec_files())


register_all()
