"""The train loop: `train()` (a gin configurable, run by flan_jax.cli.train) and `RunConfig`."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import sys
import time
from typing import Any

import jax
import numpy as np
import tensorflow as tf
from flax import linen as nn
from jax.sharding import Mesh

from flan_jax import convert, partitioning
from flan_jax.checkpoints import manager as checkpoints
from flan_jax.checkpoints import run_lock
from flan_jax.checkpoints.manager import CheckpointConfig
from flan_jax.model import flops
from flan_jax.training import input_pipeline, metrics_log, optimizer, train_state
from flan_jax.training.input_pipeline import DataConfig
from flan_jax.training.optimizer import OptimizerConfig
from flan_jax.training.train_state import (
    MEMORY_FIELDS,
    StepConfig,
    compile_train_step,
    memory_report,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The run's length, logging and initialisation.

    Attributes:
      model_dir: MODEL_DIR (local path or gs://).
      train_steps: TRAIN_STEPS, the total step count (a resumed run continues to it).
      log_period: fetch metrics from the devices and log every this many steps.
      eval_period: EVAL_PERIOD, teacher-forced eval on the eval split (None: off).
      seed: parameter initialisation seed.
      initial_checkpoint_path: INITIAL_CHECKPOINT_PATH, params only (None: random init).
      record_batch_fingerprints: write MODEL_DIR/batches/process_<i>.jsonl, a hash of every
        step's local batch (to check exact resume).
    """

    model_dir: str
    train_steps: int
    log_period: int = 100
    eval_period: int | None = None
    seed: int = 0
    initial_checkpoint_path: str | None = None
    record_batch_fingerprints: bool = False

    def __post_init__(self):
        if not self.model_dir:
            raise ValueError("MODEL_DIR is empty; set --gin.MODEL_DIR=\"'runs/my_run'\"")
        if self.train_steps < 1:
            raise ValueError(f"TRAIN_STEPS ({self.train_steps}) must be >= 1")
        if self.log_period < 1:
            raise ValueError(f"log_period ({self.log_period}) must be >= 1")
        if self.eval_period is not None and self.eval_period < 1:
            raise ValueError(f"EVAL_PERIOD ({self.eval_period}) must be >= 1 or None")


class PreemptionWatcher:
    """SIGTERM sets a flag; the loop checkpoints and exits at the next step boundary.

    `main` installs it on its first line, so a SIGTERM during start-up (imports, data,
    compilation, restore) is not lost: the loop exits before its first step.
    Multi-host: JAX's preemption sync point makes every host stop at the same step.
    """

    active: PreemptionWatcher | None = None

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        PreemptionWatcher.active = self

    @classmethod
    def install(cls) -> tuple[PreemptionWatcher, bool]:
        """The installed watcher (installing one if none): (watcher, whether it is new)."""
        if cls.active is not None:
            return cls.active, False
        return cls(), True

    def _handle(self, signum, frame):
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            try:  # needs jax.distributed's preemption service (on by default on TPU)
                synced = multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:
                synced = False
            return self.requested or synced
        return self.requested

    def close(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)
        if PreemptionWatcher.active is self:
            PreemptionWatcher.active = None


class MetricsWindow:
    """Per-step metrics left on device until fetched (no host sync every step)."""

    def __init__(self):
        self.pending: list[tuple[int, dict[str, jax.Array]]] = []
        self.sums: dict[str, float] = {}
        self.num_steps = 0

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self.pending.append((step, metrics))

    def drain(self, last_checkpoint: int | None) -> None:
        """Fetches pending metrics; a non-finite loss raises, naming its step."""
        for step, m in jax.device_get(self.pending):
            loss = float(m["loss"])
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss} at step {step}; stopped without saving. The last good "
                    f"checkpoint is step {last_checkpoint}; lower LEARNING_RATE or inspect that "
                    "batch"
                )
            for k, v in m.items():
                self.sums[k] = (
                    self.sums.get(k, 0.0) + float(v) if k != "learning_rate" else float(v)
                )
            self.num_steps += 1
        self.pending = []

    def pop(self) -> tuple[dict[str, float], int]:
        out = (self.sums, self.num_steps)
        self.sums, self.num_steps = {}, 0
        return out


def _restore_or_init(model, tx, ckpt, shapes, abstract, shardings, run: RunConfig, data_iter, log):
    """Newest verified checkpoint (state + data position), else INITIAL_CHECKPOINT_PATH or init.

    Unfinished or damaged checkpoints are skipped with one line each (walk-back).
    """
    restored = ckpt.restore_latest(abstract, data_iter, log=log.info)
    if restored is not None:
        log.info(f"restoring checkpoint step {restored[1]} from {ckpt.directory}")
        return restored
    if run.initial_checkpoint_path:
        log.info(f"initialising params from {run.initial_checkpoint_path}")
        params = checkpoints.load_initial_params(
            run.initial_checkpoint_path, abstract["params"], read_other=convert.load_params
        )
    else:
        params = train_state.init_params(
            model, shapes, jax.random.PRNGKey(run.seed), shardings["params"]
        )
    return train_state.init_state(params, tx, shardings), 0


def _evaluate(
    eval_step, params, eval_batches, mesh: Mesh, batch_size: int
) -> dict[str, dict[str, float]]:
    results = {}
    for task, batches in eval_batches.items():
        sums = None
        for local in batches:
            m = eval_step(params, input_pipeline.make_global_batch(local, mesh, batch_size))
            sums = m if sums is None else jax.tree.map(lambda a, b: a + b, sums, m)
        results[task] = train_state.summarize(jax.device_get(sums), num_steps=len(batches))
    return results


def _tokens_per_step(shapes: dict[str, tuple[int, int]]) -> int:
    keys = ("encoder_input_tokens", "decoder_target_tokens")
    return int(sum(shapes[k][0] * shapes[k][1] for k in keys if k in shapes))


def _validate(mesh: Mesh, data: DataConfig, step: StepConfig) -> None:
    if mesh.size != jax.device_count():
        raise ValueError(
            f"mesh {dict(mesh.shape)} has {mesh.size} devices; there are {jax.device_count()}"
        )
    partitioning.validate_batch_size(data.batch_size, mesh, step.num_microbatches)


def _check_data(model, data: DataConfig, sample: int) -> None:
    """Before compiling: the vocabulary fits the embedding; warns when the feature lengths
    cut more than 2% of `sample` examples (with a suggested length)."""
    from flan_jax.data import cache, stats

    name = data.mixture_or_task_name
    provider = input_pipeline.get_mixture_or_task(name)  # an unknown name fails here
    if data.mixing == "auto" and not data.use_cached and jax.process_index() == 0:
        if input_pipeline.one_pipeline(data, provider):
            print(
                f"flan-jax train: note: {name!r} has {len(provider.tasks)} tasks: mixed in one "
                f"pipeline (DataConfig.mixing='auto' from {input_pipeline.ONE_PIPELINE_MIN_TASKS}"
                " tasks); set it to 'seqio' for seqio's per-task pipelines",
                file=sys.stderr,
                flush=True,
            )
    if data.use_cached:  # a missing or stale cache fails here, before compiling
        cache.use_caches(name, data.cache_dir, [data.split])
    if not data.allow_sample_data:
        stand_ins = stats.stand_in_tasks(name)
        if stand_ins:
            fixes: dict[str, list[str]] = {}
            for task, how in stand_ins.items():
                fixes.setdefault(how, []).append(task)
            listed = "; ".join(f"{', '.join(tasks)}: {how}" for how, tasks in fixes.items())
            raise ValueError(
                f"{name!r} would train on {len(stand_ins)} task(s) that read a shipped sample, "
                f"not the real corpus ({listed}); for a smoke test add "
                "--gin.input_pipeline.DataConfig.allow_sample_data=True"
            )
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab_size is not None:
        stats.check_vocabulary(name, vocab_size)
    # From caches, sampling lengths would render the very tasks the caches exist to skip.
    if sample and jax.process_index() == 0 and not data.use_cached:
        lengths = data.task_feature_lengths
        for warning in stats.truncation_warnings(name, lengths, split=data.split, sample=sample):
            print(f"flan-jax train: warning: {warning}", file=sys.stderr, flush=True)


def format_memory_report(report: dict, mesh: Mesh) -> str:
    """The `--precompile` table: MiB and exact bytes per device, then FLOPs per step.

    The analytic model FLOPs (report["model_flops"], flan_jax.model.flops) come first; XLA's count
    is a second opinion (too low on GPU, a scanned stack counted once).
    """
    lines = [f"memory per device (mesh {dict(mesh.shape)}, {mesh.size} devices):"]
    for name in (*MEMORY_FIELDS, "peak"):
        lines.append(f"  {name:18s} {report[name] / 2**20:12.2f} MiB {report[name]:>16d} bytes")
    model_flops = report.get("model_flops")
    if model_flops:
        peak, source = report["peak_flops"], report["peak_source"]
        lines.append(
            f"model FLOPs (analytic, 6N/token + attention) per step {model_flops:.4g}, "
            f"per device {model_flops / mesh.size:.4g}; device {source} {peak:.4g} FLOP/s: "
            f"{model_flops / mesh.size / peak * 1e3:.4g} ms per step at 100% MFU"
        )
    xla = report["flops"]
    per_step = "n/a (no cost analysis on this backend)" if xla is None else f"{xla:.4g}"
    lines.append(f"XLA cost analysis: FLOPs per device per step {per_step}")
    if xla is not None:
        lines.append(f"XLA cost analysis: FLOPs per step (all devices) {xla * mesh.size:.4g}")
    return "\n".join(lines)


def train(
    *,
    model: Any,
    data: DataConfig,
    mesh: Mesh,
    optimizer_config: OptimizerConfig,
    checkpoint: CheckpointConfig,
    run: RunConfig,
    step_config: StepConfig | None = None,
    mixture_or_task_module: str | None = None,
    precompile: bool = False,
) -> dict[str, Any]:
    """Trains `model` to `run.train_steps`; returns the final state (params on the mesh).

    `precompile=True` (`flan-jax train --precompile`) compiles the step, prints its memory per
    device and FLOPs, and returns `memory_report(...)` without reading data or running.
    """
    step_config = step_config or StepConfig()
    # resolved once, at start: orbax needs absolute paths, and a relative MODEL_DIR must not
    # change meaning if the working directory does
    run = dataclasses.replace(run, model_dir=checkpoints.absolute_path(run.model_dir))
    if mixture_or_task_module:
        importlib.import_module(mixture_or_task_module)
    _validate(mesh, data, step_config)
    if not precompile:  # --precompile reads no data (the task need not even be registered)
        _check_data(model, data, sample=300)
    converter = input_pipeline.make_converter(model.feature_converter_cls, data)
    shapes = input_pipeline.model_input_shapes(data, converter)
    tx = optimizer.make_optimizer(optimizer_config)
    schedule = optimizer.make_schedule(optimizer_config)
    rules = partitioning.LOGICAL_AXIS_RULES
    if precompile:
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            compiled, _, _ = compile_train_step(model, tx, schedule, step_config, mesh, shapes)
        report = memory_report(compiled)
        report["model_flops"] = flops.train_flops_per_step(model.config, shapes)
        report["peak_flops"], report["peak_source"] = flops.device_peak(
            jax.devices()[0].device_kind
        )
        print(format_memory_report(report, mesh), flush=True)
        return report
    with run_lock.held(run.model_dir):  # one trainer per MODEL_DIR (a no-op under main)
        return _train(
            model, data, mesh, converter, (tx, schedule), step_config, checkpoint, run, shapes
        )


def _train(model, data, mesh, converter, optim, step_config, checkpoint, run, shapes):
    """`train` after its checks, under the MODEL_DIR lock."""
    (tx, schedule), rules = optim, partitioning.LOGICAL_AXIS_RULES
    watcher = PreemptionWatcher.active
    if watcher is not None and watcher.requested and jax.process_count() == 1:
        print("SIGTERM before training started; nothing to save", flush=True)
        return None
    batches = input_pipeline.TrainIterator(
        None, mesh, data.batch_size, config=data, converter=converter
    )
    ckpt = checkpoints.Checkpointer(run.model_dir, checkpoint)
    eval_batches = {}
    if run.eval_period:
        eval_conv = model.feature_converter_cls(pack=False)
        names = input_pipeline.eval_task_names(data)
        eval_batches = {n: input_pipeline.load_eval_batches(data, eval_conv, n) for n in names}
    batch_sh, repl = partitioning.batch_sharding(mesh), partitioning.replicated(mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        # compiled once, here
        compiled, abstract, shardings = compile_train_step(
            model, tx, schedule, step_config, mesh, shapes
        )
        eval_step = jax.jit(
            train_state.make_eval_step(model.loss_fn),
            in_shardings=(shardings["params"], batch_sh),
            out_shardings=repl,
        )
        log = metrics_log.MetricsLogger(
            run.model_dir,
            total_steps=run.train_steps,
            flops_per_device_step=metrics_log.step_flops(compiled),
            model_flops_per_step=flops.train_flops_per_step(model.config, shapes),
        )
        state, step = _restore_or_init(
            model, tx, ckpt, shapes, abstract, shardings, run, batches, log
        )
        loop = _Loop(
            compiled=compiled,
            batches=batches,
            ckpt=ckpt,
            log=log,
            run=run,
            checkpoint_period=checkpoint.period,
            evaluate=lambda params: _evaluate(
                eval_step, params, eval_batches, mesh, data.batch_size
            ),
            tokens_per_step=_tokens_per_step(shapes),
        )
        try:
            state = loop.run_from(state, step)
        finally:
            ckpt.close()
            log.close()
    return state


@dataclasses.dataclass(kw_only=True)
class _Loop:
    """The train loop's collaborators; `run` is the loop itself."""

    compiled: Any
    batches: input_pipeline.TrainIterator
    ckpt: checkpoints.Checkpointer
    log: metrics_log.MetricsLogger
    run: RunConfig
    checkpoint_period: int
    evaluate: Any
    tokens_per_step: int

    def _log(self, step: int, window: MetricsWindow, seconds: float) -> None:
        sums, n = window.pop()
        summary = dict(train_state.summarize(sums, n), learning_rate=sums["learning_rate"])
        summary["grad_norm"] = sums["grad_norm"] / n
        tokens = self.tokens_per_step * n
        self.log.log_train(
            step,
            summary,
            num_steps=n,
            seconds=seconds,
            tokens=tokens,
            target_tokens=sums["weight_sum"],
        )

    def run_from(self, state, step: int):
        """Steps from `step` to TRAIN_STEPS; checkpoints, evals and logs on their periods."""
        run, (watcher, own_watcher) = self.run, PreemptionWatcher.install()
        window = MetricsWindow()
        fingerprints = _FingerprintLog(run) if run.record_batch_fingerprints else None
        t0 = time.perf_counter()
        try:
            if watcher.should_stop(step):
                self.log.info(f"SIGTERM before training started (step {step}); nothing to save")
                return state
            while step < run.train_steps:
                self.ckpt.poll()  # a failed background save stops the run here
                batch, local = next(self.batches)
                if fingerprints:
                    fingerprints.write(step + 1, local)
                state, metrics = self.compiled(state, batch)  # async: no host sync here
                step += 1
                window.add(step, metrics)
                stop, last = watcher.should_stop(step), step == run.train_steps
                save = step % self.checkpoint_period == 0 or last or stop
                evaluate = bool(run.eval_period) and (step % run.eval_period == 0 or last)
                log = step % run.log_period == 0 or last or stop
                if save or evaluate or log:
                    window.drain(self.ckpt.last_good)  # a NaN loss stops here, unsaved
                if log and window.num_steps:
                    self._log(step, window, time.perf_counter() - t0)
                    t0 = time.perf_counter()
                if save:  # raises if the state is not finite: no checkpoint of it
                    self.ckpt.save(step, state, self.batches)
                if evaluate:
                    self.log.log_eval(step, self.evaluate(state["params"]))
                if stop:
                    self.log.info(f"SIGTERM: saved checkpoint at step {step}; exiting")
                    break
        finally:
            if own_watcher:
                watcher.close()
        return state


class _FingerprintLog:
    """MODEL_DIR/batches/process_<i>.jsonl: {"step", "hash"} of each step's local batch."""

    def __init__(self, run: RunConfig):
        path = os.path.join(run.model_dir, "batches", f"process_{jax.process_index()}.jsonl")
        tf.io.gfile.makedirs(os.path.dirname(path))
        self._file = tf.io.gfile.GFile(path, "a")

    def write(self, step: int, local) -> None:
        self._file.write(
            json.dumps({"step": step, "hash": input_pipeline.fingerprint(local)}) + "\n"
        )
        self._file.flush()
