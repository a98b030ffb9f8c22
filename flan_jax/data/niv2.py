"""Natural-Instructions v2 task files -> "definition + positive examples" prompts (function source).

A task spec reads one NIv2 JSON file through `type: function`:

    source: {type: function, fn: "flan_jax.data.niv2:examples",
             args: {path: niv2/sample/task001_example.json, num_positive: 2}}

Example (num_positive=1): Definition ["Answer with the capital city."], Positive Examples
[{"input": "France", "output": "Paris"}], instance {"id": "t1-9", "input": "Japan",
"output": ["Tokyo"]} -> {"id": "t1-9", "prompt": "Task: Answer with the capital city.\n\n
Solved example 1\nInput: France\nOutput: Paris\n\nYour turn\nInput: Japan\nOutput:",
"completion": "Tokyo"}. With num_positive=0 (zero-shot) only the definition precedes the
instance. Instances are split train / validation / test by a hash of their id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from flan_jax.data import sources
from flan_jax.specs import spec_dir

REQUIRED_KEYS = ("Definition", "Positive Examples", "Instances")
CLONE_ENV = "FLAN_JAX_NIV2_DIR"  # a clone of github.com/allenai/natural-instructions
STAND_IN = (
    f"a sample in NIv2's format, not NIv2: set ${CLONE_ENV} to a clone of "
    "github.com/allenai/natural-instructions"
)
SPLITS = ("train", "validation", "test")
# Flan 2022's input inversion for NIv2: this share of instances asks for an input given the
# definition and an output (the `niv2_instance` template set's inverted templates). Our choice.
INVERSION_SHARE = 0.1


@dataclasses.dataclass(frozen=True, kw_only=True)
class Instance:
    id: str
    input: str
    outputs: tuple[str, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class NIv2Task:
    """The parts of one NIv2 task file that prompts use (validated by `load_task_file`)."""

    path: str
    definition: str
    positives: tuple[tuple[str, str], ...]  # (input, output)
    instances: tuple[Instance, ...]


def resolve_path(path: str | pathlib.Path) -> pathlib.Path:
    """Expands $FLAN_JAX_DATA_DIR / `~`; a relative path resolves against the shipped tasks/."""
    resolved = sources.expand_path(str(path))
    return resolved if resolved.is_absolute() else spec_dir("tasks") / resolved


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {type(value).__name__} {value!r}")
    return value


def _parse_instance(raw: Any, where: str) -> Instance:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be an object with id/input/output, got {raw!r}")
    for key in ("id", "input", "output"):
        if key not in raw:
            raise ValueError(f"{where} has no {key!r} key; its keys are {sorted(raw)}")
    outputs = raw["output"]
    if isinstance(outputs, str) or not isinstance(outputs, Sequence) or not outputs:
        raise ValueError(f"{where}: 'output' must be a non-empty list of strings, got {outputs!r}")
    return Instance(
        id=_text(raw["id"], f"{where} 'id'"),
        input=_text(raw["input"], f"{where} 'input'"),
        outputs=tuple(_text(o, f"{where} 'output'") for o in outputs),
    )


def load_task_file(path: str | pathlib.Path) -> NIv2Task:
    """Reads and validates an NIv2 task JSON file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: malformed JSON, a missing key, or a bad example / instance (the message
            names the file and the index).
    """
    path = resolve_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIv2 task file {str(path)!r} does not exist; check `args.path`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: an NIv2 task file is a JSON object, got {type(data).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(
            f"{path}: missing key {missing[0]!r}; an NIv2 task file needs {list(REQUIRED_KEYS)}"
        )
    definition = data["Definition"]
    if isinstance(definition, str) or not isinstance(definition, list) or not definition:
        raise ValueError(f"{path}: 'Definition' must be a non-empty list of strings")
    positives = []
    for i, ex in enumerate(data["Positive Examples"]):
        where = f"{path}: 'Positive Examples'[{i}]"
        if not isinstance(ex, Mapping) or "input" not in ex or "output" not in ex:
            raise ValueError(f"{where} must be an object with 'input' and 'output', got {ex!r}")
        positives.append((_text(ex["input"], where), _text(ex["output"], where)))
    instances = [
        _parse_instance(raw, f"{path}: 'Instances'[{i}]") for i, raw in enumerate(data["Instances"])
    ]
    seen: dict[str, int] = {}
    for i, inst in enumerate(instances):
        if inst.id in seen:
            raise ValueError(
                f"{path}: 'Instances'[{i}] repeats id {inst.id!r} of 'Instances'[{seen[inst.id]}]; "
                "ids must be unique (the split is a hash of the id)"
            )
        seen[inst.id] = i
    return NIv2Task(
        path=str(path),
        definition="\n".join(_text(d, f"{path}: 'Definition'") for d in definition).strip(),
        positives=tuple(positives),
        instances=tuple(instances),
    )


def split_of(instance_id: str, validation_percent: int = 10, test_percent: int = 10) -> str:
    """Deterministic split of an instance: sha256(id) mod 100 -> test | validation | train."""
    bucket = int.from_bytes(hashlib.sha256(instance_id.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < test_percent:
        return "test"
    if bucket < test_percent + validation_percent:
        return "validation"
    return "train"


def _check_num_positive(task: NIv2Task, num_positive: int) -> None:
    if not 0 <= num_positive <= len(task.positives):
        raise ValueError(
            f"{task.path}: num_positive {num_positive} must be between 0 and the file's "
            f"{len(task.positives)} 'Positive Examples'; change `args.num_positive`"
        )


def render_prompt(task: NIv2Task, instance_input: str, num_positive: int) -> str:
    """Definition, then `num_positive` solved examples, then the instance to complete."""
    _check_num_positive(task, num_positive)
    parts = [f"Task: {task.definition}"]
    for k, (inp, out) in enumerate(task.positives[:num_positive], 1):
        parts.append(f"Solved example {k}\nInput: {inp}\nOutput: {out}")
    parts.append(f"Your turn\nInput: {instance_input}\nOutput:")
    return "\n\n".join(parts)


def examples(
    split: str,
    *,
    path: str,
    num_positive: int = 0,
    validation_percent: int = 10,
    test_percent: int = 10,
) -> list[dict[str, str]]:
    """The instances of `split` as {"id", "prompt", "completion"} (the first gold output),
    plus "definition" and "input" (what inverted templates ask for).

    Args:
        split: train, validation or test.
        path: the NIv2 task JSON file (see `resolve_path`).
        num_positive: solved positive examples shown before the instance (0: zero-shot).
        validation_percent, test_percent: shares of the id-hash buckets (0-100).
    """
    if split not in SPLITS:
        raise ValueError(f"NIv2 split {split!r} is not one of {SPLITS}")
    if not (
        0 <= validation_percent and 0 <= test_percent and validation_percent + test_percent < 100
    ):
        raise ValueError(
            f"validation_percent ({validation_percent}) + test_percent ({test_percent}) must be "
            "non-negative and below 100"
        )
    task = load_task_file(path)
    _check_num_positive(task, num_positive)
    return [
        {
            "id": inst.id,
            "prompt": render_prompt(task, inst.input, num_positive),
            "completion": inst.outputs[0],
            "definition": task.definition,
            "input": inst.input,
        }
        for inst in task.instances
        if split_of(inst.id, validation_percent, test_percent) == split
    ]


def clone_task_names(root: str | pathlib.Path) -> dict[str, list[str]]:
    """{"train": [...], "test": [...]}: NIv2's default split of its tasks, read from a clone
    (`splits/default/{train,test}_tasks.txt`, one task file name without `.json` per line)."""
    root = pathlib.Path(root).expanduser()
    out = {}
    for split in ("train", "test"):
        listing = root / "splits" / "default" / f"{split}_tasks.txt"
        if not listing.is_file():
            raise FileNotFoundError(
                f"${CLONE_ENV}={str(root)!r} has no {listing.relative_to(root)}; point it at a "
                "clone of github.com/allenai/natural-instructions"
            )
        out[split] = [x.strip() for x in listing.read_text().splitlines() if x.strip()]
    return out


def clone_task_specs(root: str | pathlib.Path, num_positive: int = 2) -> dict[str, list[dict]]:
    """Task specs for every task of a clone's default split, Flan 2022's two renderings each:
    definition only (`niv2_<task>`) and definition + `num_positive` positive examples
    (`niv2_<task>_pos<k>`). Returns {"train": specs, "test": specs} (NIv2's held-out tasks)."""
    root = pathlib.Path(root).expanduser()
    out: dict[str, list[dict]] = {}
    for split, names in clone_task_names(root).items():
        specs = []
        for task in names:
            path = root / "tasks" / f"{task}.json"
            base = "niv2_" + "".join(c if c.isalnum() else "_" for c in task)
            for k, name in ((0, base), (num_positive, f"{base}_pos{num_positive}")):
                specs.append(
                    {
                        "name": name,
                        "cluster": "niv2",
                        "source": {
                            "type": "function",
                            "fn": "flan_jax.data.niv2:examples",
                            "args": {"path": str(path), "num_positive": k},
                            "splits": list(SPLITS),
                        },
                        "fields": {f: f for f in ("prompt", "completion", "definition", "input")},
                        "templates": "niv2_instance",
                        "inversion_share": INVERSION_SHARE,
                        "formats": ["zs_noopt"],
                        "vocabulary": "t5",
                        "metrics": ["rouge"],
                    }
                )
        out[split] = specs
    return out
