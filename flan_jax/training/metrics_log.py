"""Training observability: console progress line, TensorBoard events, MODEL_DIR/metrics.jsonl.

Only process 0 writes; every other process's logger is a no-op. Every metrics.jsonl line is
made by `metrics_record` (one schema: `kind`, `step`, `time`, then the values).
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import time
from collections.abc import Mapping

import jax

from flan_jax.model import flops as flops_lib
from flan_jax.training import train_state


def _tensorflow():
    """TensorFlow, imported when a logger opens: the train step itself runs without it."""
    import tensorflow as tf

    return tf


def _scalars_metadata(tf) -> bytes:
    return tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")
    ).SerializeToString()


step_flops = train_state.step_flops  # XLA's count, kept here for existing callers


METRICS_FILE = "metrics.jsonl"
# train: a logged window of train steps; eval: teacher-forced loss of one task during
# training (with "task"); infer_eval: `flan-jax eval` / demo results, flat
# `eval/<task>/<metric>` and `eval_cluster/<cluster>/<metric>` values; suite: `flan-jax eval
# --suite` scores.
KINDS = ("train", "eval", "infer_eval", "suite")


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
    tf = _tensorflow()
    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(os.path.join(model_dir, METRICS_FILE), "a") as f:
        f.write("".join(record_line(r) for r in records))


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _LineAppender:
    """Appends whole lines: one write per line (O_APPEND), cut back if the disk is full.

    A reader never sees half a record. gs:// paths go through tf.io.gfile.
    """

    def __init__(self, path: str):
        self.path = path
        self._fd, self._gfile = None, None
        if "://" in path:
            self._gfile = _tensorflow().io.gfile.GFile(path, "a")
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, line: str) -> None:
        data = line.encode()
        if self._gfile is not None:
            self._gfile.write(line)
            self._gfile.flush()
            return
        size = os.fstat(self._fd).st_size
        try:
            if os.write(self._fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)
        except OSError as e:
            os.ftruncate(self._fd, size)  # no partial line left behind
            from flan_jax.checkpoints import files as checkpoint_files

            checkpoint_files.raise_if_storage_error(e, self.path, len(data))
            raise

    def close(self) -> None:
        if self._gfile is not None:
            self._gfile.close()
        elif self._fd is not None:
            os.close(self._fd)
            self._fd = None


class MetricsLogger:
    """Writes train and eval metrics; process 0 only.

    Args:
      model_dir: where metrics.jsonl and the TensorBoard events (tensorboard/) go.
      total_steps: TRAIN_STEPS, for the ETA.
      flops_per_device_step: XLA's per-device FLOPs of one train step (None: not logged);
        a second opinion only (see flan_jax.model.flops).
      model_flops_per_step: analytic model FLOPs of one step, all devices
        (flops.train_flops_per_step); with the device's peak it gives the MFU.
      peak_flops_per_device: the MFU's denominator (None: flops.device_peak of device 0).
      stream: console stream.
    """

    def __init__(
        self,
        model_dir: str,
        *,
        total_steps: int,
        flops_per_device_step: float | None,
        model_flops_per_step: float | None = None,
        peak_flops_per_device: float | None = None,
        stream=None,
    ):
        self.enabled = jax.process_index() == 0
        self.total_steps = total_steps
        self.flops = flops_per_device_step
        self.model_flops = model_flops_per_step
        self.peak = peak_flops_per_device
        if self.model_flops and self.peak is None:
            self.peak, _ = flops_lib.device_peak(jax.devices()[0].device_kind)
        self.stream = stream or sys.stdout
        self._jsonl = None
        self._writer = None
        if self.enabled:
            tf = self._tf = _tensorflow()
            self._metadata = _scalars_metadata(tf)
            tf.io.gfile.makedirs(model_dir)
            self._jsonl = _LineAppender(os.path.join(model_dir, METRICS_FILE))
            self._writer = tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard"))

    def _write(self, record: Mapping[str, float | int | str], prefix: str) -> None:
        self._jsonl.append(record_line(record))
        tf = self._tf
        with self._writer.as_default():
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time") and math.isfinite(v):
                    tf.summary.write(
                        f"{prefix}/{k}",
                        tf.constant(float(v)),
                        step=record["step"],
                        metadata=self._metadata,
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
        if self.model_flops:
            record["model_flops_per_s_per_device"] = self.model_flops / n_dev / step_time
            record["mfu"] = record["model_flops_per_s_per_device"] / self.peak
        if self.flops:
            record["xla_flops_per_s_per_device"] = self.flops / step_time
        if self.enabled:
            eta = _format_duration(step_time * (self.total_steps - step))
            line = (
                f"step {step}/{self.total_steps} loss {summary['loss']:.4f} "
                f"acc {summary['accuracy']:.3f} "
                f"lr {summary.get('learning_rate', float('nan')):.2e} "
                f"tok/s {record['tokens_per_s']:.0f} "
                f"step {step_time * 1e3:.1f}ms ETA {eta}"
            )
            if self.model_flops:
                line += (
                    f" {record['model_flops_per_s_per_device'] / 1e12:.3g} TFLOP/s/dev"
                    f" MFU {record['mfu']:.1%}"
                )
            if self.flops:  # XLA's count: a second opinion (too low on GPU, scan counted once)
                line += f" (XLA {record['xla_flops_per_s_per_device'] / 1e12:.3g})"
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
