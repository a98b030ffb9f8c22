"""Metric functions in seqio's form: `metric(targets, predictions) -> {name: value}`, 0-100.

Each takes postprocessed target and prediction strings of equal length (a target may
also be a list of acceptable answers where noted) and returns percentages, as T5 does.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

Target = str | Sequence[str]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def _check_lengths(targets: Sequence, predictions: Sequence) -> None:
    if len(targets) != len(predictions):
        raise ValueError(
            f"got {len(targets)} targets but {len(predictions)} predictions; "
            "a metric needs one prediction per target"
        )


def _as_list(target: Target) -> list[str]:
    return [target] if isinstance(target, str) else list(target)


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Percentage of predictions equal to their target (exact string comparison)."""
    _check_lengths(targets, predictions)
    if not targets:
        return {"accuracy": 0.0}
    hits = sum(t == p for t, p in zip(targets, predictions))
    return {"accuracy": 100.0 * hits / len(targets)}


def normalize_squad(text: str) -> str:
    """SQuAD answer normalisation: lower case, no punctuation, articles or extra spaces.

    Example: "The  Eiffel-Tower!" -> "eiffeltower".
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _token_f1(target: str, prediction: str) -> float:
    target_tokens = normalize_squad(target).split()
    prediction_tokens = normalize_squad(prediction).split()
    if not target_tokens or not prediction_tokens:
        return float(target_tokens == prediction_tokens)
    common = collections.Counter(target_tokens) & collections.Counter(prediction_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(target_tokens)
    return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Target], predictions: Sequence[str]) -> dict[str, float]:
    """SQuAD exact match and token F1 (max over a target's acceptable answers).

    Args:
      targets: per example a string or a list of acceptable answer strings.
      predictions: per example the predicted string.

    Returns:
      {"em": ..., "f1": ...} in percent.
    """
    _check_lengths(targets, predictions)
    if not targets:
        return {"em": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for target, prediction in zip(targets, predictions):
        answers = _as_list(target)
        em += max(float(normalize_squad(a) == normalize_squad(prediction)) for a in answers)
        f1 += max(_token_f1(a, prediction) for a in answers)
    return {"em": 100.0 * em / len(targets), "f1": 100.0 * f1 / len(targets)}


def exact_match(targets: Sequence[Target], predictions: Sequence[str]) -> dict[str, float]:
    """SQuAD-normalised exact match (any acceptable answer), in percent."""
    return {"exact_match": squad(targets, predictions)["em"]}


def f1(targets: Sequence[Target], predictions: Sequence[str]) -> dict[str, float]:
    """SQuAD-style token F1 (max over acceptable answers), in percent."""
    return {"f1": squad(targets, predictions)["f1"]}


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (rouge-score, Porter stemmer), in percent."""
    from rouge_score import rouge_scorer

    _check_lengths(targets, predictions)
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for target, prediction in zip(targets, predictions):
        scores = scorer.score(target, prediction)
        for kind in kinds:
            totals[kind] += scores[kind].fmeasure
    n = max(len(targets), 1)
    return {kind: 100.0 * total / n for kind, total in totals.items()}


def bleu(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU with sacrebleu (T5's settings: exp smoothing, "intl" tokenizer)."""
    import sacrebleu

    _check_lengths(targets, predictions)
    result = sacrebleu.corpus_bleu(
        list(predictions),
        [list(targets)],
        smooth_method="exp",
        smooth_value=0.0,
        force=False,
        lowercase=False,
        tokenize="intl",
        use_effective_order=False,
    )
    return {"bleu": float(result.score)}


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; 0.0 for an empty sequence."""
    return float(sum(values) / len(values)) if values else 0.0


def aggregate(
    per_task: Mapping[str, Mapping[str, float]], groups: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, float]]:
    """Unweighted mean over each group's tasks of every metric those tasks all report.

    Args:
      per_task: task name -> {metric: value}.
      groups: group name (e.g. a cluster or an MMLU category) -> task names.

    Returns:
      group name -> {metric: mean over the group's tasks present in `per_task`}.
    """
    out: dict[str, dict[str, float]] = {}
    for group, tasks in groups.items():
        present = [per_task[t] for t in tasks if t in per_task]
        if not present:
            continue
        shared = set(present[0]).intersection(*present[1:])
        out[group] = {m: mean([scores[m] for scores in present]) for m in sorted(shared)}
    return out


METRICS = {
    "accuracy": accuracy,
    "exact_match": exact_match,
    "f1": f1,
    "squad": squad,
    "rouge": rouge,
    "bleu": bleu,
}


def get_metric(name: str):
    """Looks up a metric function by the name used in task specs (`metrics: [accuracy]`)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known metrics: {sorted(METRICS)}")
    return METRICS[name]
