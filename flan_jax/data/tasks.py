"""TaskSpec (YAML or Python) -> registered seqio Tasks, one per format: `<name>_<format>`.

Pipeline of every variant: source dicts -> field mapping (Python) -> render (Python, in memory;
few-shot pruned to the token budget in TF) -> seqio tokenize -> append EOS. Plain seqio
Tasks, usable by T5X as is.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import pathlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from flan_jax.data import formats as formats_lib
from flan_jax.data import sources
from flan_jax.data import templates as templates_lib
from flan_jax.data.vocab import get_vocabulary
from flan_jax.specs import spec_dir

TEMPLATE_DIR = "templates"  # tasks/templates/<name>.yaml are template sets, not tasks
_SPECS: dict[str, TaskSpec] = {}  # base name -> registered spec
_VARIANTS: dict[str, str] = {}  # variant name -> base name
_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """A declarative task (see docs/internals.md "Data contract" for every key).

    `templates` / `cot_templates` may be a set name, a list of template mappings or a
    TemplateSet; names resolve next to `base_dir` (the spec's folder), in its `templates/`
    subfolder, then in the shipped tasks/templates.
    """

    name: str
    cluster: str
    source: sources.SourceSpec
    fields: Mapping[str, str]
    templates: Any
    cot_templates: Any = None
    formats: tuple[str, ...] = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt")
    options: tuple[str, ...] | None = None
    options_field: str | None = None
    label_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    strip: Mapping[str, str] = dataclasses.field(default_factory=dict)
    unescape_newlines: bool = False
    preprocessor: str | None = None
    template_index: int | str = "all"
    template_assignment: str = "round_robin"
    options_style: str = "fixed"
    few_shot: formats_lib.FewShotConfig = formats_lib.FewShotConfig()
    seed: int = 0
    vocabulary: str = "t5"
    num_examples: Mapping[str, int] = dataclasses.field(default_factory=dict)
    metrics: tuple[str, ...] = ()
    postprocessor: str | None = None
    base_dir: str | None = None

    def __post_init__(self):
        _normalize(self)
        where = f"task {self.name!r}"
        if not self.name.isidentifier():
            raise ValueError(f"{where}: name must be an identifier ([A-Za-z0-9_])")
        bad = [f for f in self.formats if f not in formats_lib.FORMATS]
        if bad or not self.formats:
            raise ValueError(
                f"{where}: formats {list(self.formats)} must be in {formats_lib.FORMATS}"
            )
        if self.options and self.options_field:
            raise ValueError(f"{where}: give `options` or `options_field`, not both")
        if self.options_field and self.options_field not in self.fields:
            raise ValueError(f"{where}: options_field {self.options_field!r} is not in `fields`")
        if (self.options or self.options_field) and "answer" not in self.fields:
            raise ValueError(f"{where}: a task with options needs an `answer` field")
        if self.template_index != "all" and not isinstance(self.template_index, int):
            raise ValueError(f"{where}: template_index must be 'all' or an int")
        cot = [f for f in self.formats if f in formats_lib.COT_FORMATS]
        if cot and self.cot_templates is None:
            raise ValueError(f"{where}: formats {cot} need `cot_templates:`")
        self.render_settings(self.formats[0])  # validates assignment and options_style
        sets = [s for s in (self.templates, self.cot_templates) if s is not None]
        fields = set(self.fields) - {self.options_field}
        templates_lib.check_task_templates(self.name, fields, sets)
        for tset in sets:
            if isinstance(self.template_index, int) and not 0 <= self.template_index < len(tset):
                raise ValueError(
                    f"{where}: template_index {self.template_index} is out of range for set "
                    f"{tset.name!r} of {len(tset)} templates"
                )

    @property
    def variant_names(self) -> list[str]:
        return [f"{self.name}_{f}" for f in self.formats]

    @property
    def is_classification(self) -> bool:
        return bool(self.options or self.options_field)

    def render_settings(self, fmt: str) -> formats_lib.RenderSettings:
        tset = self.cot_templates if fmt in formats_lib.COT_FORMATS else self.templates
        return formats_lib.RenderSettings(
            task=self.name,
            format=fmt,
            templates=tset.templates,
            options=self.options,
            options_field=self.options_field,
            template_index=None if self.template_index == "all" else self.template_index,
            assignment=self.template_assignment,
            options_style=self.options_style,
            few_shot=self.few_shot,
            seed=self.seed,
        )


def _normalize(spec: TaskSpec) -> None:
    """Coerces YAML-friendly values (lists, dicts, set names) into their typed forms."""
    set_ = functools.partial(object.__setattr__, spec)
    if isinstance(spec.source, Mapping):
        set_("source", sources.source_from_dict(spec.source))
    if isinstance(spec.fields, (list, tuple)):
        set_("fields", {f: f for f in spec.fields})
    set_("fields", dict(spec.fields))
    set_("formats", tuple(spec.formats))
    set_("metrics", tuple(spec.metrics))
    if spec.options is not None:
        set_("options", tuple(str(o) for o in spec.options))
    set_("label_map", {str(k): str(v) for k, v in spec.label_map.items()})
    set_("num_examples", {str(k): int(v) for k, v in spec.num_examples.items()})
    if isinstance(spec.few_shot, Mapping):
        set_("few_shot", formats_lib.FewShotConfig(**spec.few_shot))
    for key in ("templates", "cot_templates"):
        value = getattr(spec, key)
        if value is not None:
            set_(key, _resolve_templates(value, spec, key))


def _resolve_templates(value: Any, spec: TaskSpec, key: str) -> templates_lib.TemplateSet:
    if isinstance(value, templates_lib.TemplateSet):
        return value
    try:
        if isinstance(value, str):
            dirs = [pathlib.Path(spec.base_dir)] if spec.base_dir else []
            dirs += [d / TEMPLATE_DIR for d in dirs] + [spec_dir("tasks") / TEMPLATE_DIR]
            return templates_lib.load_template_set(templates_lib.find_template_file(value, dirs))
        return templates_lib.template_set_from_dict({"templates": value}, name=f"{spec.name}.{key}")
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"task {spec.name!r}, {key}: {e}") from None


def task_spec_files(root: str | pathlib.Path | None = None) -> list[pathlib.Path]:
    """Every task YAML under `root` (default: shipped tasks/), template sets excluded."""
    root = pathlib.Path(root or spec_dir("tasks"))
    files = root.rglob("*.yaml")
    return sorted(p for p in files if TEMPLATE_DIR not in p.relative_to(root).parts[:-1])


def load_task_spec(spec: str | pathlib.Path | Mapping[str, Any]) -> TaskSpec:
    """Loads a TaskSpec from a YAML file path or a mapping (unknown keys are an error)."""
    base_dir = None
    if isinstance(spec, (str, pathlib.Path)):
        path = pathlib.Path(spec)
        data = templates_lib.read_yaml(path)
        if not isinstance(data, Mapping):
            raise ValueError(f"task spec {str(path)!r} must be a YAML mapping")
        base_dir = str(path.resolve().parent)
        where = str(path)
    else:
        data, where = spec, f"task spec {spec.get('name')!r}"
    known = {f.name for f in dataclasses.fields(TaskSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=3)
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; did you mean {close}?")
    missing = sorted({"name", "cluster", "source", "fields", "templates"} - set(data))
    if missing:
        raise ValueError(f"{where}: missing required key {missing[0]!r}")
    data = dict(data)
    data.setdefault("base_dir", base_dir)
    data["source"] = sources.relative_to(data["source"], data["base_dir"])
    try:
        return TaskSpec(**data)
    except (TypeError, ValueError, FileNotFoundError) as e:
        raise type(e)(f"{where}: {e}") from None


# ---------------------------------------------------------------------------------- examples


_EXAMPLES: dict[tuple[str, str], tuple[TaskSpec, tuple[dict[str, Any], ...]]] = {}


def _cached_examples(spec: TaskSpec, split: str) -> tuple[dict[str, Any], ...]:
    with _LOCK:
        cached = _EXAMPLES.get((spec.name, split))
    if cached is not None and cached[0] == spec:
        return cached[1]
    examples = tuple(_iter_prepared(spec, split))
    with _LOCK:
        _EXAMPLES[(spec.name, split)] = (spec, examples)
    return examples


def _iter_prepared(spec: TaskSpec, split: str):
    fn = sources.resolve_function(spec.preprocessor) if spec.preprocessor else None
    for i, raw in enumerate(sources.iter_examples(spec.source, split)):
        for key, suffix in spec.strip.items():
            if isinstance(raw.get(key), str):
                value = raw[key].strip()
                raw[key] = value[: -len(suffix)].strip() if value.endswith(suffix) else value
        if spec.unescape_newlines:
            raw = {k: v.replace("\\n", "\n") if isinstance(v, str) else v for k, v in raw.items()}
        if fn is not None:
            raw = fn(raw)
            if raw is None:
                continue
        yield _map_fields(spec, raw, split, i)


def _map_fields(spec: TaskSpec, raw: Mapping[str, Any], split: str, i: int) -> dict[str, Any]:
    out = {}
    for field, key in spec.fields.items():
        if key not in raw:
            raise ValueError(
                f"task {spec.name!r}, split {split!r}, example {i}: source has no key {key!r} "
                f"(for field {field!r}); its keys are {sorted(raw)}"
            )
        value = raw[key]
        out[field] = [str(v) for v in value] if field == spec.options_field else str(value)
    if spec.label_map and "answer" in out:
        if out["answer"] not in spec.label_map:
            raise ValueError(
                f"task {spec.name!r}, split {split!r}, example {i}: label {out['answer']!r} "
                f"is not in label_map {spec.label_map}"
            )
        out["answer"] = spec.label_map[out["answer"]]
    return out


def get_examples(spec: TaskSpec, split: str) -> Sequence[dict[str, Any]]:
    """The mapped examples of a split (template field -> value), cached in memory."""
    return _cached_examples(spec, split)


def count_examples(spec: TaskSpec, split: str = "train") -> int:
    """Counts examples when the data is there; else the spec's recorded `num_examples`."""
    if sources.data_available(spec.source, split) and spec.source.type != "tfds":
        return len(get_examples(spec, split))
    if split in spec.num_examples:
        return spec.num_examples[split]
    if spec.source.type == "tfds":
        return len(get_examples(spec, split))
    raise ValueError(
        f"task {spec.name!r}: split {split!r} data is missing and the spec records no "
        f"num_examples for it; add `num_examples: {{{split}: N}}` or provide the data"
    )


def _prepared_size(spec: TaskSpec, split: str) -> int | None:
    """The number of examples in the present data of a split (None when it is absent)."""
    if spec.source.type != "tfds":
        return (
            len(get_examples(spec, split)) if sources.data_available(spec.source, split) else None
        )
    import tensorflow_datasets as tfds  # noqa: PLC0415  (TFDS only for TFDS sources)

    builder = tfds.builder(spec.source.name, data_dir=spec.source.data_dir)
    tfds_split = spec.source.splits[split]
    if builder.is_prepared() and tfds_split in builder.info.splits:
        return builder.info.splits[tfds_split].num_examples
    try:  # prepared without split metadata, or tfds.testing.mock_data
        dataset = builder.as_dataset(split=tfds_split)
    except AssertionError:  # TFDS's "could not find data in <data_dir>": nothing prepared
        return None
    n = int(dataset.cardinality())
    return n if n >= 0 else int(dataset.reduce(0, lambda count, _: count + 1))


def check_recorded_sizes(spec: TaskSpec) -> dict[str, int]:
    """Checks the spec's recorded `num_examples` against the data where it is present.

    Returns split -> actual size for every recorded split whose data is present (splits with
    no data are skipped). Example: recorded {train: 2490} with 2490 prepared examples ->
    {"train": 2490}; with 10 -> ValueError naming the task, split, 2490 and 10.

    Raises:
        ValueError: a recorded size differs from the data (every mismatch is listed).
    """
    actual, mismatches = {}, []
    for split, recorded in spec.num_examples.items():
        if split not in spec.source.splits:
            mismatches.append(
                f"split {split!r}: recorded {recorded} but the source has no such split"
            )
            continue
        n = _prepared_size(spec, split)
        if n is None:
            continue
        actual[split] = n
        if n != recorded:
            mismatches.append(f"split {split!r}: recorded num_examples {recorded}, data has {n}")
    if mismatches:
        raise ValueError(
            f"task {spec.name!r}: {'; '.join(mismatches)}; update `num_examples:` in the spec "
            f"({spec.base_dir or 'Python spec'}) or re-prepare the data"
        )
    return actual


def get_pool(spec: TaskSpec) -> Sequence[dict[str, Any]]:
    """The few-shot exemplar pool: the first `few_shot.pool_size` train examples."""
    if spec.source.type != "tfds":
        return get_examples(spec, "train")[: spec.few_shot.pool_size]
    key = (spec.name, "_pool")
    with _LOCK:
        cached = _EXAMPLES.get(key)
    if cached is None or cached[0] != spec:
        it = _iter_prepared(spec, "train")
        cached = (spec, tuple(x for x, _ in zip(it, range(spec.few_shot.pool_size))))
        with _LOCK:
            _EXAMPLES[key] = cached
    return cached[1]


# ------------------------------------------------------------------------------------ seqio


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
    key = (spec.name, f"{split}:{fmt}")
    with _LOCK:
        cached = _EXAMPLES.get(key)
    if cached is not None and cached[0] == spec:
        return cached[1]
    rows = list(_render_rows(spec, fmt, split, get_examples(spec, split)))
    keys = rows[0].keys() if rows else _signature(spec, fmt).keys()
    columns = {k: [r[k] for r in rows] for k in keys}
    with _LOCK:
        _EXAMPLES[key] = (spec, columns)
    return columns


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
    """Source of one variant: examples rendered in Python in stored order (round-robin).

    File and function sources are rendered once and served from memory, fully shuffled when
    `shuffle_files` (seqio's `shuffle`); TFDS streams and relies on seqio's shuffle buffer.
    """
    signature = _signature(spec, fmt)
    if spec.source.type == "tfds":
        rows = lambda: _render_rows(spec, fmt, split, _iter_prepared(spec, split))
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
    dense = lambda ex: {k: tf.reshape(v, [-1]) if k in _LIST_KEYS else v for k, v in ex.items()}
    return ds.map(dense)


class RenderedSource(seqio.FunctionDataSource):
    """seqio's FunctionDataSource without its "uncached FunctionDataset" warning: in-memory
    splits are shuffled whole by `_rendered_dataset`."""

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **unused):
        del unused  # sequence_length, use_cached, num_epochs: unused, as in the parent
        if shard_info and shard_info.num_shards > 1:
            raise ValueError("RenderedSource does not shard itself; seqio shards after reading")
        return self._dataset_fn(split=split, shuffle_files=shuffle, seed=seed)


def _prune_few_shot(dataset, sequence_length=None, output_features=None, *, spec):
    """Drops trailing exemplars until the tokenized inputs (+ EOS) fit sequence_length["inputs"].

    Pure TF ops (no py_function), so a tf.data iterator over few-shot tasks can be
    checkpointed. Candidates with k = n-1, ..., 0 exemplars are joined exactly as
    `formats.join_few_shot` joins them; the first that fits wins (the query alone if none).
    """
    budget = (sequence_length or {}).get("inputs")
    vocab = output_features["inputs"].vocabulary
    separator = spec.few_shot.exemplar_separator
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
    from flan_jax import metrics  # noqa: PLC0415  (only tasks that evaluate need it)

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
        source = RenderedSource(
            functools.partial(_rendered_dataset, spec=spec, fmt=fmt),
            splits=list(spec.source.splits),
            caching_permitted=False,
        )
        preprocessors = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
        if fmt in formats_lib.FEW_SHOT_FORMATS:
            preprocessors.insert(0, functools.partial(_prune_few_shot, spec=spec))
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


def get_task_spec(name: str) -> TaskSpec:
    """The spec of a base task name or a variant name; unknown names list the closest ones."""
    if name in _SPECS:
        return _SPECS[name]
    if name in _VARIANTS:
        return _SPECS[_VARIANTS[name]]
    raise unknown_name_error("task", name, list(_SPECS) + list(_VARIANTS))


def unknown_name_error(kind: str, name: str, known: Sequence[str]) -> ValueError:
    """A ValueError naming the unknown name and the closest known ones (difflib)."""
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    hint = f"closest: {close}" if close else f"{len(known)} {kind}s are registered"
    return ValueError(f"unknown {kind} {name!r}; {hint}")
