"""Prompt formats: zero-shot with/without options, few-shot, chain-of-thought (pure Python).

Rendering is deterministic: every random choice comes from a (seed, task, split, index) stream.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence

from flan_jax.data.templates import OPTIONS_FIELD, Template, render

FORMATS = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt", "cot", "fs_cot")
COT_FORMATS = ("cot", "fs_cot")
FEW_SHOT_FORMATS = ("fs_opt", "fs_noopt", "fs_cot")
NOOPT_FORMATS = ("zs_noopt", "fs_noopt")
RANK_FORMATS = ("zs_opt", "fs_opt")  # formats whose `options` feature lists scorable targets
ASSIGNMENTS = ("round_robin", "random")
OPTIONS_STYLES = ("fixed", "random")
# OPT-IML's choice of what joins an instruction to its output, drawn per example when a task
# sets `output_separators` (e.g. OPT_IML_SEPARATORS).
OPT_IML_SEPARATORS = ("\n", "\n\n", " ", "\nOutput:", "\nAnswer:", "\nA:")

FIXED_HEADER = "OPTIONS:"
OPTION_HEADERS = (
    "OPTIONS:",
    "Options:",
    "Choose your answer from:",
    "Pick your answer from:",
    "Possible answers:",
    "Select from the following.",
    "Available choices:",
)
# Marker makers: index -> marker. Letter/number markers also become the target ("(B)").
OPTION_MARKERS: tuple[tuple[Callable[[int], str], bool], ...] = (
    (lambda i: "-", False),
    (lambda i: "*", False),
    (lambda i: f"({chr(65 + i)})", True),
    (lambda i: f"{chr(65 + i)}.", True),
    (lambda i: f"({chr(97 + i)})", True),
    (lambda i: f"({i + 1})", True),
    (lambda i: f"{i + 1}.", True),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FewShotConfig:
    """How few-shot inputs are assembled: exemplars, prefixes and separators."""

    num_exemplars: int = 3
    exemplar_separator: str = "\n\n"
    input_target_separator: str = "\n"
    inputs_prefix: str = ""
    targets_prefix: str = ""
    pool_size: int = 1000  # how many train examples (from the start) exemplars come from
    definition: str = ""  # OPT-IML / NIv2: the task's definition, first, before the exemplars

    def __post_init__(self):
        if self.num_exemplars < 1:
            raise ValueError(f"few_shot.num_exemplars must be >= 1, got {self.num_exemplars}")
        if self.pool_size < 2:
            raise ValueError(f"few_shot.pool_size must be >= 2, got {self.pool_size}")


@dataclasses.dataclass(frozen=True)
class OptionStyle:
    """One drawn options layout: header and per-index markers (None: target is the option)."""

    header: str
    marker: Callable[[int], str]
    target_is_marker: bool


FIXED_STYLE = OptionStyle(FIXED_HEADER, lambda i: "-", False)


def draw_option_style(style: str, rng: random.Random) -> OptionStyle:
    """The fixed FLAN layout, or a header and marker drawn from `rng` ("random")."""
    if style == "fixed":
        return FIXED_STYLE
    marker, is_label = OPTION_MARKERS[rng.randrange(len(OPTION_MARKERS))]
    return OptionStyle(OPTION_HEADERS[rng.randrange(len(OPTION_HEADERS))], marker, is_label)


def options_block(options: Sequence[str], style: OptionStyle = FIXED_STYLE) -> str:
    """Example: `options_block(["yes", "no"])` -> `"OPTIONS:\\n- yes\\n- no"`."""
    return "\n".join([style.header] + [f"{style.marker(i)} {o}" for i, o in enumerate(options)])


def pick_template(index: int, num_templates: int, assignment: str, rng: random.Random) -> int:
    """Round-robin (example i gets template i % n, as FLAN) or a draw from the example's rng."""
    if assignment == "round_robin":
        return index % num_templates
    return rng.randrange(num_templates)


def is_inverted(seed: int, task: str, split: str, index: int, share: float) -> bool:
    """Whether example `index` is asked the other way round (Flan 2022's input inversion).

    Its own stream (not `example_rng`'s), so a share of 0 renders exactly as no share does.
    Example: share 0.1 over many examples inverts about one in ten, the same ones every run.
    """
    return share > 0 and random.Random(f"{seed}:{task}:{split}:{index}:invert").random() < share


def choose_template(s: RenderSettings, index: int, split: str, rng: random.Random) -> int:
    """The template of example `index`: fixed, rotated over all templates, or (with an
    `inversion_share`) rotated over the inverted ones for that share and the forward ones else."""
    if s.template_index is not None:
        return s.template_index
    if s.inversion_share is None:
        return pick_template(index, len(s.templates), s.assignment, rng)
    inverted = is_inverted(s.seed, s.task, split, index, s.inversion_share)
    group = [i for i, t in enumerate(s.templates) if t.inverted == inverted]
    return group[pick_template(index, len(group), s.assignment, rng)]


def example_rng(seed: int, task: str, split: str, index: int) -> random.Random:
    """The per-example random stream: the same (seed, task, split, index) gives the same draws."""
    return random.Random(f"{seed}:{task}:{split}:{index}")


def render_zero_shot(
    example: Mapping[str, str],
    template: Template,
    *,
    options: Sequence[str] | None,
    with_options: bool,
    style: OptionStyle = FIXED_STYLE,
) -> tuple[str, str, list[str]]:
    """Renders one example with one template.

    Example: template `{premise}\\nIs "{hypothesis}" true?\\n{options_}`, options ["yes", "no"],
    `{"premise": "Ann is 9.", "hypothesis": "Ann is 9.", "answer": "yes"}` -> inputs
    `'Ann is 9.\\nIs "Ann is 9." true?\\nOPTIONS:\\n- yes\\n- no'`, targets `'yes'`.

    Returns:
        (inputs, targets, scorable_targets): the last lists the target each option would give
        (for rank classification); empty for inverted templates and tasks without options.
    """
    values = dict(example)
    inputs_text, targets_text = template.inputs, template.targets
    scorable: list[str] = []
    if options and with_options:
        values[OPTIONS_FIELD] = options_block(options, style)
        if OPTIONS_FIELD not in template.fields and not template.inverted:
            inputs_text = inputs_text + "\n\n{" + OPTIONS_FIELD + "}"
    else:
        values[OPTIONS_FIELD] = ""
    target_values = values
    if options and with_options and style.target_is_marker and "answer" in values:
        if values["answer"] not in options:
            raise ValueError(f"answer {values['answer']!r} is not one of the options {options}")
        target_values = dict(values, answer=style.marker(list(options).index(values["answer"])))
    inputs = render(inputs_text, values)
    if not with_options:
        inputs = inputs.strip()
    targets = render(targets_text, target_values)
    if options and not template.inverted:
        labels = [style.marker(i) if style.target_is_marker else o for i, o in enumerate(options)]
        scorable = [render(targets_text, dict(target_values, answer=lab)) for lab in labels]
    return inputs, targets, scorable


def few_shot_parts(
    exemplars: Sequence[tuple[str, str]], inputs: str, config: FewShotConfig
) -> tuple[list[str], str]:
    """The exemplar blocks and the final query block, each with its prefixes."""
    c = config
    query = c.inputs_prefix + inputs
    if c.targets_prefix:
        query += c.input_target_separator + c.targets_prefix.rstrip()
    shots = [
        f"{c.inputs_prefix}{x}{c.input_target_separator}{c.targets_prefix}{y}" for x, y in exemplars
    ]
    return shots, query


def join_few_shot(
    shots: Sequence[str],
    query: str,
    config: FewShotConfig,
    fits: Callable[[str], bool] | None = None,
) -> str:
    """Joins exemplar blocks before the query, dropping the last ones until `fits(text)` holds
    (or none is left).

    Example (defaults): shots `["1+1?\n2"]`, query `"2+2?"` -> `"1+1?\n2\n\n2+2?"`; with
    `definition="Add."`: `"Add.\n\n1+1?\n2\n\n2+2?"` (the definition is never dropped).
    """
    shots = list(shots)
    head = [config.definition] if config.definition else []
    while True:
        text = config.exemplar_separator.join(head + shots + [query])
        if not shots or fits is None or fits(text):
            return text
        shots.pop()


def draw_exemplars(
    pool: Sequence[Mapping[str, str]],
    example: Mapping[str, str],
    k: int,
    rng: random.Random,
    *,
    exclude_index: int | None = None,
) -> list[Mapping[str, str]]:
    """Draws up to `k` pool examples, never the example itself (by index or by content)."""
    draw = rng.sample(range(len(pool)), min(len(pool), k + 1))
    chosen = [pool[i] for i in draw if i != exclude_index and pool[i] != example]
    return chosen[:k]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RenderSettings:
    """Everything that decides how one task variant renders its examples."""

    task: str  # the base task name (seeds the per-example random stream)
    format: str
    templates: Sequence[Template]
    options: Sequence[str] | None = None
    options_field: str | None = None
    template_index: int | None = None  # None: all templates, assigned per example
    assignment: str = "round_robin"
    options_style: str = "fixed"
    few_shot: FewShotConfig = FewShotConfig()
    seed: int = 0
    output_separators: Sequence[str] = ()  # () : none; else one drawn per example
    # None: inverted templates rotate with the others (FLAN 2021). A share in [0, 1]: that
    # share of examples (seeded per example) gets an inverted template, the rest forward ones.
    inversion_share: float | None = None

    def __post_init__(self):
        if self.inversion_share is not None:
            _check_inversion(self.inversion_share, self.templates, self.task)
        if isinstance(self.output_separators, str):
            raise ValueError(
                f"output_separators must be a list of strings, got the string "
                f"{self.output_separators!r}; write [{self.output_separators!r}]"
            )
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not one of {FORMATS}")
        if self.assignment not in ASSIGNMENTS:
            raise ValueError(f"template_assignment {self.assignment!r} not in {ASSIGNMENTS}")
        if self.options_style not in OPTIONS_STYLES:
            raise ValueError(f"options_style {self.options_style!r} not in {OPTIONS_STYLES}")


def _check_inversion(share: float, templates: Sequence[Template], task: str) -> None:
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"task {task!r}: inversion_share must be in [0, 1], got {share}")
    kinds = {t.inverted for t in templates}
    if share > 0 and True not in kinds:
        raise ValueError(
            f"task {task!r}: inversion_share {share} needs templates with `inverted: true` "
            f"(output -> input); its {len(templates)} templates have none"
        )
    if share < 1 and False not in kinds:
        raise ValueError(
            f"task {task!r}: inversion_share {share} < 1 needs forward templates too; "
            f"all {len(templates)} templates are inverted"
        )


@dataclasses.dataclass(frozen=True)
class Rendered:
    """One rendered example: strings for the model plus metadata."""

    inputs: str
    targets: str
    template_idx: int
    template_type: str
    options: list[str]
    shots: list[str] = dataclasses.field(default_factory=list)  # few-shot exemplar blocks
    query: str = ""  # few-shot: the final block (inputs == join_few_shot(shots, query))


def render_example(
    example: Mapping[str, object],
    index: int,
    split: str,
    settings: RenderSettings,
    *,
    pool: Sequence[Mapping[str, object]] = (),
    fits: Callable[[str], bool] | None = None,
) -> Rendered:
    """Renders example `index` of `split` in `settings.format` (deterministic from the seed).

    Args:
        example: template field -> string (a list of strings under `options_field`).
        index: position of the example in its split (round-robin and the random stream).
        split: the split name (seeds the random stream; "train" excludes index from exemplars).
        settings: the variant's settings.
        pool: train examples that few-shot exemplars are drawn from.
        fits: whether an assembled few-shot input fits the inputs token budget.
    """
    s = settings
    rng = example_rng(s.seed, s.task, split, index)
    idx = choose_template(s, index, split, rng)
    template = s.templates[idx]
    style = draw_option_style(s.options_style, rng)
    with_options = s.format not in NOOPT_FORMATS

    def one(ex: Mapping[str, object]) -> tuple[str, str, list[str]]:
        options = list(ex[s.options_field]) if s.options_field else s.options
        values = {k: v for k, v in ex.items() if k != s.options_field}
        return render_zero_shot(
            values, template, options=options, with_options=with_options, style=style
        )

    inputs, targets, scorable = one(example)
    shots, query = [], ""
    if s.format in FEW_SHOT_FORMATS:
        exclude = index if split == "train" else None
        chosen = draw_exemplars(pool, example, s.few_shot.num_exemplars, rng, exclude_index=exclude)
        few_shot = _with_separator(s, rng)
        shots, query = few_shot_parts([one(x)[:2] for x in chosen], inputs, few_shot)
        query += _query_separator(few_shot, s)
        inputs = join_few_shot(shots, query, few_shot, fits)
    elif s.output_separators:
        inputs += s.output_separators[rng.randrange(len(s.output_separators))]
    kind = s.format + ("_inverted" if template.inverted else "")
    scorable = scorable if s.format in RANK_FORMATS else []
    return Rendered(inputs, targets, idx, kind, scorable, shots, query)


def _with_separator(s: RenderSettings, rng: random.Random) -> FewShotConfig:
    """The few-shot config with this example's drawn output separator (drawn last, so tasks
    without output_separators render exactly as before)."""
    if not s.output_separators:
        return s.few_shot
    sep = s.output_separators[rng.randrange(len(s.output_separators))]
    return dataclasses.replace(s.few_shot, input_target_separator=sep)


def _query_separator(few_shot: FewShotConfig, s: RenderSettings) -> str:
    """The drawn separator also ends the query (the model writes the output after it), unless
    a targets_prefix already ends it."""
    return (
        few_shot.input_target_separator
        if s.output_separators and not few_shot.targets_prefix
        else ""
    )
