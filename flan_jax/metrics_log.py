"""Training observability: console progress line, TensorBoard events, MODEL_DIR/metrics.jsonl.

Only process 0 writes; every other process's logger is a no-op.
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
import tensorflow as tf

_SCALARS_METADATA = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


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


class _LineAppender:
    """Appends whole lines: one write per line (O_APPEND), cut back if the disk is full.

    A reader never sees half a record. gs:// paths go through tf.io.gfile.
    """

    def __init__(self, path: str):
        self.path = path
        self._fd, self._gfile = None, None
        if "://" in path:
            self._gfile = tf.io.gfile.GFile(path, "a")
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
            from flan_jax import checkpoint_files

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
            self._jsonl = _LineAppender(os.path.join(model_dir, "metrics.jsonl"))
            self._writer = tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard"))

    def _write(self, record: Mapping[str, float | int | str], prefix: str) -> None:
        self._jsonl.append(json.dumps(record, sort_keys=True) + "\n")
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
        record = {
            "kind": "train",
            "step": step,
            "time": time.time(),
            **summary,
            "step_time_s": step_time,
            "tokens_per_s": tokens / seconds,
            "tokens_per_s_per_device": tokens / seconds / n_dev,
            "target_tokens_per_s": target_tokens / seconds,
        }
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
            record = {"kind": "eval", "task": task, "step": step, "time": time.time(), **summary}
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
