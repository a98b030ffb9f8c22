"""`import flan_jax.registry` registers every shipped task and mixture with seqio.

The one module that does work on import (T5X: `--gin.MIXTURE_OR_TASK_MODULE="'flan_jax.registry'"`).
Folders listed in $FLAN_JAX_SPECS (os.pathsep-separated) are registered too.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from flan_jax.data import mixtures, niv2, tasks
from flan_jax.data.templates import read_yaml

SPECS_ENV = "FLAN_JAX_SPECS"


def classify_spec_files(root: str | pathlib.Path) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    """Splits the YAML files under a user folder into (task specs, mixture specs) by content:
    a `source:` key makes a task, `members:` a mixture; anything else (template sets) is skipped.
    """
    task_files, mixture_files = [], []
    for path in sorted(pathlib.Path(root).rglob("*.yaml")):
        data = read_yaml(path)
        if isinstance(data, dict) and "source" in data:
            task_files.append(path)
        elif isinstance(data, dict) and "members" in data:
            mixture_files.append(path)
    return task_files, mixture_files


def register_specs(
    task_files: list[pathlib.Path],
    mixture_files: list[pathlib.Path],
    members: dict[str, list[str]] | None = None,
) -> tuple[list[str], list[str]]:
    """Registers task specs, then mixtures in dependency order (sub-mixtures first).

    Every spec is loaded and validated before any is registered. Returns (task variant
    names, mixture names).
    """
    task_specs = [tasks.load_task_spec(p) for p in task_files]
    mixture_specs = [mixtures.load_mixture_spec(p) for p in mixture_files]
    mixture_specs = [  # `members` replaces a mixture's members (the rest of its spec stays)
        dataclasses.replace(s, members=tuple(members[s.name])) if s.name in (members or {}) else s
        for s in mixture_specs
    ]
    names = [s.name for s in task_specs] + [s.name for s in mixture_specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"spec name {duplicates[0]!r} is defined by more than one YAML file")
    task_names = [n for spec in task_specs for n in tasks.register_task_spec(spec)]
    pending, mixture_names = list(mixture_specs), []
    defined = {m.name for m in mixture_specs}
    while pending:
        done = set(mixtures.registered_mixtures())
        ready = [s for s in pending if all(m.name not in defined - done for m in s.members)]
        for spec in ready or pending[:1]:  # no progress: register one to surface its error
            mixture_names += mixtures.register_mixture_spec(spec)
            pending.remove(spec)
    return task_names, mixture_names


def register_dir(root: str | pathlib.Path) -> tuple[list[str], list[str]]:
    """Registers the task and mixture YAMLs of a user folder (see docs/adding_a_task.md)."""
    if not pathlib.Path(root).is_dir():
        raise FileNotFoundError(f"spec folder {str(root)!r} does not exist (from ${SPECS_ENV}?)")
    return register_specs(*classify_spec_files(root))


def register_all() -> tuple[list[str], list[str]]:
    """Registers every shipped task and mixture, then $FLAN_JAX_SPECS folders (idempotent).

    With $FLAN_JAX_NIV2_DIR (a clone of allenai/natural-instructions), its default split's
    tasks are registered (`niv2_<task>`, `niv2_<task>_pos2`), `flan2022_niv2` mixes its train
    tasks instead of the shipped sample, and `niv2_test` holds its held-out test tasks.
    """
    replace, task_names, mixture_names = {}, [], []
    clone = os.environ.get(niv2.CLONE_ENV)
    if clone:
        specs = niv2.clone_task_specs(clone)
        for spec in specs["train"] + specs["test"]:
            task_names += tasks.register_task_spec(spec)
        train = [s["name"] for s in specs["train"]]
        replace["flan2022_niv2"] = train
        mixture_names += mixtures.register_mixture_spec(
            {"name": "niv2_test", "members": [s["name"] for s in specs["test"]]}
        )
    more_tasks, more_mixtures = register_specs(
        tasks.task_spec_files(), mixtures.mixture_spec_files(), replace
    )
    task_names += more_tasks
    mixture_names += more_mixtures
    # evaluation tasks: MMLU / BBH / GSM8K, MGSM, MMLU chain of thought, TyDiQA
    from flan_jax.evaluation import (
        benchmarks,
        benchmarks_mgsm,
        benchmarks_mmlu_cot,
        benchmarks_tydiqa,
    )

    task_names += benchmarks.register()
    task_names += benchmarks_mgsm.register()
    task_names += benchmarks_mmlu_cot.register()
    task_names += benchmarks_tydiqa.register()
    for root in filter(None, os.environ.get(SPECS_ENV, "").split(os.pathsep)):
        more_tasks, more_mixtures = register_dir(root)
        task_names += more_tasks
        mixture_names += more_mixtures
    return task_names, mixture_names


register_all()
