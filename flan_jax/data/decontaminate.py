"""Decontamination: normalised-text n-gram overlap between evaluation sets and a training mixture.

Evaluation sets are MMLU test, BBH, GSM8K test and MGSM (GSM8K test problems in 11 languages)
(from $FLAN_JAX_DATA_DIR) plus, for a held-out
mixture `<name>_minus_<cluster>`, the validation/test splits of that cluster's tasks. A training
example is contaminated when it holds at least half of an evaluation example's n-grams (default
13 words, after lower-casing and dropping punctuation; a CJK or Thai character, written without
spaces, counts as a word); a text shorter than n words is one n-gram.

Example: eval "Natalia sold clips to 48 of her friends in April" and train "NATALIA sold clips,
to 48 of her friends in April!" normalise to the same words: with n=8 they share all 3 of the
eval text's n-grams.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import pathlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

DEFAULT_N = 13
# Scripts written without spaces between words (kana, CJK ideographs, Thai): one word a character.
_UNSPACED = "\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
# Indic vowel signs and combining accents are not `\w` but belong inside a word (not the danda).
_MARKS = "\u0300-\u036f\u0900-\u0963\u0966-\u0dff"
_WORD = re.compile(f"[{_UNSPACED}]|(?:[^\\W_{_UNSPACED}]|[{_MARKS}])+")
_ASCII_WORD = re.compile(r"[a-z0-9]+")  # the same words for ASCII text, twice as fast


def normalize(text: str) -> list[str]:
    """Lower-cased alphanumeric words: "It's 4:30, Bob!" -> ["it", "s", "4", "30", "bob"];
    "Éte 罗杰有" -> ["éte", "罗", "杰", "有"]."""
    text = text.lower()
    return (_ASCII_WORD if text.isascii() else _WORD).findall(text)


def ngrams(text: str, n: int = DEFAULT_N) -> set[tuple[str, ...]]:
    """The word n-grams of normalised `text`; a shorter (non-empty) text is its own n-gram."""
    return set(_ordered_ngrams(text, n))


def _ordered_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = normalize(text)
    if len(words) < n:
        return [tuple(words)] if words else []
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


@dataclasses.dataclass(frozen=True)
class Overlap:
    """A training example sharing an n-gram with an evaluation example."""

    eval_set: str
    eval_index: int
    task: str
    train_index: int
    ngram: str


@dataclasses.dataclass
class Report:
    """Overlaps found, how many training examples were checked, and what could not be read."""

    mixture: str
    n: int
    eval_sizes: dict[str, int]
    checked: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    overlaps: list[Overlap] = dataclasses.field(default_factory=list)

    @property
    def contaminated(self) -> int:
        return len({(o.task, o.train_index) for o in self.overlaps})


class EvalIndex:
    """n-gram -> the evaluation examples holding it, over every evaluation text.

    A training text matches an evaluation example when it contains at least `min_fraction` of
    that example's n-grams: a copied question shares nearly all of them, while stock phrases
    that recur across a dataset's train and test ("at the same rate, how many additional
    hours would ...") share one or two.
    """

    def __init__(
        self, eval_sets: Mapping[str, Sequence[str]], n: int = DEFAULT_N, min_fraction: float = 0.5
    ):
        if n < 1:
            raise ValueError(f"n-gram size must be >= 1, got {n}")
        if not 0 < min_fraction <= 1:
            raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
        self.n, self.min_fraction = n, min_fraction
        self.sizes = {name: len(texts) for name, texts in eval_sets.items()}
        self._index: dict[tuple[str, ...], list[tuple[str, int]]] = {}
        self._num_grams: dict[tuple[str, int], int] = {}
        for name, texts in eval_sets.items():
            for i, text in enumerate(texts):
                grams = ngrams(text, n)
                self._num_grams[(name, i)] = len(grams)
                for gram in grams:
                    self._index.setdefault(gram, []).append((name, i))

    def match(self, text: str) -> tuple[str, int, tuple[str, ...]] | None:
        """(eval set, index, first shared n-gram) of the best-covered eval example, or None."""
        hits: dict[tuple[str, int], int] = {}
        first: dict[tuple[str, int], tuple[str, ...]] = {}
        for gram in dict.fromkeys(_ordered_ngrams(text, self.n)):
            for key in self._index.get(gram, ()):
                hits[key] = hits.get(key, 0) + 1
                first.setdefault(key, gram)
        best = max(hits, key=lambda k: (hits[k] / self._num_grams[k], -len(first)), default=None)
        if best is None or hits[best] / self._num_grams[best] < self.min_fraction:
            return None
        return best[0], best[1], first[best]


def find_overlaps(
    index: EvalIndex, task: str, train_texts: Iterable[str]
) -> tuple[int, list[Overlap]]:
    """(number of texts checked, overlaps) of one task's training texts against `index`."""
    count, found = 0, []
    for i, text in enumerate(train_texts):
        count += 1
        hit = index.match(text)
        if hit is not None:
            found.append(Overlap(hit[0], hit[1], task, i, " ".join(hit[2])))
    return count, found


# ------------------------------------------------------------------------ evaluation sets


def _data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
    path = data_dir or os.environ.get("FLAN_JAX_DATA_DIR")
    if not path or not pathlib.Path(path).is_dir():
        raise FileNotFoundError(
            f"evaluation data folder {path!r} not found; set $FLAN_JAX_DATA_DIR "
            "(e.g. ../shared/data) or pass data_dir"
        )
    return pathlib.Path(path)


def load_eval_sets(data_dir: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """MMLU test (question + choices), BBH inputs, GSM8K test and MGSM questions, as texts."""
    root = _data_dir(data_dir)
    sets: dict[str, list[str]] = {"mmlu": [], "bbh": [], "gsm8k_test": [], "mgsm": []}
    for path in sorted((root / "mmlu/data/mmlu/test").glob("*.csv")):
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                choices = " ".join(row[f"choice{i}"] for i in range(4))
                sets["mmlu"].append(f"{row['question']} {choices}")
    for path in sorted((root / "bbh/bbh").glob("*.json")):
        with open(path, encoding="utf-8") as f:
            sets["bbh"] += [ex["input"] for ex in json.load(f)["examples"]]
    with open(root / "gsm8k/grade_school_math/data/test.jsonl", encoding="utf-8") as f:
        sets["gsm8k_test"] = [json.loads(line)["question"] for line in f if line.strip()]
    for path in sorted((root / "mgsm").glob("mgsm_*.tsv")):  # 11 languages x 250 problems
        with open(path, encoding="utf-8") as f:
            sets["mgsm"] += [line.split("\t", 1)[0] for line in f if line.strip()]
    return sets


@functools.cache
def _default_index() -> EvalIndex:
    return EvalIndex(load_eval_sets())


def drop_eval_overlaps(example: Mapping[str, object]) -> Mapping[str, object] | None:
    """Task preprocessor (`preprocessor: "flan_jax.data.decontaminate:drop_eval_overlaps"`):
    drops a training example that holds an evaluation example (MMLU test, BBH, GSM8K test, MGSM)
    by the same rule `check_mixture` reports, so a shipped mixture stays clean.
    """
    text = " ".join(v for v in example.values() if isinstance(v, str))
    return None if _default_index().match(text) is not None else example


# ------------------------------------------------------------------------------- mixtures


def _texts(examples: Iterable[Mapping[str, object]]) -> Iterator[str]:
    for ex in examples:
        yield " ".join(v for v in ex.values() if isinstance(v, str))


def _readable(spec) -> str | None:
    """None when the split's data can be read here, else why not (missing TFDS / files)."""
    from flan_jax.data import sources

    if spec.source.type == "tfds":
        builder = sources.tfds_builder(spec.source)
        return None if builder.is_prepared() else f"TFDS {spec.source.name} is not prepared"
    if not sources.data_available(spec.source, "train"):
        return "train data files are missing"
    return None


def held_out_eval_sets(mixture: str) -> dict[str, list[str]]:
    """For `<name>_minus_<cluster>`: the held-out cluster's validation/test texts (if readable)."""
    from flan_jax.data import mixtures, tasks

    spec, cluster = mixtures.mixture_spec_of(mixture), mixtures.held_out_cluster(mixture)
    if cluster is None:
        return {}
    out: dict[str, list[str]] = {}
    for variant in mixtures.member_tasks(spec):
        task = tasks.get_task_spec(variant)
        if task.cluster != cluster or task.name in out or _readable(task):
            continue
        for split in [s for s in task.source.splits if s != "train"]:
            out.setdefault(task.name, []).extend(_texts(tasks.get_examples(task, split)))
    return out


def check_mixture(
    mixture: str,
    *,
    eval_sets: Mapping[str, Sequence[str]] | None = None,
    n: int = DEFAULT_N,
    min_fraction: float = 0.5,
    data_dir: str | os.PathLike | None = None,
) -> Report:
    """Checks every readable training task of a registered mixture against the evaluation sets.

    Tasks whose data is absent here (unprepared TFDS, missing files) are listed in
    `Report.skipped` with the reason, never silently passed.
    """
    import seqio

    from flan_jax.data import tasks

    if eval_sets is None:
        eval_sets = {**load_eval_sets(data_dir), **held_out_eval_sets(mixture)}
    index = EvalIndex(eval_sets, n, min_fraction)
    report = Report(mixture=mixture, n=n, eval_sizes=dict(index.sizes))
    seen: set[str] = set()
    for task in seqio.get_mixture_or_task(mixture).tasks:
        try:
            spec = tasks.get_task_spec(task.name)
        except ValueError:
            report.skipped[task.name] = "not a flan_jax TaskSpec"
            continue
        if spec.name in seen:
            continue  # every format of one task renders the same training examples
        seen.add(spec.name)
        reason = _readable(spec)
        if reason:
            report.skipped[spec.name] = reason
            continue
        count, found = find_overlaps(index, spec.name, _texts(tasks.get_examples(spec, "train")))
        report.checked[spec.name] = count
        report.overlaps += found
    return report


def format_report(report: Report, max_lines: int = 20) -> str:
    """A short text report for `flan-jax mixture stats --decontaminate`."""
    evals = ", ".join(f"{k} ({v})" for k, v in sorted(report.eval_sizes.items()))
    lines = [
        f"decontamination of {report.mixture}: {report.n}-gram overlap against {evals}",
        f"checked {sum(report.checked.values())} training examples of {len(report.checked)} tasks; "
        f"contaminated: {report.contaminated}",
    ]
    for o in report.overlaps[:max_lines]:
        lines.append(f"  {o.task}[{o.train_index}] ~ {o.eval_set}[{o.eval_index}]: {o.ngram!r}")
    if report.skipped:
        lines.append(
            f"skipped {len(report.skipped)} tasks whose data is not here, e.g. "
            + "; ".join(f"{k}: {v}" for k, v in list(report.skipped.items())[:3])
        )
    return "\n".join(lines)
