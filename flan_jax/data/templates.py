"""Instruction templates as data: Template / TemplateSet, YAML loading, strict rendering.

A template is an (inputs, targets) pair of `str.format`-style strings with `{field}`
placeholders (`{{` and `}}` are literal braces); a set is validated before any task uses it.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

OPTIONS_FIELD = "options_"  # where the options block goes; "" in the *_noopt formats
_FORMATTER = string.Formatter()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Template:
    """One (inputs, targets) template; `inverted` ones ask for the input given the answer."""

    inputs: str
    targets: str
    inverted: bool = False

    def __post_init__(self):
        for part in ("inputs", "targets"):
            value = getattr(self, part)
            if not isinstance(value, str):
                raise TypeError(f"Template.{part} must be a str, got {type(value).__name__}")
            placeholders(value)  # a malformed format string fails here, not at render time

    @property
    def fields(self) -> frozenset[str]:
        """Every placeholder used by inputs or targets."""
        return placeholders(self.inputs) | placeholders(self.targets)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TemplateSet:
    """A named list of templates and the fields each of them may use (each used somewhere)."""

    name: str
    fields: tuple[str, ...]
    templates: tuple[Template, ...]

    def __post_init__(self):
        if not self.templates:
            raise ValueError(f"template set {self.name!r} is empty: give at least one template")
        allowed = set(self.fields) | {OPTIONS_FIELD}
        for idx, template in enumerate(self.templates):
            unknown = sorted(template.fields - allowed)
            if unknown:
                raise ValueError(
                    f"template set {self.name!r}, template {idx}: placeholder {{{unknown[0]}}} "
                    f"is not a field of the set {sorted(self.fields)}; add it to `fields:` or "
                    "fix the template"
                )
        used = set().union(*(t.fields for t in self.templates))
        for field in self.fields:
            if field not in used:
                raise ValueError(
                    f"template set {self.name!r}: field {field!r} is declared but no template "
                    "uses it; use it in a template or remove it from `fields:`"
                )

    def __len__(self) -> int:
        return len(self.templates)


@functools.lru_cache(maxsize=1 << 16)  # parsed once per template: render() asks every example
def placeholders(text: str) -> frozenset[str]:
    """The `{field}` names in `text` (`{{`/`}}` are escapes, not placeholders).

    Example: `placeholders("Q: {question}\\n{{not a field}}")` -> `{"question"}`.
    """
    names = set()
    try:
        parsed = list(_FORMATTER.parse(text))
    except ValueError as e:
        raise ValueError(
            f"malformed template {text!r}: {e}; write a literal brace as {{{{ or }}}}"
        ) from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            suffix = ("!" + conversion if conversion else "") + (":" + spec if spec else "")
            raise ValueError(
                f"template {text!r} has placeholder {{{name}{suffix}}}; only plain {{field}} "
                "names are allowed"
            )
        names.add(name)
    return frozenset(names)


def render(text: str, values: Mapping[str, str]) -> str:
    """Fills the placeholders of `text` from `values`; a missing value is a KeyError naming it.

    Example: `render("{a} + {b} = ?", {"a": "2", "b": "3"})` -> `"2 + 3 = ?"`.
    """
    missing = sorted(placeholders(text) - set(values))
    if missing:
        raise KeyError(
            f"template {text!r} needs field {missing[0]!r}; example has {sorted(values)}"
        )
    return text.format_map(values)


def template_set_from_dict(data: Mapping[str, Any], *, name: str) -> TemplateSet:
    """Builds a TemplateSet from `{fields: [...], templates: [{inputs, targets, inverted?}]}`."""
    if not isinstance(data, Mapping) or "templates" not in data:
        raise ValueError(
            f"template set {name!r} must be a mapping with `templates:` (and `fields:`)"
        )
    unknown = sorted(set(data) - {"name", "fields", "templates"})
    if unknown:
        raise ValueError(f"template set {name!r}: unknown key {unknown[0]!r}")
    templates = templates_from_list(data["templates"] or [], name=name)
    fields = data.get("fields")
    if fields is None:
        used = set().union(*(t.fields for t in templates)) if templates else set()
        fields = sorted(used - {OPTIONS_FIELD})
    return TemplateSet(name=name, fields=tuple(fields), templates=templates)


def templates_from_list(items: Sequence[Any], *, name: str) -> tuple[Template, ...]:
    """Converts a list of `{inputs, targets, inverted?}` mappings (or Templates) to Templates."""
    result = []
    for idx, item in enumerate(items):
        if isinstance(item, Template):
            result.append(item)
            continue
        if not isinstance(item, Mapping) or not {"inputs", "targets"} <= set(item):
            raise ValueError(
                f"template set {name!r}, template {idx}: expected a mapping with `inputs` and "
                f"`targets`, got {item!r}"
            )
        extra = sorted(set(item) - {"inputs", "targets", "inverted"})
        if extra:
            raise ValueError(f"template set {name!r}, template {idx}: unknown key {extra[0]!r}")
        try:
            result.append(Template(**item))
        except (ValueError, TypeError) as e:
            raise ValueError(f"template set {name!r}, template {idx}: {e}") from None
    return tuple(result)


def read_yaml(path: str | pathlib.Path) -> Any:
    """Parses a YAML file with libyaml's fast safe loader when available."""
    with open(path) as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_template_set(path: str | pathlib.Path) -> TemplateSet:
    """Loads a template set YAML file (cached while the file is unchanged); name: file stem."""
    path = pathlib.Path(path).resolve()
    return _load_template_set(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _load_template_set(path: pathlib.Path, mtime_ns: int) -> TemplateSet:
    del mtime_ns  # part of the cache key only
    return template_set_from_dict(read_yaml(path) or {}, name=path.stem)


def find_template_file(name: str, search_dirs: Iterable[pathlib.Path]) -> pathlib.Path:
    """Finds `<name>.yaml` in `search_dirs` (first match) or raises naming every place looked."""
    if name.endswith((".yaml", ".yml")) and pathlib.Path(name).is_file():
        return pathlib.Path(name)
    tried = []
    for directory in search_dirs:
        candidate = pathlib.Path(directory) / (name if name.endswith(".yaml") else f"{name}.yaml")
        if candidate.is_file():
            return candidate
        tried.append(str(candidate))
    raise FileNotFoundError(f"template set {name!r} not found; looked for {tried}")


def check_task_templates(
    task: str, task_fields: Iterable[str], sets: Sequence[TemplateSet]
) -> None:
    """Validates template sets against a task: placeholders exist, every task field is used.

    Raises:
        ValueError: naming the task, the set, the template index and the field.
    """
    task_fields = set(task_fields)
    allowed = task_fields | {OPTIONS_FIELD}
    for tset in sets:
        for idx, template in enumerate(tset.templates):
            for field in sorted(template.fields - allowed):
                raise ValueError(
                    f"task {task!r}: template {idx} of set {tset.name!r} uses {{{field}}}, which "
                    f"is not a task field {sorted(task_fields)}; map it in the spec's `fields:` "
                    "or fix the template"
                )
    used = set().union(*(t.fields for s in sets for t in s.templates))
    for field in sorted(task_fields - used):
        raise ValueError(
            f"task {task!r}: field {field!r} is never used by template set(s) "
            f"{[s.name for s in sets]}; use it in a template or drop it from the spec's `fields:`"
        )
