"""Raw example sources: JSONL/TSV/CSV files ($FLAN_JAX_DATA_DIR), TFDS, Python functions.

Every source yields plain dicts of source key -> value per split; tasks.py renders them.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib
import importlib.util
import json
import os
import pathlib
import random
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

from flan_jax.types import Example

DATA_DIR_ENV = "FLAN_JAX_DATA_DIR"
SOURCE_TYPES = ("jsonl", "tsv", "csv", "tfds", "function")
FILE_TYPES = ("jsonl", "tsv", "csv")
DEFAULT_FUNCTION_SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceSpec:
    """Where raw examples come from.

    Attributes:
        type: one of jsonl, tsv, csv, tfds, function.
        splits: split -> file path (files; may use $FLAN_JAX_DATA_DIR), split -> TFDS split
            (tfds), or split -> split (function).
        name: TFDS "name/config:version" (tfds only).
        data_dir: TFDS data dir (tfds only; default: TFDS's).
        fn: "module:function" called as fn(split, **args) -> list[dict] (function only).
        args: keyword arguments for fn.
        columns: column names of a headerless TSV/CSV (else the first row is the header).
        delimiter: overrides "\\t" (tsv) or "," (csv).
        split_ratio: split -> share of ONE file (`splits: path.jsonl`), e.g. {train: 0.9,
            validation: 0.1}: a seeded shuffle cut into disjoint splits of exact sizes.
        seed: the split_ratio shuffle's seed.
    """

    type: str
    splits: Mapping[str, str]
    name: str | None = None
    data_dir: str | None = None
    fn: str | None = None
    args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    columns: tuple[str, ...] | None = None
    delimiter: str | None = None
    split_ratio: Mapping[str, float] | None = None
    seed: int = 0

    def __post_init__(self):
        if self.type not in SOURCE_TYPES:
            raise ValueError(f"source type {self.type!r} is not one of {SOURCE_TYPES}")
        if not self.splits:
            raise ValueError(f"{self.type} source needs `splits:` (split -> path or split name)")
        if self.type == "tfds" and not self.name:
            raise ValueError('tfds source needs `name:` such as "super_glue/rte:1.0.2"')
        if self.type == "function" and (not self.fn or ":" not in self.fn):
            raise ValueError(f'function source needs `fn: "module:function"`, got {self.fn!r}')
        if self.type != "function" and self.fn:
            raise ValueError(f"`fn:` only applies to function sources, not {self.type!r}")
        if self.columns is not None and self.type not in ("tsv", "csv"):
            raise ValueError(f"`columns:` only applies to tsv/csv sources, not {self.type!r}")
        if self.split_ratio is not None:
            _check_split_ratio(self)


def _check_split_ratio(spec: SourceSpec) -> None:
    ratio = spec.split_ratio
    if spec.type not in FILE_TYPES or len(set(spec.splits.values())) != 1:
        raise ValueError(
            "`split_ratio:` splits one file: give `splits: path.jsonl` (one path) with a "
            f"jsonl/tsv/csv source; got {spec.type} splits {dict(spec.splits)}"
        )
    shares = list((ratio or {}).values())
    if not shares or any(not 0 < v <= 1 for v in shares) or abs(sum(shares) - 1) > 1e-6:
        raise ValueError(
            f"split_ratio {dict(ratio)} must give each split a share in (0, 1] summing to 1, "
            "e.g. {train: 0.9, validation: 0.1}"
        )


def split_sizes(n: int, ratio: Mapping[str, float]) -> dict[str, int]:
    """Exact split sizes summing to n: floors, then the largest remainders get one more.

    Example: n=11, {train: 0.9, validation: 0.1} -> {train: 10, validation: 1} (9.9 and 1.1
    floor to 9 and 1; the one left goes to train, the larger remainder; ties: the first).
    """
    raw = {k: n * v for k, v in ratio.items()}
    sizes = {k: int(v) for k, v in raw.items()}
    by_remainder = sorted(ratio, key=lambda k: (-(raw[k] - sizes[k]), list(ratio).index(k)))
    for k in by_remainder[: n - sum(sizes.values())]:
        sizes[k] += 1
    return sizes


def ratio_split_indices(n: int, ratio: Mapping[str, float], seed: int, split: str) -> list[int]:
    """The (sorted) example indices of `split` out of n: a seeded shuffle cut in order."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    start = 0
    for name, size in split_sizes(n, ratio).items():
        if name == split:
            return sorted(order[start : start + size])
        start += size
    raise ValueError(f"split {split!r} is not in split_ratio {dict(ratio)}")


def source_from_dict(data: Mapping[str, Any]) -> SourceSpec:
    """Builds a SourceSpec from its YAML mapping (function sources default their splits)."""
    data = dict(data)
    known = {f.name for f in dataclasses.fields(SourceSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown source key {unknown[0]!r}; known keys: {sorted(known)}")
    splits = data.get("splits")
    if data.get("split_ratio") is not None:
        data["split_ratio"] = {str(k): float(v) for k, v in dict(data["split_ratio"]).items()}
        if isinstance(splits, str):  # one file cut by ratio: every split reads it
            splits = {k: splits for k in data["split_ratio"]}
    if splits is None and data.get("type") == "function":
        splits = DEFAULT_FUNCTION_SPLITS
    if isinstance(splits, (list, tuple)):
        splits = {s: s for s in splits}
    data["splits"] = dict(splits or {})
    data["args"] = dict(data.get("args") or {})
    if data.get("columns") is not None:
        data["columns"] = tuple(data["columns"])
    return SourceSpec(**data)


def relative_to(source: Any, base_dir: str | None) -> Any:
    """File paths in a spec's source that are relative resolve against the spec's folder."""
    if not base_dir or not isinstance(source, Mapping):
        return source
    if source.get("type") not in FILE_TYPES:
        return source

    def resolve(path: str) -> str:
        return path if path.startswith(("$", "/", "~")) else str(pathlib.Path(base_dir) / path)

    if isinstance(source.get("splits"), str):
        return dict(source, splits=resolve(source["splits"]))
    if not isinstance(source.get("splits"), Mapping):
        return source
    return dict(source, splits={split: resolve(p) for split, p in source["splits"].items()})


def expand_path(path: str) -> pathlib.Path:
    """Expands `$FLAN_JAX_DATA_DIR` (and other variables, `~`) in a data file path."""
    if f"${DATA_DIR_ENV}" in path or f"${{{DATA_DIR_ENV}}}" in path:
        if not os.environ.get(DATA_DIR_ENV):
            raise FileNotFoundError(
                f"data file {path!r} uses ${DATA_DIR_ENV}, which is not set; "
                f"export {DATA_DIR_ENV}=/path/to/data (e.g. ../shared/data)"
            )
    return pathlib.Path(os.path.expanduser(os.path.expandvars(path)))


def resolve_function(ref: str, base_dir: str | None = None) -> Callable[..., Any]:
    """Imports "module:attr" (or "module.attr") and returns the attribute.

    A module that does not import is looked up as `<module>.py` in `base_dir` (the spec's
    folder), so a spec's preprocessor can live beside its YAML.
    """
    module_name, _, attr = ref.partition(":") if ":" in ref else ref.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{ref!r} must name a module and a function: 'my_module.my_function'")
    beside = pathlib.Path(base_dir or ".", *module_name.split(".")).with_suffix(".py")
    try:
        if base_dir and beside.is_file():
            module = _import_file(beside)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        where = f" (nor is there {str(beside)!r})" if base_dir else ""
        raise ValueError(f"cannot import module {module_name!r} of {ref!r}{where}: {e}") from None
    if not hasattr(module, attr):
        raise ValueError(f"module {module_name!r} has no attribute {attr!r} (from {ref!r})")
    return getattr(module, attr)


def _import_file(path: pathlib.Path) -> Any:
    """Imports a .py file as a module named after its path (once; reused after)."""
    name = "flan_jax_user_" + re.sub(r"\W", "_", str(path.resolve()))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def check_available(spec: SourceSpec, split: str) -> None:
    """Raises FileNotFoundError / ValueError when `split` cannot be read."""
    if split not in spec.splits:
        raise ValueError(f"split {split!r} is not in the source's splits {sorted(spec.splits)}")
    if spec.type in FILE_TYPES:
        path = expand_path(spec.splits[split])
        if not path.is_file():
            raise FileNotFoundError(
                f"data file {str(path)!r} (split {split!r}, spec path {spec.splits[split]!r}) "
                f"does not exist; check the path or ${DATA_DIR_ENV} "
                f"(now {os.environ.get(DATA_DIR_ENV)!r})"
            )


def data_available(spec: SourceSpec, split: str) -> bool:
    """Whether files exist for `split` (function and tfds sources count as available)."""
    try:
        check_available(spec, split)
    except (FileNotFoundError, ValueError):
        return False
    return True


def iter_examples(spec: SourceSpec, split: str) -> Iterator[Example]:
    """Yields the raw examples of `split` in their stored order.

    Raises:
        FileNotFoundError: the file is missing (names the path and $FLAN_JAX_DATA_DIR).
        ValueError: a malformed line (names the file and the 1-based line number).
    """
    check_available(spec, split)
    if spec.split_ratio is not None:
        everything = list(_iter_file(spec, split))
        keep = ratio_split_indices(len(everything), spec.split_ratio, spec.seed, split)
        yield from (everything[i] for i in keep)
    elif spec.type in FILE_TYPES:
        yield from _iter_file(spec, split)
    elif spec.type == "function":
        examples = resolve_function(spec.fn)(spec.splits[split], **spec.args)
        for i, example in enumerate(examples):
            if not isinstance(example, Mapping):
                raise ValueError(f"{spec.fn} returned a {type(example).__name__} at index {i}")
            yield dict(example)
    else:
        yield from _iter_tfds(spec, split)


def _iter_file(spec: SourceSpec, split: str) -> Iterator[Example]:
    path = expand_path(spec.splits[split])
    if spec.type == "jsonl":
        yield from (ex for _, ex in read_jsonl(path))
    else:
        yield from _iter_delimited(spec, path)


def read_jsonl(
    path: str | os.PathLike, *, opener: Callable[[str], IO[str]] | None = None
) -> Iterator[tuple[int, Example]]:
    """Yields (1-based line number, object) of a JSON Lines file; blank lines are skipped.

    `opener` opens `path` for reading text (default: `open` as UTF-8; `tf.io.gfile.GFile` for
    gs:// paths). Example: lines `{"a": 1}`, a blank line and `{"a": 2}` yield (1, {"a": 1})
    then (3, {"a": 2}).

    Raises:
        ValueError: a line is not JSON, or not a JSON object; the message names file:line, the
            JSON error and the start of the line.
    """
    opener = opener or functools.partial(open, encoding="utf-8")
    with opener(str(path)) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{lineno}: malformed JSON line ({e.msg} at column {e.colno}): "
                    f"{line.strip()[:80]!r}; write one JSON object a line"
                ) from None
            if not isinstance(example, dict):
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object, got {line.strip()[:80]!r}"
                )
            yield lineno, example


def _iter_delimited(spec: SourceSpec, path: pathlib.Path) -> Iterator[Example]:
    delimiter = spec.delimiter or ("\t" if spec.type == "tsv" else ",")
    quoting = csv.QUOTE_NONE if spec.type == "tsv" else csv.QUOTE_MINIMAL
    # utf-8-sig drops a byte-order mark (GLUE's MRPC header starts with one).
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        columns = spec.columns
        for row in reader:
            lineno = reader.line_num
            if columns is None:
                columns = tuple(row)
                continue
            if not row:
                continue
            if len(row) != len(columns):
                raise ValueError(
                    f"{path}:{lineno}: expected {len(columns)} columns {list(columns)}, "
                    f"got {len(row)}; fix the line or the spec's `columns:`"
                )
            yield dict(zip(columns, row))


# flan_jax's own TFDS builders, for datasets that tensorflow_datasets lacks (`qed`).
TFDS_BUILDER_MODULES = ("flan_jax.data.tfds_qed",)


def tfds_builder(spec: SourceSpec) -> Any:
    """`tfds.builder` of a tfds source, flan_jax's own builders registered first."""
    import tensorflow_datasets as tfds  # TensorFlow only when a TFDS source is read

    register_tfds_builders()
    return tfds.builder(spec.name, data_dir=spec.data_dir)


def register_tfds_builders() -> None:
    """Imports the modules of flan_jax's own TFDS builders (TFDS registers them on import)."""
    for module in TFDS_BUILDER_MODULES:
        importlib.import_module(module)


def tfds_unprepared(spec: SourceSpec) -> str | None:
    """None when the TFDS source's data is prepared; else `NAME in DIR` for a message."""
    builder = tfds_builder(spec)
    return None if builder.is_prepared() else f"{spec.name} in {builder.data_dir}"


def tfds_prepare_hint() -> str:
    """How to prepare TFDS data (flan_jax's own builders need their module imported)."""
    modules = ",".join(TFDS_BUILDER_MODULES)
    return (
        "prepare it with `tfds build NAME --data_dir DIR` (flan_jax's own builders also need "
        f"`--imports {modules}`), or train without the task"
    )


def _iter_tfds(spec: SourceSpec, split: str) -> Iterator[Example]:
    import seqio  # TensorFlow only when a TFDS source is read

    register_tfds_builders()
    source = seqio.TfdsDataSource(
        tfds_name=spec.name, tfds_data_dir=spec.data_dir, splits=dict(spec.splits)
    )
    try:  # data not prepared: TFDS downloads and prepares it, which can fail (no network)
        dataset = source.get_dataset(split, shuffle=False)
    except Exception as e:
        missing = tfds_unprepared(spec)
        if missing is None:
            raise
        why = str(e) if len(str(e)) <= 160 else str(e)[:157] + "..."
        raise ValueError(
            f"TFDS dataset {missing} is not prepared and preparing it failed "
            f"({type(e).__name__}: {why}); {tfds_prepare_hint()}"
        ) from e
    for example in dataset.as_numpy_iterator():
        yield {k: _to_python(v) for k, v in example.items()}


def _to_python(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    return value
