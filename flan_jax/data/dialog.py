"""Dialog JSONL (one {"turns": [{"speaker", "text"}, ...]} per line) -> next-turn examples.

A task spec reads it through `type: function`:

    source: {type: function, fn: "flan_jax.data.dialog:examples", splits: [train],
             args: {paths: {train: dialog/sample/dialogs.jsonl}, max_context_turns: 4}}

Every turn of a model speaker (default "assistant" or "system", any case) that has at least one
turn before it becomes an example. Example: turns [User: "Hi", Assistant: "Hello!", User: "Time?",
Assistant: "Noon."] -> {"context": "User: Hi\nAssistant:", "response": "Hello!"} and
{"context": "User: Hi\nAssistant: Hello!\nUser: Time?\nAssistant:", "response": "Noon."};
with max_context_turns=1 the second context is "User: Time?\nAssistant:".
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from flan_jax.data.niv2 import resolve_path
from flan_jax.data.sources import read_jsonl

DEFAULT_MODEL_SPEAKERS = ("assistant", "system")
Turn = tuple[str, str]  # (speaker, text)


def _parse_turns(record: Any, where: str) -> list[Turn]:
    if not isinstance(record, Mapping) or "turns" not in record:
        keys = sorted(record) if isinstance(record, Mapping) else type(record).__name__
        raise ValueError(f'{where}: expected an object with a "turns" list, got {keys}')
    turns = record["turns"]
    if not isinstance(turns, list) or not turns:
        raise ValueError(f'{where}: "turns" must be a non-empty list, got {turns!r}')
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or not {"speaker", "text"} <= set(turn):
            raise ValueError(
                f'{where}: turn {i} must be an object with "speaker" and "text", got {turn!r}'
            )
        speaker, text = turn["speaker"], turn["text"]
        if not isinstance(speaker, str) or not speaker.strip() or not isinstance(text, str):
            raise ValueError(
                f"{where}: turn {i} needs a non-empty string speaker and a string text, got "
                f"speaker {speaker!r}, text {text!r}"
            )
        out.append((speaker.strip(), text.strip()))
    return out


def read_dialogs(path: str | pathlib.Path) -> Iterator[tuple[int, list[Turn]]]:
    """Yields (1-based line number, turns) of a dialog JSONL file; blank lines are skipped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a malformed line (the message names file:line and the turn index).
    """
    path = resolve_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dialog file {str(path)!r} does not exist; check `args.paths`")
    for lineno, record in read_jsonl(path):
        yield lineno, _parse_turns(record, f"{path}:{lineno}")


def next_turn_examples(
    turns: Sequence[Turn], max_context_turns: int, model_speakers: Sequence[str]
) -> list[dict[str, str]]:
    """One {"context", "response"} per model turn, with up to `max_context_turns` turns before."""
    model = {s.lower() for s in model_speakers}
    out = []
    for i, (speaker, text) in enumerate(turns):
        if speaker.lower() not in model or i == 0:
            continue
        lines = [f"{s}: {t}" for s, t in turns[max(0, i - max_context_turns) : i]]
        out.append({"context": "\n".join([*lines, f"{speaker}:"]), "response": text})
    return out


def examples(
    split: str,
    *,
    paths: Mapping[str, str],
    max_context_turns: int = 8,
    model_speakers: Sequence[str] = DEFAULT_MODEL_SPEAKERS,
) -> list[dict[str, str]]:
    """The next-turn examples of `split`, in file order.

    Args:
        split: a key of `paths`.
        paths: split -> dialog JSONL file (see `niv2.resolve_path` for relative paths).
        max_context_turns: how many turns before the model's turn the context keeps (>= 1).
        model_speakers: speakers whose turns become targets (compared case-insensitively).
    """
    if split not in paths:
        raise ValueError(f"dialog split {split!r} has no file; `args.paths` has {sorted(paths)}")
    if not isinstance(max_context_turns, int) or max_context_turns < 1:
        raise ValueError(f"max_context_turns must be an int >= 1, got {max_context_turns!r}")
    if isinstance(model_speakers, str) or not model_speakers:
        raise ValueError(f"model_speakers must be a non-empty list, got {model_speakers!r}")
    out = []
    for _, turns in read_dialogs(paths[split]):
        out += next_turn_examples(turns, max_context_turns, model_speakers)
    return out
