"""Metrics (seqio form, 0-100) and answer-extraction postprocessors for evaluation."""

from flan_jax.metrics.postprocessors import (
    bbh_answer,
    choice_letter,
    cot_answer,
    first_line,
    first_word,
    get_postprocessor,
    gsm8k_answer,
    majority_vote,
    mgsm_answer,
    normalize_number,
)
from flan_jax.metrics.scores import (
    accuracy,
    aggregate,
    bleu,
    exact_match,
    f1,
    get_metric,
    mean,
    normalize_squad,
    rouge,
    squad,
)

__all__ = [
    "accuracy",
    "aggregate",
    "bbh_answer",
    "bleu",
    "choice_letter",
    "cot_answer",
    "exact_match",
    "f1",
    "first_line",
    "first_word",
    "get_metric",
    "get_postprocessor",
    "gsm8k_answer",
    "majority_vote",
    "mean",
    "mgsm_answer",
    "normalize_number",
    "normalize_squad",
    "rouge",
    "squad",
]
