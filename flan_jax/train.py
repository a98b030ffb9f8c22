"""The gin entry point (`flan-jax train`, `python -m flan_jax.train`) and the train loop."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import time
from typing import Any

import jax
import numpy as np
import tensorflow as tf
from flax import linen as nn
from jax.sharding import Mesh

from flan_jax import checkpoints, input_pipeline, metrics_log, optimizer, partitioning, train_state
from flan_jax.checkpoints import CheckpointConfig
from flan_jax.input_pipeline import DataConfig
from flan_jax.optimizer import OptimizerConfig
from flan_jax.train_state import StepConfig


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

    Multi-host: JAX's preemption sync point makes every host stop at the same step.
    """

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

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
    """Latest checkpoint (state + data iterator), else INITIAL_CHECKPOINT_PATH or fresh params."""
    latest = ckpt.latest_step()
    if latest is not None:
        log.info(f"restoring checkpoint step {latest} from {ckpt.directory}")
        return ckpt.restore(latest, abstract, data_iter), latest
    if run.initial_checkpoint_path:
        log.info(f"initialising params from {run.initial_checkpoint_path}")
        params = checkpoints.load_initial_params(run.initial_checkpoint_path, abstract["params"])
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


def compile_train_step(model, tx, schedule, step_config: StepConfig, mesh: Mesh, shapes):
    """The train step jitted with the real shardings, lowered on abstract values and compiled.

    Call under `jax.set_mesh(mesh)` and the logical axis rules. Returns
    (compiled, abstract state, state shardings); nothing is allocated.
    """
    batch_sh, repl = partitioning.batch_sharding(mesh), partitioning.replicated(mesh)
    abstract, shardings = train_state.state_shardings(model, tx, shapes, mesh)
    step_fn = jax.jit(
        train_state.make_train_step(model.loss_fn, tx, schedule, step_config, mesh),
        in_shardings=(shardings, batch_sh),
        out_shardings=(shardings, repl),
        donate_argnums=0,
        keep_unused=True,  # every state and batch buffer is an argument: exact memory report
    )
    batch_abstract = {
        k: jax.ShapeDtypeStruct(v, np.int32, sharding=batch_sh) for k, v in shapes.items()
    }
    return step_fn.lower(abstract, batch_abstract).compile(), abstract, shardings


MEMORY_FIELDS = {
    "arguments": "argument_size_in_bytes",
    "outputs": "output_size_in_bytes",
    "aliased (donated)": "alias_size_in_bytes",
    "temporaries": "temp_size_in_bytes",
    "generated code": "generated_code_size_in_bytes",
}


def memory_report(compiled) -> dict[str, int | float | None]:
    """Bytes per device of a compiled step (XLA's memory_analysis) and its FLOPs per device.

    `peak` = arguments + outputs - aliased + temporaries + generated code: the live set when
    every buffer is resident at once (donated state is counted once).
    """
    stats = compiled.memory_analysis()
    report = {name: int(getattr(stats, attr)) for name, attr in MEMORY_FIELDS.items()}
    report["peak"] = (
        report["arguments"] + report["outputs"] - report["aliased (donated)"]
        + report["temporaries"] + report["generated code"]
    )  # fmt: skip
    report["flops"] = metrics_log.step_flops(compiled)
    return report


def format_memory_report(report: dict, mesh: Mesh) -> str:
    """The `--precompile` table: MiB and exact bytes per device, then FLOPs per step."""
    lines = [f"memory per device (mesh {dict(mesh.shape)}, {mesh.size} devices):"]
    for name in (*MEMORY_FIELDS, "peak"):
        lines.append(f"  {name:18s} {report[name] / 2**20:12.2f} MiB {report[name]:>16d} bytes")
    flops = report["flops"]
    per_step = "n/a (no cost analysis on this backend)" if flops is None else f"{flops:.4g}"
    lines.append(f"XLA cost analysis: FLOPs per device per step {per_step}")
    if flops is not None:
        lines.append(f"XLA cost analysis: FLOPs per step (all devices) {flops * mesh.size:.4g}")
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
    converter = input_pipeline.make_converter(model.feature_converter_cls, data)
    shapes = input_pipeline.model_input_shapes(data, converter)
    tx = optimizer.make_optimizer(optimizer_config)
    schedule = optimizer.make_schedule(optimizer_config)
    rules = partitioning.LOGICAL_AXIS_RULES
    if precompile:
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            compiled, _, _ = compile_train_step(model, tx, schedule, step_config, mesh, shapes)
        report = memory_report(compiled)
        print(format_memory_report(report, mesh), flush=True)
        return report
    dataset = input_pipeline.get_train_dataset(data, converter)
    batches = input_pipeline.TrainIterator(dataset, mesh, data.batch_size)
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
        )
        state, step = _restore_or_init(
            model, tx, ckpt, shapes, abstract, shardings, run, batches.tf_iterator, log
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
        run, watcher = self.run, PreemptionWatcher()
        window, last_ckpt = MetricsWindow(), self.ckpt.latest_step()
        fingerprints = _FingerprintLog(run) if run.record_batch_fingerprints else None
        t0 = time.perf_counter()
        try:
            while step < run.train_steps:
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
                    window.drain(last_ckpt)  # a NaN stops here, before any checkpoint of it
                if log and window.num_steps:
                    self._log(step, window, time.perf_counter() - t0)
                    t0 = time.perf_counter()
                if save:
                    self.ckpt.save(step, state, self.batches.tf_iterator)
                    last_ckpt = step
                if evaluate:
                    self.log.log_eval(step, self.evaluate(state["params"]))
                if stop:
                    self.log.info(f"SIGTERM: saved checkpoint at step {step}; exiting")
                    break
        finally:
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


def main(argv: list[str] | None = None) -> int:
    """`flan-jax train --gin_file=runs/finetune.gin --gin.MODEL_DIR=...`; returns the exit code."""
    import sys

    import gin
    from flan_jax import gin_flags

    argv = sys.argv[1:] if argv is None else argv
    parser = gin_flags.make_parser("flan-jax train")
    parser.add_argument(
        "--precompile",
        action="store_true",
        help="compile the train step (AOT, real shardings), print memory per device and "
        "FLOPs per step, and exit without reading data or training",
    )
    args = gin_flags.parse(argv, "flan-jax train", parser)
    gin_flags.enable_compilation_cache(args)  # before anything compiles
    gin_flags.initialize_distributed(args)
    model_dir = gin.query_parameter("%MODEL_DIR")
    gin_flags.write_config(model_dir, gin.config_str())
    try:
        # `python -m` runs this file as __main__: use the module gin registered
        gin.get_configurable(importlib.import_module("flan_jax.train").train)(
            precompile=args.precompile
        )
    except FloatingPointError as e:
        print(f"flan-jax train: {e}", file=sys.stderr)
        return 1
    finally:
        gin_flags.write_config(model_dir, gin.operative_config_str())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
