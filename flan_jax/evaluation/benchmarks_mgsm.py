"""MGSM (Shi et al. 2022): GSM8K test's first 250 problems in 11 languages, chain of thought.

Files under `$FLAN_JAX_DATA_DIR/mgsm`: `mgsm_<lang>.tsv` (`question \\t answer`, no header)
and `exemplars.py`, whose dict literals are read as data (`ast.literal_eval`), never run.

Tasks (cluster `mgsm`, split `test`, target the canonical answer number, e.g. "2125"):
  `mgsm_<lang>_8shot_cot`     the 8 translated exemplars, then
                              "<Question:> q\\n<Step-by-Step Answer:>" in the language's cue words;
  `mgsm_<lang>_0shot_cot`     the native cue words alone;
  `mgsm_<lang>_8shot_cot_en`  the 8 English exemplars and English cue words, native question;
  `mgsm_<lang>_0shot_cot_en`  English cue words, native question;
and one mixture per variant (`mgsm_8shot_cot`, ...). Answers are read by `mgsm_answer`.
"""

from __future__ import annotations

import ast
import csv
import functools
import os
import re

import seqio

from flan_jax.evaluation import benchmarks
from flan_jax.metrics import mgsm_answer

# English first, then the 10 translations in the files' (alphabetical) order.
MGSM_LANGUAGES = ("en", "bn", "de", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
VARIANTS = ("8shot_cot", "0shot_cot", "8shot_cot_en", "0shot_cot_en")
_CUE = re.compile(r"^(.*?[:：]\s*)", re.DOTALL)  # "Question: ", "Question : ", "問題："


def _mgsm_dir(root: str | None) -> str:
    return os.path.join(benchmarks.data_dir(root), "mgsm")


def load_mgsm_tsv(path: str) -> list[dict[str, str]]:
    """Reads `question \\t answer` rows; the answer must be a number ("2,125" allowed).

    Returns:
      [{"question", "answer" (as in the file), "number" (canonical: "2125")}].
    """
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for line_no, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if len(row) != 2 or not re.fullmatch(r"-?[\d,]+(\.\d+)?", row[1].strip()):
                raise ValueError(
                    f"{path}:{line_no}: expected 'question<TAB>number', got {row!r:.120}"
                )
            number = mgsm_answer(row[1])
            rows.append({"question": row[0], "answer": row[1], "number": number})
    return rows


@functools.cache
def load_exemplars(path: str) -> dict[str, list[dict[str, str]]]:
    """`MGSM_EXEMPLARS` of exemplars.py read as a literal: lang -> 8 x {"q", "a"}.

    Each "q" opens with the language's question cue ("Question: ..."), each "a" with its
    answer cue ("Step-by-Step Answer: ...") and ends with its "The answer is N."
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "MGSM_EXEMPLARS"
        ):
            data = ast.literal_eval(node.value)
            return {lang: [s[k] for k in sorted(s, key=int)] for lang, s in data.items()}
    raise ValueError(f"{path}: no MGSM_EXEMPLARS = {{...}} dict literal found")


def cue_words(exemplar: dict[str, str]) -> tuple[str, str]:
    """(question cue, answer cue) of a language, from its first exemplar:
    ("Question: ", "Step-by-Step Answer:"), ("问题：", "逐步解答：")."""
    q, a = _CUE.match(exemplar["q"]), _CUE.match(exemplar["a"])
    if not (q and a):
        raise ValueError(f"exemplar {exemplar!r:.80} has no 'Cue: ' opening its q and a")
    return q.group(1), a.group(1).rstrip()


def mgsm_examples(
    split: str, *, lang: str, shots: int, english: bool = False, root: str | None = None
) -> list[benchmarks.Example]:
    """MGSM prompts of one language (`split` must be "test": MGSM has no other)."""
    base = _mgsm_dir(root)
    exemplars = load_exemplars(os.path.join(base, "exemplars.py"))["en" if english else lang]
    q_cue, a_cue = cue_words(exemplars[0])
    prefix = "".join(f"{e['q']}\n{e['a']}\n\n" for e in exemplars[:shots])
    rows = load_mgsm_tsv(os.path.join(base, f"mgsm_{lang}.tsv"))
    return [
        {"inputs": f"{prefix}{q_cue}{r['question']}\n{a_cue}", "targets": r["number"]} for r in rows
    ]


def task_name(lang: str, variant: str = "8shot_cot") -> str:
    return f"mgsm_{lang}_{variant}"


def register(vocabulary: seqio.Vocabulary | None = None, root: str | None = None) -> list[str]:
    """Registers the MGSM tasks and mixtures (see the module docstring); returns the names."""
    if vocabulary is None:
        from flan_jax.data.vocab import get_vocabulary

        vocabulary = get_vocabulary("t5")
    names = []
    for variant in VARIANTS:
        shots, english = int(variant[0]), variant.endswith("_en")
        tasks = [task_name(lang, variant) for lang in MGSM_LANGUAGES]
        for lang, name in zip(MGSM_LANGUAGES, tasks):
            make = functools.partial(
                mgsm_examples, lang=lang, shots=shots, english=english, root=root
            )
            benchmarks._add_task(
                name,
                make,
                splits=["test"],
                template_type="fs_cot" if shots else "cot",
                cluster="mgsm",
                postprocess_fn=mgsm_answer,
                vocabulary=vocabulary,
            )
        benchmarks._add_mixture(f"mgsm_{variant}", tasks)
        names += [*tasks, f"mgsm_{variant}"]
    return names


def mgsm_summary(
    per_task: dict[str, dict[str, float]], variant: str = "8shot_cot"
) -> dict[str, float]:
    """Accuracy per language and "average" (unweighted mean of the languages present)."""
    out = {
        lang: per_task[task_name(lang, variant)]["accuracy"]
        for lang in MGSM_LANGUAGES
        if task_name(lang, variant) in per_task
    }
    if out:
        out["average"] = sum(out.values()) / len(out)
    return out
