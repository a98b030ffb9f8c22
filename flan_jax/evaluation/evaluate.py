"""Evaluation: rank classification and generation over seqio tasks, per-task and per-cluster.

`evaluate_tasks` / `run_evaluation` are the library entries; `write_results` writes
MODEL_DIR/eval/<step>/<task>.jsonl, metrics.jsonl and TensorBoard scalars;
`evaluate_checkpoint` is what `flan-jax eval` (flan_jax.cli.evaluate, gin/runs/eval.gin) runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import seqio
import tensorflow as tf
from jax.sharding import Mesh
from tensorflow.core.framework import summary_pb2

from flan_jax import metrics as metrics_lib
from flan_jax.evaluation.inference import (
    Model,
    as_text,
    generate,
    load_examples,
    place_params,
    rank_classify,
    restore_params,
    score_rows,
)
from flan_jax.model.decoding import DecodeConfig
from flan_jax.training import metrics_log


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How tasks are evaluated.

    Attributes:
      batch_size: model batch (padded at the end); must divide by the mesh's data*fsdp.
      max_examples: evaluate at most this many examples per task (None: all).
      length_normalize: rank options by mean instead of summed token log-likelihood.
      decode: decoding for generation tasks (greedy by default).
      num_samples: >1 turns on self-consistency: that many sampled chains
        (temperature `sample_temperature`), majority vote over extracted answers.
      sample_temperature: temperature of the self-consistency samples.
      seed: seed of the sampling rng.
      use_cached: read the tasks from their `flan-jax cache` folders (USE_CACHED in eval.gin);
        a missing or stale cache is an error.
      cache_dir: the folder `flan-jax cache --output_dir` wrote (CACHE_DIR).
    """

    batch_size: int = 8
    max_examples: int | None = None
    length_normalize: bool = False
    decode: DecodeConfig = DecodeConfig()
    num_samples: int = 1
    sample_temperature: float = 0.7
    seed: int = 0
    use_cached: bool = False
    cache_dir: str | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"EvalConfig.batch_size is {self.batch_size}; it must be >= 1")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"EvalConfig.max_examples is {self.max_examples}; use None or >= 1")
        if self.num_samples < 1:
            raise ValueError(f"EvalConfig.num_samples is {self.num_samples}; it must be >= 1")


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """One task's metrics, its cluster, and one record per example (input, target, ...)."""

    metrics: dict[str, float]
    cluster: str
    records: list[dict[str, Any]]


# ----------------------------------------------------------------------------- tasks


def _sample_votes(model, params, examples, vocab, feature_lengths, config, mesh, rng, post):
    """Self-consistency: `num_samples` sampled chains per example, majority vote of answers."""
    decode = dataclasses.replace(
        config.decode, method="sample", temperature=config.sample_temperature, num_samples=1
    )
    samples = [
        generate(
            model,
            params,
            examples,
            vocab,
            feature_lengths,
            decode,
            batch_size=config.batch_size,
            mesh=mesh,
            rng=jax.random.fold_in(rng, k),
        )
        for k in range(config.num_samples)
    ]
    texts, votes = [], []
    for i, ex in enumerate(examples):
        chains = [s[i] for s in samples]
        answers = [post(c, example=ex, is_target=False) for c in chains]
        vote = metrics_lib.majority_vote(answers)
        texts.append(chains[answers.index(vote)])
        votes.append({"samples": chains, "answers": answers})
    return texts, votes


def _metric_values(
    task: seqio.Task, targets: list, predictions: list, scores: list[float]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for fn in task.predict_metric_fns:
        out.update(fn(targets, predictions))
    for fn in task.score_metric_fns:
        out.update(fn(targets, scores))
    return {k: float(getattr(v, "value", v)) for k, v in out.items()}


def _rank_mode(model, params, examples, vocab, feature_lengths, config, mesh):
    """(chosen option texts, chosen scores, per-example extras) by rank classification."""
    chosen = rank_classify(
        model,
        params,
        examples,
        vocab,
        feature_lengths,
        mesh=mesh,
        batch_size=config.batch_size,
        length_normalize=config.length_normalize,
    )
    extras = [{"mode": "rank_classification", "option_scores": s} for _, s in chosen]
    return [c for c, _ in chosen], [max(s) for _, s in chosen], extras


def _generation_mode(model, params, examples, vocab, feature_lengths, config, mesh, post):
    """(decoded texts, gold-target log-likelihoods, per-example extras) by decoding."""
    extras: list[dict] = [{} for _ in examples]
    rng = jax.random.key(config.seed)
    if config.num_samples > 1:
        texts, extras = _sample_votes(
            model, params, examples, vocab, feature_lengths, config, mesh, rng, post
        )
    else:
        texts = generate(
            model,
            params,
            examples,
            vocab,
            feature_lengths,
            config.decode,
            batch_size=config.batch_size,
            mesh=mesh,
            rng=rng,
        )
    gold = [{"inputs": ex["inputs"], "targets": ex["targets"]} for ex in examples]
    scores = score_rows(
        model,
        params,
        gold,
        feature_lengths,
        batch_size=config.batch_size,
        mesh=mesh,
        length_normalize=config.length_normalize,
    )
    extras = [{"mode": "generation", **e} for e in extras]
    return texts, [float(s) for s in scores], extras


def _has_options(example: dict) -> bool:
    return "options" in example and len(example["options"]) > 0


def evaluate_task(
    model: Model,
    params: Any,
    task_name: str,
    *,
    split: str | None,
    feature_lengths: dict[str, int],
    config: EvalConfig,
    mesh: Mesh | None = None,
) -> TaskResult:
    """Evaluates one task: rank classification of examples with `options`, generation of the rest.

    Examples of a classification task rendered with an inverted template carry an empty
    `options` list (their target is e.g. a review, not a label): they are decoded greedily
    and scored by the task's metrics under `generated_<metric>`, so that the plain metric
    names (e.g. `accuracy`) are FLAN's rank-classification figures over examples with options.
    E.g. 8 examples, 6 with options ("yes"/"no", 3 chosen right) and 2 inverted (1 decoded
    right): {"accuracy": 50.0, "generated_accuracy": 50.0}.

    Records hold `input`, `target`, `mode` ("rank_classification" or "generation"),
    `prediction` (the chosen option or decoded text), `answer` (postprocessed prediction)
    and `score`: the chosen option's score (its `option_scores` too), or the gold target's
    log-likelihood for generated examples.
    """
    task = seqio.get_mixture_or_task(task_name)
    examples = load_examples(
        task,
        split,
        feature_lengths,
        config.max_examples,
        use_cached=config.use_cached,
        cache_dir=config.cache_dir,
    )
    vocab = task.output_features["targets"].vocabulary
    post = task.postprocess_fn
    ranked = [i for i, ex in enumerate(examples) if _has_options(ex)]
    decoded = [i for i, ex in enumerate(examples) if not _has_options(ex)]
    is_classification = bool(examples) and "options" in examples[0]
    groups = [("", ranked, _rank_mode), ("generated_" if is_classification else "", decoded, None)]
    records: list[dict] = [{} for _ in examples]
    metrics: dict[str, float] = {}
    for prefix, index, mode in groups:
        if not index:
            continue
        subset = [examples[i] for i in index]
        args = (model, params, subset, vocab, feature_lengths, config, mesh)
        texts, scores, extras = mode(*args) if mode else _generation_mode(*args, post)
        answers = [post(t, example=ex, is_target=False) for t, ex in zip(texts, subset)]
        targets = [
            post(as_text(ex["targets_pretokenized"]), example=ex, is_target=True) for ex in subset
        ]
        values = _metric_values(task, targets, answers, scores)
        metrics |= {f"{prefix}{k}": v for k, v in values.items()}
        for i, ex, text, answer, score, extra in zip(index, subset, texts, answers, scores, extras):
            records[i] = {
                "input": as_text(ex["inputs_pretokenized"]),
                "target": as_text(ex["targets_pretokenized"]),
                "prediction": text,
                "answer": answer,
                "score": score,
                **extra,
            }
    cluster = as_text(examples[0]["_cluster"]) if examples and "_cluster" in examples[0] else "none"
    return TaskResult(metrics=metrics, cluster=cluster, records=records)


def expand_tasks(names: Sequence[str]) -> list[str]:
    """Task names, with each mixture replaced by its (sub)tasks; duplicates dropped, order kept."""
    out: list[str] = []
    for name in names:
        provider = seqio.get_mixture_or_task(name)
        tasks = (
            [t.name for t in seqio.get_subtasks(provider)]
            if isinstance(provider, seqio.Mixture)
            else [name]
        )
        out.extend(t for t in tasks if t not in out)
    return out


def run_evaluation(
    model: Model,
    params: Any,
    task_names: Sequence[str],
    *,
    split: str | None,
    feature_lengths: dict[str, int],
    config: EvalConfig,
    mesh: Mesh | None = None,
) -> dict[str, TaskResult]:
    """Evaluates every task of the given tasks and mixtures; params are placed on `mesh`.

    `split` None: each task on its own eval split (validation, else test).
    """
    params = place_params(params, mesh)
    return {
        name: evaluate_task(
            model,
            params,
            name,
            split=split,
            feature_lengths=feature_lengths,
            config=config,
            mesh=mesh,
        )
        for name in expand_tasks(task_names)
    }


def evaluate_tasks(
    model: Model,
    params: Any,
    task_names: Sequence[str],
    *,
    split: str | None,
    feature_lengths: dict[str, int],
    mesh: Mesh | None = None,
    batch_size: int = 8,
    max_examples: int | None = None,
    **config: Any,
) -> dict[str, dict[str, float]]:
    """Per-task metrics {task: {metric: value}} for tasks and mixtures (`config`: EvalConfig)."""
    cfg = EvalConfig(batch_size=batch_size, max_examples=max_examples, **config)
    results = run_evaluation(
        model,
        params,
        task_names,
        split=split,
        feature_lengths=feature_lengths,
        config=cfg,
        mesh=mesh,
    )
    return {name: r.metrics for name, r in results.items()}


def cluster_metrics(results: dict[str, TaskResult]) -> dict[str, dict[str, float]]:
    """Unweighted mean per cluster of the metrics its tasks share."""
    groups: dict[str, list[str]] = {}
    for name, result in results.items():
        groups.setdefault(result.cluster, []).append(name)
    return metrics_lib.aggregate({n: r.metrics for n, r in results.items()}, groups)


def format_table(rows: dict[str, dict[str, float]], *, first_column: str = "task") -> str:
    """A plain-text table: one row per key, one column per metric (union, sorted), 2 decimals."""
    columns = sorted({m for values in rows.values() for m in values})
    header = [first_column, *columns]
    body = [
        [name, *(f"{values[m]:.2f}" if m in values else "-" for m in columns)]
        for name, values in rows.items()
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))
        )
        for r in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_scalars(logdir: str, scalars: dict[str, float], step: int) -> None:
    """TensorBoard scalars via `tf.summary.write` (works without the tensorboard package)."""
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    )
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for key, value in scalars.items():
            tf.summary.write(key, tf.constant(value, tf.float32), step=step, metadata=metadata)
    writer.close()


def write_results(model_dir: str, step: int, results: dict[str, TaskResult]) -> dict[str, float]:
    """Writes eval/<step>/<task>.jsonl inferences, a metrics.jsonl line (kind "infer_eval")
    and TensorBoard scalars.

    Returns:
      the flat scalars written: `eval/<task>/<metric>` and `eval_cluster/<cluster>/<metric>`.
    """
    out_dir = os.path.join(model_dir, "eval", str(step))
    tf.io.gfile.makedirs(out_dir)
    for name, result in results.items():
        with tf.io.gfile.GFile(os.path.join(out_dir, f"{name}.jsonl"), "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in result.records))
    scalars = {f"eval/{n}/{m}": v for n, r in results.items() for m, v in r.metrics.items()}
    scalars |= {
        f"eval_cluster/{c}/{m}": v
        for c, ms in cluster_metrics(results).items()
        for m, v in ms.items()
    }
    metrics_log.append_records(model_dir, [metrics_log.metrics_record("infer_eval", step, scalars)])
    write_scalars(os.path.join(model_dir, "eval"), scalars, step)
    return scalars


# ----------------------------------------------------------------------------- entry point


def evaluate_checkpoint(
    *,
    model: Model,
    checkpoint_path: str,
    mixture_or_task_name: str,
    model_dir: str,
    feature_lengths: dict[str, int],
    split: str | None = None,
    config: EvalConfig = EvalConfig(),
    mesh: Mesh | None = None,
    mixture_or_task_module: str | None = None,
    suite: Any = None,
) -> dict[str, float]:
    """Restores `checkpoint_path`, evaluates every task of the mixture, writes and prints results.

    Outputs go under `model_dir` (see `write_results`), at the checkpoint's step. With
    `suite` (a `suites.SuiteOptions`, from `--suite`) the suite's benchmarks are evaluated
    instead of the mixture (`suites.run_suite`).

    Returns:
      the scalars written (`eval/<task>/<metric>`, `eval_cluster/<cluster>/<metric>`).
    """
    if mixture_or_task_module:
        importlib.import_module(mixture_or_task_module)
    params, step = restore_params(model, checkpoint_path, mesh)
    if suite is not None:
        from flan_jax.evaluation import suites

        scores = suites.run_suite(
            model, params, step, suite, model_dir=model_dir, feature_lengths=feature_lengths,
            config=config, mesh=mesh,
        )  # fmt: skip
        return {f"suite/{b}": v.get("normalized", v["score"]) for b, v in scores.items()}
    results = run_evaluation(
        model,
        params,
        [mixture_or_task_name],
        split=split,
        feature_lengths=feature_lengths,
        config=config,
        mesh=mesh,
    )
    scalars = write_results(model_dir, step, results) if jax.process_index() == 0 else {}
    print(f"step {step}: {checkpoint_path}")
    print(format_table({n: r.metrics for n, r in results.items()}))
    print()
    print(format_table(cluster_metrics(results), first_column="cluster"))
    return scalars
