"""Offline caches of preprocessed tasks (`flan-jax cache`): task fingerprints, and the checks
that a training run's caches exist and still match the tasks they were built from.

A cache of task T lives in `CACHE_DIR/<seqio task dir of T>/` (seqio's layout: TFRecord shards,
`info.<split>.json`, `stats.<split>.json`, `COMPLETED`) plus `FINGERPRINT_FILE`, which records
what the cached examples were made from. A cache is stale when the current fingerprint differs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from flan_jax.data import sources, tasks

FINGERPRINT_FILE = "flan_jax_fingerprint.json"
FINGERPRINT_FORMAT = "flan_jax.cache_fingerprint/1"
# The modules that turn a spec's raw examples into the cached features: editing any of them
# (even a comment) makes every cache stale, which errs on the safe side.
_RENDER_MODULES = ("formats", "sources", "task_examples", "task_spec", "tasks", "templates")
_DATA_DIR = pathlib.Path(__file__).resolve().parent


def cache_command(name: str, cache_dir: str | None) -> str:
    """The command that (re)builds the cache of a task or mixture `name` into `cache_dir`."""
    return f"flan-jax cache {name} --output_dir {cache_dir or 'DIR'}"


def task_cache_dir(cache_dir: str, task_name: str) -> str:
    """Where `flan-jax cache --output_dir cache_dir` writes task `task_name` (seqio's layout)."""
    return os.path.join(cache_dir, seqio.get_task_dir_from_name(task_name))


def member_tasks(name: str) -> list[seqio.Task]:
    """The task `name`, or every task of mixture `name` (sub-mixtures flattened), by name."""
    provider = seqio.get_mixture_or_task(name)
    tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
    return sorted(tasks, key=lambda t: t.name)


def _sha256_file(path: str) -> str:
    """The file's sha256; hashed once per process while its size and mtime stay the same (a
    mixture's formats share their data files)."""
    stat = tf.io.gfile.stat(path)
    return _sha256_file_version(path, stat.length, stat.mtime_nsec)


@functools.lru_cache(maxsize=4096)
def _sha256_file_version(path: str, length: int, mtime_nsec: int) -> str:
    del length, mtime_nsec  # the cache key
    h = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _module_file_hash(ref: str, base_dir: str | None) -> str:
    """The hash of the source file of "module:function" (a spec's fn or preprocessor)."""
    fn = sources.resolve_function(ref, base_dir=base_dir)
    module = sys.modules.get(fn.__module__)
    path = getattr(module, "__file__", None)
    return _sha256_file(path) if path else f"no-source:{ref}"


def vocabulary_fingerprint(vocab: seqio.Vocabulary) -> str:
    """What a vocabulary's ids depend on: "sentencepiece:<model sha256>:<extra ids>", else its
    type, size and extra ids (equal strings: the same token ids)."""
    if isinstance(vocab, seqio.SentencePieceVocabulary):
        return f"sentencepiece:{_sha256_file(vocab.sentencepiece_model_file)}:{vocab.extra_ids}"
    return f"{type(vocab).__name__}:{vocab.vocab_size}:{vocab.extra_ids}"


def _spec_components(spec) -> dict[str, str]:
    """Spec-task parts: the spec (paths dropped), data file contents and user code."""
    source = spec.source
    parts = {}
    if source.type in sources.FILE_TYPES:
        for split, path in sorted(source.splits.items()):
            parts[f"data:{split}"] = _sha256_file(str(sources.expand_path(path)))
        source = dataclasses.replace(source, splits={k: "" for k in source.splits})
    if source.type == "function":
        parts["source_fn"] = _module_file_hash(source.fn, spec.base_dir)
    if spec.preprocessor:
        parts["preprocessor"] = _module_file_hash(spec.preprocessor, spec.base_dir)
    # base_dir and file paths differ between the machine that caches and the one that trains
    parts["spec"] = _sha256_text(repr(dataclasses.replace(spec, base_dir=None, source=source)))
    return parts


def task_fingerprint(task: seqio.Task) -> dict[str, str]:
    """Component -> hash of everything that determines `task`'s cached examples.

    Spec tasks (flan_jax.data.tasks): the spec, the contents of its data files, the code of its
    function source or preprocessor, flan_jax's rendering modules, the vocabulary. Other seqio
    tasks: their preprocessor names and vocabularies only (their data is theirs to version).
    """
    parts = {"flan_jax": importlib.metadata.version("flan_jax")}
    parts["preprocessors"] = _sha256_text(repr([_step_name(p) for p in task.preprocessors]))
    for key, feature in sorted(task.output_features.items()):
        parts[f"vocabulary:{key}"] = vocabulary_fingerprint(feature.vocabulary)
        parts[f"feature:{key}"] = f"add_eos={feature.add_eos},dtype={feature.dtype.name}"
    spec = tasks.find_task_spec(task.name)  # O(1); get_task_spec's error lists close names
    if spec is None:  # not a spec task
        return parts
    parts["render_code"] = _render_code_hash()
    parts.update(_spec_components(spec))
    return parts


@functools.cache
def _render_code_hash() -> str:
    return _sha256_text("".join((_DATA_DIR / f"{m}.py").read_text() for m in _RENDER_MODULES))


def _step_name(step: Any) -> str:
    func = getattr(step, "func", step)  # functools.partial
    return getattr(func, "__qualname__", type(func).__name__)


def write_fingerprint(task_dir: str, task: seqio.Task) -> None:
    """Writes `task`'s fingerprint into its cache folder (after the Beam pipeline ran)."""
    record = {"format": FINGERPRINT_FORMAT, "task": task.name, "parts": task_fingerprint(task)}
    with tf.io.gfile.GFile(os.path.join(task_dir, FINGERPRINT_FILE), "w") as f:
        f.write(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_fingerprint(task_dir: str) -> dict[str, str] | None:
    path = os.path.join(task_dir, FINGERPRINT_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f).get("parts")


def changed_parts(saved: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """Fingerprint components that differ (added, removed or changed), sorted."""
    return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))


def use_caches(name: str, cache_dir: str | None, splits: Sequence[str]) -> None:
    """Makes seqio read `name`'s caches from `cache_dir` (added to seqio's global cache dirs)
    and checks them (`check_cached`); a repeated call with the same arguments is free."""
    if cache_dir and cache_dir not in seqio.get_global_cache_dirs():
        seqio.add_global_cache_dirs([cache_dir])
    key = (name, cache_dir, tuple(splits))
    if key not in _CHECKED:
        check_cached(name, splits, cache_dir=cache_dir)
        _CHECKED.add(key)


_CHECKED: set[tuple] = set()


def check_cached(name: str, splits: Iterable[str], *, cache_dir: str | None = None) -> None:
    """Raises ValueError unless every task of `name` has a complete, current cache of `splits`.

    The cache checked is the one seqio reads (the first of seqio's global cache dirs that
    holds the task). Each message names the task, what is wrong and the `flan-jax cache`
    command that fixes it (into `cache_dir`, else the first global cache dir).
    """
    dirs = seqio.get_global_cache_dirs()
    fix = cache_command(name, cache_dir or (dirs[0] if dirs else None))
    if not dirs:
        raise ValueError(
            "USE_CACHED=True but no cache folder is set; add --gin.CACHE_DIR=\"'DIR'\" after "
            f"building the caches with `{fix}`"
        )
    for task in member_tasks(name):
        if not task.supports_caching:
            raise ValueError(
                f"task {task.name!r} (of {name!r}) cannot be cached (its source forbids it or it "
                "has no CacheDatasetPlaceholder); run with USE_CACHED=False"
            )
        found = task.cache_dir
        if found is None:
            raise ValueError(
                f"no cache of task {task.name!r} (of {name!r}) in {list(dirs)}; build it with "
                f"`{fix}`"
            )
        missing = [
            s
            for s in splits
            if s in task.splits
            and not tf.io.gfile.exists(seqio.utils.get_cached_info_path(found, s))
        ]
        if missing:
            raise ValueError(
                f"the cache of task {task.name!r} at {found} has no split(s) {missing}; "
                f"rebuild it with `{fix} --overwrite`"
            )
        saved = read_fingerprint(found)
        changed = changed_parts(saved or {}, task_fingerprint(task))
        if saved is None or changed:
            what = "has no fingerprint" if saved is None else f"differs in {changed}"
            raise ValueError(
                f"the cache of task {task.name!r} at {found} is stale (the task {what} since it "
                f"was cached); rebuild it with `{fix} --overwrite`"
            )
