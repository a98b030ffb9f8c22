"""Mixture statistics: per task examples, rate, share, token lengths and truncation.

Rates and shares need only the specs (recorded split sizes), so they print without the data;
token lengths need examples and are left empty for tasks whose data is not present.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Mapping

import numpy as np
import seqio

from flan_jax.data import formats, mixtures, task_examples, tasks


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskStats:
    """One row of `flan-jax mixture stats`; token counts include EOS.

    The token fields are None when the task's data is not present (or `sample` is 0).
    """

    task: str
    examples: int
    rate: float
    share: float
    mean_inputs: float | None = None
    p95_inputs: float | None = None
    mean_targets: float | None = None
    p95_targets: float | None = None
    truncated_inputs: float | None = None  # share of sampled examples longer than the length
    truncated_targets: float | None = None


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
        stats = {}
        if sample > 0 and _has_data(task, split):
            stats = _token_stats(
                token_lengths(task, feature_lengths, split, sample), feature_lengths
            )
        rows.append(
            TaskStats(task=task, examples=_count(task), rate=rate, share=rate / total, **stats)
        )
    return rows


def _token_stats(lengths: dict[str, np.ndarray], feature_lengths: Mapping[str, int]) -> dict:
    stats = {}
    for key in ("inputs", "targets"):
        values = lengths[key] if lengths[key].size else np.zeros([1], np.int64)
        limit = feature_lengths.get(key)
        stats[f"mean_{key}"] = float(values.mean())
        stats[f"p95_{key}"] = float(np.percentile(values, 95))
        stats[f"truncated_{key}"] = float((values > limit).mean()) if limit else 0.0
    return stats


def _has_data(task: str, split: str) -> bool:
    """Whether the task's examples and its vocabulary (to count tokens) are present."""
    vocabulary = seqio.get_mixture_or_task(task).output_features["inputs"].vocabulary
    try:
        vocabulary.encode("a")  # loads the model
    except FileNotFoundError:  # e.g. the SentencePiece model without $FLAN_JAX_DATA_DIR
        return False
    spec = tasks.find_task_spec(task)
    if spec is None:  # a plain seqio task (e.g. a benchmark): its own source decides
        return True
    return task_examples.has_data(spec, split)


def _count(task: str) -> int:
    """Train examples of a task variant; recorded sizes are checked against data present."""
    spec = tasks.find_task_spec(task)
    if spec is None:  # a plain seqio task (e.g. a benchmark), not from a spec
        return seqio.get_mixture_or_task(task).num_input_examples("train") or 0
    tasks.check_recorded_sizes(spec)
    return tasks.count_examples(spec, "train")


def _rate(rate: float) -> str:
    """Example-count rates with one decimal; sub-mixture weights (< 10) with 4 digits."""
    return f"{rate:.1f}" if rate >= 10 else f"{rate:.4g}"


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

    def num(value: float | None, fmt: str, scale: float = 1.0) -> str:
        return "-" if value is None else format(scale * value, fmt)

    body = [
        [
            r.task,
            str(r.examples),
            _rate(r.rate),
            f"{100 * r.share:.2f}",
            num(r.mean_inputs, ".1f"),
            num(r.p95_inputs, ".0f"),
            num(r.mean_targets, ".1f"),
            num(r.p95_targets, ".0f"),
            num(r.truncated_inputs, ".1f", 100),
            num(r.truncated_targets, ".1f", 100),
        ]
        for r in rows
    ]
    if len(rows) > 1:
        total_share = 100 * sum(r.share for r in rows)
        total_rate = sum(r.rate for r in rows)
        # no examples total: a dataset appears once per format variant
        body.append(["total", "", _rate(total_rate), f"{total_share:.2f}"] + [""] * 6)
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in [header] + body
    ]
    missing = sum(r.mean_inputs is None for r in rows)
    if missing:
        lines.append(
            f"({missing} of {len(rows)} tasks have no data or vocabulary here, so no token "
            "lengths ('-'); rates use the sizes recorded in their specs. Prepare the data "
            "(`tfds build`, or $FLAN_JAX_DATA_DIR) to fill them in and check those sizes.)"
        )
    return "\n".join(lines)


TRUNCATION_WARN = 0.02  # warn before training when more than this share would be cut
SAMPLE_SECONDS = 30.0  # the truncation check reads tasks, largest rate first, this long


def suggested_length(values: np.ndarray) -> int:
    """The 99th percentile rounded up to a multiple of 64 (of 8 below 64)."""
    p99 = int(np.ceil(np.percentile(values, 99)))
    step = 64 if p99 >= 64 else 8
    return -(-p99 // step) * step


def truncation_warnings(
    name: str, feature_lengths: Mapping[str, int], *, split: str = "train", sample: int = 300
) -> list[str]:
    """Warnings for features whose length cuts more than 2% of `sample` mixture examples.

    Example: ["TASK_FEATURE_LENGTHS['targets'] = 8 truncates 33.3% of 300 sampled 'flan_tiny'
    targets (p99 68 tokens); consider 128"]. Examples are drawn per task in proportion to its
    mixture rate and rendered in Python (building the seqio mixture would cost as much as the
    training pipeline); a few-shot input counts without its exemplars, which are pruned to fit.
    Tasks not built from a spec (benchmarks) are skipped.
    """
    measured = sampled_lengths(name, split, sample)
    out = []
    for key, array in measured.items():
        limit = feature_lengths.get(key)
        share = float((array > limit).mean()) if array.size and limit else 0.0
        if share > TRUNCATION_WARN:
            out.append(
                f"TASK_FEATURE_LENGTHS[{key!r}] = {limit} truncates {share:.1%} of {array.size} "
                f"sampled {name!r} {key} (p99 {np.percentile(array, 99):.0f} tokens); consider "
                f"{suggested_length(array)}"
            )
    return out


def sampled_lengths(name: str, split: str = "train", sample: int = 300) -> dict[str, np.ndarray]:
    """Token lengths (with EOS) of about `sample` examples, each task's share by its rate."""
    if name in mixtures.registered_mixtures():
        rates = mixtures.mixture_rates(name)
    else:
        rates = {name: 1.0}
    total = sum(rates.values()) or 1.0
    lengths: dict[str, list[int]] = {"inputs": [], "targets": []}
    deadline = time.monotonic() + SAMPLE_SECONDS
    for task, rate in sorted(rates.items(), key=lambda item: -item[1]):  # largest first
        if time.monotonic() > deadline:  # hundreds of TFDS tasks: a share is enough
            break
        spec = tasks.find_task_spec(task)
        if spec is None:  # not from a spec: its own seqio pipeline, not sampled here
            continue
        count = max(1, round(sample * rate / total))
        fmt = task[len(spec.name) + 1 :]
        settings = spec.render_settings(fmt)
        features = seqio.get_mixture_or_task(task).output_features
        examples = itertools.islice(task_examples.iter_prepared(spec, split), count)
        for i, ex in enumerate(examples):
            rendered = formats.render_example(ex, i, split, settings)
            inputs = rendered.query if rendered.shots or rendered.query else rendered.inputs
            for key, text in (("inputs", inputs), ("targets", rendered.targets)):
                lengths[key].append(len(features[key].vocabulary.encode(text)) + 1)
    return {k: np.asarray(v, np.int64) for k, v in lengths.items()}


def check_vocabulary(name: str, embedding_size: int) -> None:
    """Raises ValueError when the data's vocabulary has more ids than the model's embedding."""
    mt = seqio.get_mixture_or_task(name)
    for key, feature in mt.output_features.items():
        size = feature.vocabulary.vocab_size
        if size > embedding_size:
            raise ValueError(
                f"{name!r} {key} vocabulary has {size} ids but the model's embedding has "
                f"{embedding_size} rows (vocab_size); use a model with vocab_size >= {size} or "
                "the task's smaller vocabulary"
            )


def stand_in_tasks(name: str) -> dict[str, str]:
    """{task variant: its spec's `stand_in_for`} for the tasks of a mixture or task that read
    a sample standing in for a real corpus (e.g. the shipped NIv2 and dialog samples)."""
    provider = seqio.get_mixture_or_task(name)
    names = [t.name for t in seqio.get_subtasks(provider)] if hasattr(provider, "tasks") else [name]
    out = {}
    for variant in names:
        spec = tasks.find_task_spec(variant)
        if spec is None:  # a plain seqio task
            continue
        if spec.stand_in_for:
            out[variant] = spec.stand_in_for
    return out
