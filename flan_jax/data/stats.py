"""Mixture statistics: per task examples, rate, share, token lengths and truncation."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import seqio

from flan_jax.data import mixtures, tasks


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskStats:
    """One row of `flan-jax mixture stats`; token counts include EOS."""

    task: str
    examples: int
    rate: float
    share: float
    mean_inputs: float
    p95_inputs: float
    mean_targets: float
    p95_targets: float
    truncated_inputs: float  # share of sampled examples longer than the feature length
    truncated_targets: float


def token_lengths(
    task: str,
    feature_lengths: Mapping[str, int] | None = None,
    split: str = "train",
    sample: int = 200,
) -> dict[str, np.ndarray]:
    """Token lengths [sample] (with EOS, before truncation) of the first examples of a task.

    Few-shot inputs are measured after exemplar pruning to `feature_lengths["inputs"]`.
    """
    task_obj = seqio.get_mixture_or_task(task)
    ds = task_obj.get_dataset(feature_lengths, split=split, shuffle=False)
    lengths: dict[str, list[int]] = {"inputs": [], "targets": []}
    for ex in ds.take(sample).as_numpy_iterator():
        for key, values in lengths.items():
            vocab = task_obj.output_features[key].vocabulary
            values.append(len(vocab.encode(ex[f"{key}_pretokenized"].decode())) + 1)
    return {k: np.asarray(v, np.int64) for k, v in lengths.items()}


def mixture_stats(
    name: str, feature_lengths: Mapping[str, int], *, split: str = "train", sample: int = 200
) -> list[TaskStats]:
    """Per-task statistics of a registered mixture (or a single task).

    Args:
        name: a mixture registered by flan_jax.data.mixtures, or a task variant.
        feature_lengths: e.g. {"inputs": 512, "targets": 128}; truncation is measured against it.
        split: the split whose examples are sampled for token lengths.
        sample: examples per task used for the token statistics.
    """
    if name in mixtures.registered_mixtures():
        rates = mixtures.mixture_rates(name)
    elif name in seqio.TaskRegistry.names():
        rates = {name: 1.0}
    else:
        known = mixtures.registered_mixtures() + list(seqio.TaskRegistry.names())
        raise tasks.unknown_name_error("mixture or task", name, known)
    total = sum(rates.values())
    rows = []
    for task, rate in rates.items():
        lengths = token_lengths(task, feature_lengths, split, sample)
        stats = {}
        for key in ("inputs", "targets"):
            values = lengths[key] if lengths[key].size else np.zeros([1], np.int64)
            limit = feature_lengths.get(key)
            stats[f"mean_{key}"] = float(values.mean())
            stats[f"p95_{key}"] = float(np.percentile(values, 95))
            stats[f"truncated_{key}"] = float((values > limit).mean()) if limit else 0.0
        rows.append(
            TaskStats(
                task=task,
                examples=_count(task),
                rate=rate,
                share=rate / total,
                **stats,
            )
        )
    return rows


def _count(task: str) -> int:
    """Train examples of a task variant; recorded sizes are checked against data present."""
    try:
        spec = tasks.get_task_spec(task)
    except ValueError:  # a plain seqio task (e.g. a benchmark), not from a spec
        return seqio.get_mixture_or_task(task).num_input_examples("train") or 0
    tasks.check_recorded_sizes(spec)
    return tasks.count_examples(spec, "train")


def format_table(rows: list[TaskStats]) -> str:
    """Renders stats rows as an aligned text table (shares and truncation in percent)."""
    header = [
        "task",
        "examples",
        "rate",
        "share%",
        "in_mean",
        "in_p95",
        "tgt_mean",
        "tgt_p95",
        "in_trunc%",
        "tgt_trunc%",
    ]
    body = [
        [
            r.task,
            str(r.examples),
            f"{r.rate:.1f}",
            f"{100 * r.share:.2f}",
            f"{r.mean_inputs:.1f}",
            f"{r.p95_inputs:.0f}",
            f"{r.mean_targets:.1f}",
            f"{r.p95_targets:.0f}",
            f"{100 * r.truncated_inputs:.1f}",
            f"{100 * r.truncated_targets:.1f}",
        ]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in [header] + body
    ]
    return "\n".join(lines)
