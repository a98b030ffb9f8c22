"""Training observability: console progress line, TensorBoard events, MODEL_DIR/metrics.jsonl.

Only process 0 writes; every other process's logger is a no-op. Every metrics.jsonl line is
made by `metrics_record` (one schema: `kind`, `step`, `time`, then the values).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping

import jax
import tensorflow as tf

_SCALARS_METADATA = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


METRICS_FILE = "metrics.jsonl"
# train: a logged window of train steps; eval: teacher-forced loss of one task during
# training (with "task"); infer_eval: `flan-jax eval` / demo results, flat
# `eval/<task>/<metric>` and `eval_cluster/<cluster>/<metric>` values.
KINDS = ("train", "eval", "infer_eval")


def metrics_record(kind: str, step: int, values: Mapping[str, object], **fields) -> dict:
    """One metrics.jsonl record: {"kind", "step", "time", **fields, **values}.

    Raises:
      ValueError for a kind not in KINDS, a negative step, or values that would overwrite
      the schema's keys.
    """
    if kind not in KINDS:
        raise ValueError(f"metrics record kind {kind!r} is unknown; use one of {KINDS}")
    if int(step) < 0:
        raise ValueError(f"metrics record step is {step}; it must be >= 0")
    clash = sorted({"kind", "step", "time"} & (set(values) | set(fields)))
    if clash:
        raise ValueError(f"metrics record values {clash} clash with the schema's keys")
    return {"kind": kind, "step": int(step), "time": time.time(), **fields, **values}


def record_line(record: Mapping[str, object]) -> str:
    """The JSON line of a `metrics_record` (keys sorted)."""
    return json.dumps(record, sort_keys=True) + "\n"


def append_records(model_dir: str, records: list[dict]) -> None:
    """Appends `metrics_record`s to MODEL_DIR/metrics.jsonl (callers write from process 0)."""
    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(os.path.join(model_dir, METRICS_FILE), "a") as f:
        f.write("".join(record_line(r) for r in records))


def step_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled (per-device SPMD) computation, from XLA's cost analysis."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricsLogger:
    """Writes train and eval metrics; process 0 only.

    Args:
      model_dir: where metrics.jsonl and the TensorBoard events (tensorboard/) go.
      total_steps: TRAIN_STEPS, for the ETA.
      flops_per_device_step: XLA's per-device FLOPs of one train step (None: not logged).
      stream: console stream.
    """

    def __init__(
        self, model_dir: str, *, total_steps: int, flops_per_device_step: float | None, stream=None
    ):
        self.enabled = jax.process_index() == 0
        self.total_steps = total_steps
        self.flops = flops_per_device_step
        self.stream = stream or sys.stdout
        self._jsonl = None
        self._writer = None
        if self.enabled:
            tf.io.gfile.makedirs(model_dir)
            self._jsonl = tf.io.gfile.GFile(os.path.join(model_dir, METRICS_FILE), "a")
            self._writer = tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard"))

    def _write(self, record: Mapping[str, float | int | str], prefix: str) -> None:
        self._jsonl.write(record_line(record))
        self._jsonl.flush()
        with self._writer.as_default():
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time") and math.isfinite(v):
                    tf.summary.write(
                        f"{prefix}/{k}",
                        tf.constant(float(v)),
                        step=record["step"],
                        metadata=_SCALARS_METADATA,
                    )
        self._writer.flush()

    def log_train(
        self,
        step: int,
        summary: Mapping[str, float],
        *,
        num_steps: int,
        seconds: float,
        tokens: float,
        target_tokens: float,
    ) -> dict:
        """Logs `num_steps` steps that took `seconds` and ended at `step`.

        `tokens` counts every model input position, `target_tokens` the loss-weighted ones.
        """
        step_time = seconds / max(num_steps, 1)
        n_dev = jax.device_count()
        record = metrics_record(
            "train",
            step,
            {
                **summary,
                "step_time_s": step_time,
                "tokens_per_s": tokens / seconds,
                "tokens_per_s_per_device": tokens / seconds / n_dev,
                "target_tokens_per_s": target_tokens / seconds,
            },
        )
        if self.flops:
            record["model_flops_per_s_per_device"] = self.flops / step_time
        if self.enabled:
            eta = _format_duration(step_time * (self.total_steps - step))
            line = (
                f"step {step}/{self.total_steps} loss {summary['loss']:.4f} "
                f"acc {summary['accuracy']:.3f} "
                f"lr {summary.get('learning_rate', float('nan')):.2e} "
                f"tok/s {record['tokens_per_s']:.0f} "
                f"step {step_time * 1e3:.1f}ms ETA {eta}"
            )
            if self.flops:
                line += f" {record['model_flops_per_s_per_device'] / 1e9:.2f} GFLOP/s/dev"
            print(line, file=self.stream, flush=True)
            self._write(record, "train")
        return record

    def log_eval(self, step: int, results: Mapping[str, Mapping[str, float]]) -> None:
        """One record per task: {"kind": "eval", "task", "step", loss, accuracy, ...}."""
        if not self.enabled:
            return
        for task, summary in results.items():
            record = metrics_record("eval", step, summary, task=task)
            print(
                f"eval step {step} {task}: loss/token {summary['cross_ent_per_token']:.4f} "
                f"acc {summary['accuracy']:.3f}",
                file=self.stream,
                flush=True,
            )
            self._write(record, f"eval/{task}")

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._writer.close()
