"""The examples of a TaskSpec: read from its source, mapped to template fields, cached in memory;
split sizes counted or checked against the spec's recorded `num_examples`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from flan_jax.data import sources
from flan_jax.data.task_spec import TaskSpec

T = TypeVar("T")
_CACHE: dict[tuple[str, str], tuple[TaskSpec, Any]] = {}  # (task, key) -> (spec, value)
_LOCK = threading.Lock()


def cached(spec: TaskSpec, key: str, build: Callable[[], T]) -> T:
    """`build()` for (spec, key), computed once while an equal spec keeps the task's name."""
    with _LOCK:
        hit = _CACHE.get((spec.name, key))
    if hit is not None and hit[0] == spec:
        return hit[1]
    value = build()
    with _LOCK:
        _CACHE[(spec.name, key)] = (spec, value)
    return value


def iter_prepared(spec: TaskSpec, split: str) -> Iterator[dict[str, Any]]:
    """Yields the mapped examples of a split in stored order (strip, unescape, preprocessor)."""
    fn = None
    if spec.preprocessor:
        fn = sources.resolve_function(spec.preprocessor, base_dir=spec.base_dir)
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
    if spec.answer_index:
        out["answer"] = _option_at(spec, out, split, i)
    if spec.label_map and "answer" in out:
        if out["answer"] not in spec.label_map:
            raise ValueError(
                f"task {spec.name!r}, split {split!r}, example {i}: label {out['answer']!r} "
                f"is not in label_map {spec.label_map}"
            )
        out["answer"] = spec.label_map[out["answer"]]
    return out


def _option_at(spec: TaskSpec, out: Mapping[str, Any], split: str, i: int) -> str:
    """The option that the example's `answer` indexes (0-based; llm-foundry's `gold`)."""
    options = out[spec.options_field] if spec.options_field else spec.options
    where = f"task {spec.name!r}, split {split!r}, example {i}"
    try:
        index = int(out["answer"])
    except ValueError:
        raise ValueError(
            f"{where}: answer {out['answer']!r} is not an index into the options "
            "(`answer_index: true`)"
        ) from None
    if not 0 <= index < len(options):
        raise ValueError(f"{where}: answer index {index} is out of range for options {options}")
    return options[index]


def get_examples(spec: TaskSpec, split: str) -> Sequence[dict[str, Any]]:
    """The mapped examples of a split (template field -> value), cached in memory."""
    return cached(spec, split, lambda: tuple(iter_prepared(spec, split)))


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
    builder = sources.tfds_builder(spec.source)
    tfds_split = spec.source.splits[split]
    if builder.is_prepared() and tfds_split in builder.info.splits:
        return builder.info.splits[tfds_split].num_examples
    try:  # prepared without split metadata, or tfds.testing.mock_data
        dataset = builder.as_dataset(split=tfds_split)
    except AssertionError:  # TFDS's "could not find data in <data_dir>": nothing prepared
        return None
    n = int(dataset.cardinality())
    return n if n >= 0 else int(dataset.reduce(0, lambda count, _: count + 1))


def has_data(spec: TaskSpec, split: str) -> bool:
    """Whether `split`'s data is present here (prepared TFDS data, files, or a function)."""
    return split in spec.source.splits and _prepared_size(spec, split) is not None


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
    size = spec.few_shot.pool_size
    return cached(
        spec, "_pool", lambda: tuple(x for x, _ in zip(iter_prepared(spec, "train"), range(size)))
    )
