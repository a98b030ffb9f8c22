"""TaskSpec -> registered seqio Tasks, one per format: `<name>_<format>`.

Pipeline of every variant: source dicts -> field mapping (Python) -> render (Python, in memory;
few-shot pruned to the token budget in TF) -> seqio tokenize -> append EOS. Plain seqio
Tasks, usable by T5X as is. The spec itself lives in flan_jax.data.task_spec and its examples
in flan_jax.data.task_examples; their public names are re-exported here.
"""

from __future__ import annotations

import difflib
import functools
import os
import pathlib
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from flan_jax.data import formats as formats_lib
from flan_jax.data.task_examples import (
    cached,
    check_recorded_sizes,
    count_examples,
    get_examples,
    get_pool,
    iter_prepared,
)
from flan_jax.data.task_spec import TEMPLATE_DIR, TaskSpec, load_task_spec, task_spec_files
from flan_jax.data.vocab import get_vocabulary

__all__ = [
    "TEMPLATE_DIR",
    "RenderedSource",
    "TaskSpec",
    "build_tasks",
    "check_recorded_sizes",
    "find_task_spec",
    "count_examples",
    "get_examples",
    "get_pool",
    "get_task_spec",
    "load_task_spec",
    "register_task_spec",
    "registered_specs",
    "task_spec_files",
    "unknown_name_error",
    "unregister_task_spec",
]

_SPECS: dict[str, TaskSpec] = {}  # base name -> registered spec
_VARIANTS: dict[str, str] = {}  # variant name -> base name
_LOCK = threading.Lock()


def _render_rows(spec: TaskSpec, fmt: str, split: str, examples):
    """Yields the rendered feature dicts of a split, in stored order."""
    settings = spec.render_settings(fmt)
    few_shot = fmt in formats_lib.FEW_SHOT_FORMATS
    pool = get_pool(spec) if few_shot else ()
    for i, ex in enumerate(examples):
        out = formats_lib.render_example(ex, i, split, settings, pool=pool)
        row = {
            "inputs": out.inputs,
            "targets": out.targets,
            "_task_name": f"{spec.name}_{fmt}",
            "_template_idx": out.template_idx,
            "_template_type": out.template_type,
            "_cluster": spec.cluster,
        }
        if spec.is_classification:
            row["options"] = out.options
        if few_shot:
            row |= {"_shots": out.shots, "_query": out.query}
        yield row


_LIST_KEYS = ("options", "_shots")


def _rendered_columns(spec: TaskSpec, fmt: str, split: str) -> dict[str, Any]:
    """All rendered rows of an in-memory split as columns (cached with the examples)."""

    def build():
        rows = list(_render_rows(spec, fmt, split, get_examples(spec, split)))
        keys = rows[0].keys() if rows else _signature(spec, fmt).keys()
        return {k: [r[k] for r in rows] for k in keys}

    return cached(spec, f"{split}:{fmt}", build)


def _signature(spec: TaskSpec, fmt: str) -> dict[str, tf.TensorSpec]:
    text = tf.TensorSpec([], tf.string)
    signature = {k: text for k in ("inputs", "targets", "_task_name", "_template_type", "_cluster")}
    signature["_template_idx"] = tf.TensorSpec([], tf.int32)
    if spec.is_classification:
        signature["options"] = tf.TensorSpec([None], tf.string)
    if fmt in formats_lib.FEW_SHOT_FORMATS:
        signature |= {"_shots": tf.TensorSpec([None], tf.string), "_query": text}
    return signature


def _rendered_dataset(split: str, shuffle_files: bool = False, seed=None, *, spec, fmt):
    """Source of one variant: examples rendered in Python in stored order (round-robin), before
    `densify` (list features are ragged rows).

    File and function sources are rendered once and served from memory, fully shuffled when
    `shuffle_files` (seqio's `shuffle`); TFDS streams and relies on seqio's shuffle buffer.
    """
    signature = _signature(spec, fmt)
    if spec.source.type == "tfds":
        rows = lambda: _render_rows(spec, fmt, split, iter_prepared(spec, split))
        return tf.data.Dataset.from_generator(rows, output_signature=signature)
    columns = _rendered_columns(spec, fmt, split)
    tensors = {}
    for k, sig in signature.items():
        if k in _LIST_KEYS:
            tensors[k] = tf.RaggedTensor.from_row_lengths(
                tf.reshape(tf.constant([x for row in columns[k] for x in row], tf.string), [-1]),
                tf.constant([len(row) for row in columns[k]], tf.int64),
            )
        else:
            tensors[k] = tf.reshape(tf.constant(columns[k], sig.dtype), [len(columns[k])])
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle_files and columns["inputs"]:
        # A fixed default seed keeps hosts in step: seqio shards the examples after this.
        seed = spec.seed if seed is None else seed
        ds = ds.shuffle(len(columns["inputs"]), seed=seed, reshuffle_each_iteration=True)
    return ds


def densify(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """A rendered source's list features (`options`, `_shots`) as dense [n] string tensors.

    One function for every task, so that `cached_mixture` can apply it once to many tasks'
    mixed examples rather than trace it per task."""
    list_keys = [k for k in _LIST_KEYS if k in dataset.element_spec]
    if not list_keys:
        return dataset
    return dataset.map(lambda ex: ex | {k: tf.reshape(ex[k], [-1]) for k in list_keys})


# How many shards `RenderedSource.list_shards` names per split: the units of work that Beam
# spreads over workers when `flan-jax cache` preprocesses a task. Shard i holds rows i, i+n,
# i+2n, ... of the split (in stored order when unshuffled), exactly what seqio's own
# example-level sharding gives, so training reads the same examples whichever path seqio takes.
SOURCE_SHARDS = 8


class RenderedSource(seqio.FunctionDataSource):
    """seqio's FunctionDataSource without its "uncached FunctionDataset" warning (in-memory
    splits are shuffled whole by `_rendered_dataset`), with a shard listing for Beam.

    `shuffles_splits`: `get_dataset(shuffle=True)` shuffles each split whole (file and
    function sources, rendered in memory), so no shuffle buffer is needed after it; False for
    streamed TFDS splits (`cached_mixture.task_stream` reads it)."""

    def __init__(
        self,
        dataset_fn,
        splits,
        *,
        num_shards: int = SOURCE_SHARDS,
        shuffles_splits: bool = False,
        **kwargs,
    ):
        super().__init__(dataset_fn, splits=splits, **kwargs)
        self._num_shards = num_shards
        self.shuffles_splits = shuffles_splits

    def list_shards(self, split: str) -> list[str]:
        n = self._num_shards
        return [f"{split}-{i:05d}-of-{n:05d}" for i in range(n)]

    def raw_dataset(self, split="train", shuffle=True, seed=None, shard_info=None):
        """`get_dataset` before `finish` (densify): list features still ragged."""
        ds = self._dataset_fn(split=split, shuffle_files=shuffle, seed=seed)
        if shard_info and shard_info.num_shards > 1:
            # after the (seeded) whole-split shuffle, as seqio shards a source it cannot split
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        return ds

    finish = staticmethod(densify)  # what turns `raw_dataset` into `get_dataset`

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **unused):
        del unused  # sequence_length, use_cached, num_epochs: unused, as in the parent
        return self.finish(self.raw_dataset(split, shuffle, seed, shard_info))


def _prune_few_shot(dataset, sequence_length=None, output_features=None, *, separator: str):
    """Drops trailing exemplars until the tokenized inputs (+ EOS) fit sequence_length["inputs"].

    Pure TF ops (no py_function), so a tf.data iterator over few-shot tasks can be
    checkpointed. Candidates with k = n-1, ..., 0 exemplars are joined exactly as
    `formats.join_few_shot` joins them (with the spec's `exemplar_separator`); the first that
    fits wins (the query alone if none). Takes the separator rather than the spec, so that the
    post-cache steps of two specs compare equal (`cached_mixture` groups tasks by them).
    """
    budget = (sequence_length or {}).get("inputs")
    vocab = output_features["inputs"].vocabulary
    num_tokens = lambda text: tf.size(vocab.encode_tf(text))

    def prune(shots, query, inputs):
        n = tf.size(shots)
        ks = tf.range(n - 1, -1, -1)
        join = lambda k: tf.strings.reduce_join(
            tf.concat([shots[:k], tf.reshape(query, [1])], 0), separator=separator
        )
        candidates = tf.map_fn(join, ks, fn_output_signature=tf.string)
        lengths = tf.map_fn(num_tokens, candidates, fn_output_signature=tf.int32)
        fitting = tf.where(lengths + 1 <= budget)[:, 0]
        fallback = tf.cond(
            tf.size(fitting) > 0,
            lambda: candidates[fitting[0]],
            lambda: tf.reshape(query, []),
        )
        return tf.cond(num_tokens(inputs) + 1 <= budget, lambda: inputs, lambda: fallback)

    def fn(ex):
        ex = dict(ex)
        shots, query = ex.pop("_shots"), ex.pop("_query")
        if budget is not None:
            ex["inputs"] = tf.reshape(prune(shots, query, ex["inputs"]), [])
        return ex

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _metric_fns(spec: TaskSpec):
    if not spec.metrics and not spec.postprocessor:
        return [], None
    from flan_jax import metrics  # only tasks that evaluate need it

    return [metrics.get_metric(m) for m in spec.metrics], metrics.get_postprocessor(
        spec.postprocessor
    )


def build_tasks(spec: TaskSpec, vocabulary: seqio.Vocabulary | None = None) -> list[seqio.Task]:
    """The seqio Tasks of every format of `spec` (not registered)."""
    vocab = vocabulary or get_vocabulary(spec.vocabulary)
    features = {
        "inputs": seqio.Feature(vocab, add_eos=True),
        "targets": seqio.Feature(vocab, add_eos=True),
    }
    metric_fns, postprocess_fn = _metric_fns(spec)
    result = []
    for fmt in spec.formats:
        # Caching is safe: rendering is a pure function of the spec, the split and each
        # example's position (templates, options and exemplars are drawn from seeded RNGs), and
        # tokenizing is deterministic. A function source must be a pure function of (split,
        # args) too (flan_tiny's generators are seeded); flan_jax.data.cache fingerprints its code.
        source = RenderedSource(
            functools.partial(_rendered_dataset, spec=spec, fmt=fmt),
            splits=list(spec.source.splits),
            caching_permitted=True,
            shuffles_splits=spec.source.type != "tfds",
        )
        preprocessors = [
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ]
        if fmt in formats_lib.FEW_SHOT_FORMATS:
            # Pruning exemplars needs the sequence length, which seqio only knows after the
            # cache: few-shot variants cache the rendered text and tokenize after reading it.
            preprocessors = [
                seqio.CacheDatasetPlaceholder(),
                functools.partial(_prune_few_shot, separator=spec.few_shot.exemplar_separator),
                seqio.preprocessors.tokenize,
                seqio.preprocessors.append_eos_after_trim,
            ]
        result.append(
            seqio.Task(
                f"{spec.name}_{fmt}",
                source,
                output_features=features,
                preprocessors=preprocessors,
                postprocess_fn=postprocess_fn,
                metric_fns=metric_fns,
            )
        )
    return result


def register_task_spec(
    spec: TaskSpec | str | pathlib.Path | Mapping[str, Any],
    *,
    vocabulary: seqio.Vocabulary | None = None,
) -> list[str]:
    """Registers every format variant of a spec with seqio; returns the variant names.

    Idempotent: registering an equal spec again is a no-op. Everything is validated (spec,
    templates, metrics, name clashes) before the first task is added: nothing half-way.
    """
    if not isinstance(spec, TaskSpec):
        spec = load_task_spec(spec)
    with _LOCK:
        if _SPECS.get(spec.name) == spec:
            return spec.variant_names
        for name in spec.variant_names:
            if name in seqio.TaskRegistry.names() and _VARIANTS.get(name) != spec.name:
                raise ValueError(
                    f"task {name!r} is already registered with seqio by other code; rename "
                    f"the spec {spec.name!r}"
                )
        if spec.name in _SPECS:
            raise ValueError(
                f"a different spec named {spec.name!r} is already registered; give the new one "
                "another name (or call unregister_task_spec first)"
            )
        tasks = build_tasks(spec, vocabulary)
        for task in tasks:
            seqio.TaskRegistry.add_provider(task.name, task)
            _VARIANTS[task.name] = spec.name
        _SPECS[spec.name] = spec
    return spec.variant_names


def unregister_task_spec(name: str) -> None:
    """Removes a registered spec and its variants from seqio (for tests and reloading)."""
    with _LOCK:
        spec = _SPECS.pop(name, None)
        for variant in spec.variant_names if spec else []:
            seqio.TaskRegistry.remove(variant)
            _VARIANTS.pop(variant, None)


def registered_specs() -> dict[str, TaskSpec]:
    """Base name -> spec of every task registered through this module."""
    return dict(_SPECS)


def find_task_spec(name: str) -> TaskSpec | None:
    """The spec of a base task name or a variant name; None for any other name (plain seqio
    tasks). O(1): callers asking of every task in a mixture use this, not `get_task_spec`,
    whose error for an unknown name compares it with every registered name."""
    if name in _SPECS:
        return _SPECS[name]
    if name in _VARIANTS:
        return _SPECS[_VARIANTS[name]]
    return None


def get_task_spec(name: str) -> TaskSpec:
    """The spec of a base task name or a variant name; unknown names list the closest ones."""
    spec = find_task_spec(name)
    if spec is None:
        raise unknown_name_error("task", name, list(_SPECS) + list(_VARIANTS))
    return spec


def unknown_name_error(kind: str, name: str, known: Sequence[str]) -> ValueError:
    """A ValueError naming the unknown name and the closest known ones (difflib)."""
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    hint = f"closest: {close}" if close else f"{len(known)} {kind}s are registered"
    return ValueError(f"unknown {kind} {name!r}; {hint}")


SPECS_ENV = "FLAN_JAX_SPECS"  # flan_jax.registry registers the spec folders it lists


def specs_hint(name: str, flag: str | None = None) -> str:
    """How to make an unregistered task or mixture `name` known: the YAML under the working
    directory that defines it (if any) and $FLAN_JAX_SPECS (or `flag`, e.g. "--specs")."""
    found = _find_spec_yaml(name)
    folder = str(found.parent) if found else "DIR"
    how = f"{flag} {folder}" if flag else f"export {SPECS_ENV}={folder}"
    where = f"it is defined in {str(found)!r}: " if found else "if it is defined in a YAML folder, "
    now = os.environ.get(SPECS_ENV)
    return f"{where}{how} ({SPECS_ENV} is {'unset' if now is None else repr(now)})"


def _find_spec_yaml(name: str, root: str = ".", max_depth: int = 3) -> pathlib.Path | None:
    """The first YAML file (shallow walk of `root`) whose top level says `name: <name>`."""
    pattern = re.compile(rf"^name:\s*['\"]?{re.escape(name)}['\"]?\s*(#.*)?$", re.M)
    for folder, dirs, files in os.walk(root):
        depth = os.path.relpath(folder, root).count(os.sep)
        dirs[:] = (
            []
            if depth >= max_depth
            else sorted(
                d
                for d in dirs
                if not d.startswith((".", "_")) and d not in ("runs", "node_modules")
            )
        )
        for f in sorted(files):
            if f.endswith((".yaml", ".yml")):
                path = pathlib.Path(folder, f)
                try:
                    if pattern.search(path.read_text(errors="replace")):
                        return pathlib.Path(os.path.normpath(path))
                except OSError:
                    continue
    return None
