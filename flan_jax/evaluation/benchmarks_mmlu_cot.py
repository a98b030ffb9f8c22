"""MMLU with chain of thought: zero-shot, and few-shot from a user-supplied exemplar file.

Flan-PaLM's MMLU chain-of-thought exemplars are not public here, so few-shot CoT reads the
exemplars from a JSONL file of your own (path in $FLAN_JAX_MMLU_COT_EXEMPLARS, or the
`exemplars` argument of `register`), one exemplar a line:

  {"subject": "astronomy", "question": "...", "choices": ["...", "...", "...", "..."],
   "rationale": "... reasoning, without the final answer ...", "answer": "C"}

`subject` is an MMLU subject (file name stem, e.g. "high_school_physics"); exemplars are used
in file order, at most `shots` (5) of the test question's subject. Tasks (split `test`,
target the letter, read by `mmlu_cot_letter`):
  `mmlu_<subject>_0shot_cot`, mixture `mmlu_0shot_cot`;
  `mmlu_<subject>_5shot_cot`, mixture `mmlu_5shot_cot` (needs the exemplar file).
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any

import seqio

from flan_jax.evaluation import benchmarks
from flan_jax.metrics import choice_letter
from flan_jax.metrics.postprocessors import answer_after_marker

EXEMPLARS_ENV = "FLAN_JAX_MMLU_COT_EXEMPLARS"
# Our own wording of "think step by step", and the closing sentence the exemplars model.
COT_CUE = "Answer: Let's work it out one step at a time."
_KEYS = {"subject": str, "question": str, "choices": list, "rationale": str, "answer": str}
_PAREN_LETTER = re.compile(r"\(([A-D])\)")


def mmlu_cot_letter(text: str, example: Any = None, is_target: bool = False) -> str:
    """A-D from a chain of thought: after "the answer is", else the last "(X)", else as
    `choice_letter`: "... so (A) is out. So the answer is (C)." -> "C"; "(B) fits." -> "B"."""
    if answer_after_marker(text) is None:
        found = _PAREN_LETTER.findall(text)
        if found:
            return found[-1]
    return choice_letter(text)


def load_cot_exemplars(path: str) -> dict[str, list[dict]]:
    """Reads and checks the exemplar JSONL; returns subject -> exemplars in file order."""
    by_subject: dict[str, list[dict]] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg})") from e
            wrong = [k for k, t in _KEYS.items() if not isinstance(row.get(k), t)]
            if not isinstance(row, dict) or wrong:
                raise ValueError(
                    f"{where}: expected keys {list(_KEYS)} (choices a list of 4 strings, "
                    f"answer A-D); bad or missing: {wrong}"
                )
            if row["subject"] not in benchmarks.MMLU_CATEGORIES:
                raise ValueError(f"{where}: unknown MMLU subject {row['subject']!r}")
            if len(row["choices"]) != 4 or row["answer"] not in benchmarks.LETTERS:
                raise ValueError(f"{where}: needs 4 choices and an answer A-D, got {row!r:.120}")
            by_subject.setdefault(row["subject"], []).append(row)
    return by_subject


def _exemplar_path(exemplars: str | None) -> str:
    path = exemplars or os.environ.get(EXEMPLARS_ENV, "")
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"MMLU few-shot CoT exemplar file {path!r} not found; set ${EXEMPLARS_ENV} to a "
            "JSONL file of {subject, question, choices, rationale, answer} (docs/evaluation.md)"
        )
    return path


def mmlu_cot_examples(
    split: str,
    *,
    subject: str,
    shots: int,
    exemplars: str | None = None,
    root: str | None = None,
) -> list[benchmarks.Example]:
    """MMLU test questions of one subject ending in `COT_CUE`, after `shots` CoT exemplars."""
    base = os.path.join(benchmarks.data_dir(root), "mmlu", "data", "mmlu")
    rows = benchmarks.load_mmlu_csv(os.path.join(base, split, f"{subject}_{split}.csv"))
    topic = subject.replace("_", " ")
    prefix = f"The following are multiple choice questions (with answers) about {topic}.\n\n"
    if shots:
        path = _exemplar_path(exemplars)
        shots_rows = load_cot_exemplars(path).get(subject, [])[:shots]
        if not shots_rows:
            raise ValueError(f"{path}: no exemplar for MMLU subject {subject!r}")
        for r in shots_rows:
            question = benchmarks.mmlu_question(r)[: -len("Answer:")]
            chain = f"{r['rationale'].strip()} So the answer is ({r['answer']})."
            prefix += f"{question}{COT_CUE} {chain}\n\n"
    return [
        {
            "inputs": prefix + benchmarks.mmlu_question(r)[: -len("Answer:")] + COT_CUE,
            "targets": r["answer"],
        }
        for r in rows
    ]


def task_names(shots: int) -> list[str]:
    return [f"mmlu_{s}_{shots}shot_cot" for s in benchmarks.MMLU_SUBJECTS]


def register(
    vocabulary: seqio.Vocabulary | None = None,
    root: str | None = None,
    exemplars: str | None = None,
) -> list[str]:
    """Registers `mmlu_<subject>_{0,5}shot_cot` and mixtures `mmlu_{0,5}shot_cot`.

    The exemplar file is read when a 5-shot dataset is built (`exemplars`, else
    $FLAN_JAX_MMLU_COT_EXEMPLARS at that time), so registering never needs it.
    """
    if vocabulary is None:
        from flan_jax.data.vocab import get_vocabulary

        vocabulary = get_vocabulary("t5")
    names = []
    for shots in (0, 5):
        for subject, name in zip(benchmarks.MMLU_SUBJECTS, task_names(shots)):
            make = functools.partial(
                mmlu_cot_examples, subject=subject, shots=shots, exemplars=exemplars, root=root
            )
            benchmarks._add_task(
                name,
                make,
                splits=["test"],
                template_type="fs_cot" if shots else "cot",
                cluster=f"mmlu_cot_{benchmarks.MMLU_CATEGORIES[subject]}",
                postprocess_fn=mmlu_cot_letter,
                vocabulary=vocabulary,
            )
        benchmarks._add_mixture(f"mmlu_{shots}shot_cot", task_names(shots))
        names += [*task_names(shots), f"mmlu_{shots}shot_cot"]
    return names


def mmlu_cot_summary(per_task: dict[str, dict[str, float]], shots: int) -> dict[str, float]:
    """Per subject, per category and "average" accuracy, as `benchmarks.mmlu_summary`."""
    renamed = {
        f"mmlu_{s}_{shots}shot": per_task[f"mmlu_{s}_{shots}shot_cot"]
        for s in benchmarks.MMLU_SUBJECTS
        if f"mmlu_{s}_{shots}shot_cot" in per_task
    }
    return benchmarks.mmlu_summary(renamed, shots)
