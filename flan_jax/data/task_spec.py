"""TaskSpec: the declarative task (YAML or Python), its validation and YAML loading.

flan_jax.data.task_examples reads a spec's examples; flan_jax.data.tasks turns it into seqio
Tasks, one per format (`<name>_<format>`), and registers them.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import pathlib
from collections.abc import Mapping
from typing import Any

from flan_jax.data import formats as formats_lib
from flan_jax.data import sources
from flan_jax.data import templates as templates_lib
from flan_jax.specs import spec_dir

TEMPLATE_DIR = "templates"  # tasks/templates/<name>.yaml are template sets, not tasks


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
    answer_index: bool = False
    label_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    strip: Mapping[str, str] = dataclasses.field(default_factory=dict)
    unescape_newlines: bool = False
    preprocessor: str | None = None
    template_index: int | str = "all"
    template_assignment: str = "round_robin"
    options_style: str = "fixed"
    few_shot: formats_lib.FewShotConfig = formats_lib.FewShotConfig()
    seed: int = 0
    output_separators: tuple[str, ...] = ()  # OPT-IML: one drawn per example (formats.py)
    inversion_share: float | None = None  # Flan 2022 input inversion (formats.choose_template)
    vocabulary: str = "t5"
    num_examples: Mapping[str, int] = dataclasses.field(default_factory=dict)
    metrics: tuple[str, ...] = ()
    postprocessor: str | None = None
    stand_in_for: str | None = None  # a sample file standing in for a corpus: how to get it
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
        if self.answer_index and not (self.options or self.options_field):
            raise ValueError(
                f"{where}: `answer_index: true` picks the answer from the options by index; "
                "give `options_field:` (a list per example) or `options:`"
            )
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
            output_separators=tuple(self.output_separators)
            if not isinstance(self.output_separators, str)
            else self.output_separators,
            inversion_share=self.inversion_share,
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
