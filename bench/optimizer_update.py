"""Adafactor update benchmark: the optimizer step alone, and its share of the train step.

Times one jitted `tx.update` + `optax.apply_updates` (parameters and optimizer state donated,
as in the train step) on a model's float32 parameters for: optax.adafactor as flan_jax
configured it before (OptimizerConfig(implementation="optax")), flan_jax's Adafactor
(flan_jax.training.adafactor, the default) and, with --t5x_path, T5X's own Adafactor with the
same hyperparameters. The implementations alternate call by call (A B C, B C A, ...) so that a
shared machine's drift hits each alike; the table gives min and median ms per update and the
median ratio to optax. Then the whole train step (the default optimizer) is timed the same way
and the update's share of it reported. "passes" is XLA's cost-analysis count of bytes the
compiled update reads and writes, in units of the float32 parameters' size (deterministic,
unlike the times). Usage:
  python -m bench.optimizer_update [--config t5_1_1/small] [--repeats 15]
      [--t5x_path /path/to/t5x/checkout]
--t5x_path: a google-research/t5x checkout (or its t5x/adafactor.py). T5X is not installable
here (its pins conflict), so only that module is loaded, with two small stand-ins for the
t5x.utils and t5x.optimizers names it imports. Appends one JSON line to
bench/results/optimizer_update.jsonl.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import sys
import time
import types
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from bench import common
from bench import train_step as bench_step
from flan_jax import partitioning
from flan_jax.training import optimizer, train_state

COLUMNS = (
    "implementation", "ms/update min", "ms/update median", "vs optax", "passes (XLA bytes)",
    "max rel diff",
)  # fmt: skip


def load_t5x_adafactor(path: str) -> types.ModuleType:
    """T5X's adafactor.py as a module; t5x.utils / t5x.optimizers are minimal stand-ins."""
    src = pathlib.Path(path)
    src = src if src.suffix == ".py" else src / "t5x" / "adafactor.py"
    utils = types.ModuleType("t5x.utils")
    utils.flatten_dict_string_keys = lambda x: flax.traverse_util.flatten_dict(
        flax.core.unfreeze(x), sep="/"
    )
    optimizers = types.ModuleType("t5x.optimizers")

    @flax.struct.dataclass
    class OptimizerState:
        step: Any
        param_states: Any

    class OptimizerDef:
        def __init__(self, hyper_params):
            self.hyper_params = hyper_params

    optimizers.OptimizerState, optimizers.OptimizerDef = OptimizerState, OptimizerDef
    package = types.ModuleType("t5x")
    package.utils, package.optimizers = utils, optimizers
    sys.modules.update({"t5x": package, "t5x.utils": utils, "t5x.optimizers": optimizers})
    spec = importlib.util.spec_from_file_location("t5x.adafactor", src)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def update_fns(cfg: optimizer.OptimizerConfig, t5x_path: str | None):
    """{name: (init(params) -> state, step(params, state, grads) -> (params, state))}."""
    fns = {}
    for impl in ("optax", "flan_jax"):
        tx = optimizer.make_optimizer(optimizer.OptimizerConfig(implementation=impl))

        def step(params, state, grads, tx=tx):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        fns[impl] = (tx.init, step)
    if t5x_path:
        t5x = load_t5x_adafactor(t5x_path).Adafactor(
            learning_rate=cfg.learning_rate,
            decay_rate=cfg.decay_rate,
            clipping_threshold=cfg.clipping_threshold,
            multiply_by_parameter_scale=cfg.multiply_by_parameter_scale,
        )
        fns["t5x"] = (
            t5x.init_state,
            lambda p, s, g: t5x.apply_gradient(t5x.hyper_params, p, s, g),
        )
    return fns


def alternate(calls: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each `calls[name]()`, called in turn, the first of a round rotating
    (A B C, B C A, ...: none always follows the same one); the first round is a warm-up."""
    times, names = {name: [] for name in calls}, list(calls)
    for i in range(repeats + 1):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            call = calls[name]
            start = time.perf_counter()
            call()
            if i:
                times[name].append(time.perf_counter() - start)
    return times


def time_updates(params, grads, fns, repeats: int):
    """Per implementation: its times, its parameters after one update from the same state, and
    XLA's count of bytes the compiled update reads and writes."""
    jitted = {
        name: (jax.jit(init), jax.jit(step, donate_argnums=(0, 1)))
        for name, (init, step) in fns.items()
    }
    first, carry, bytes_accessed = {}, {}, {}
    for name, (init, step) in jitted.items():
        cost = step.lower(params, init(params), grads).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        bytes_accessed[name] = float((cost or {}).get("bytes accessed", float("nan")))
        p = jax.tree.map(jnp.copy, params)
        first[name] = jax.device_get(step(p, init(p), grads)[0])
        p = jax.tree.map(jnp.copy, params)
        carry[name] = (p, init(p))

    def call(name):
        def run():
            carry[name] = jitted[name][1](*carry[name], grads)
            jax.block_until_ready(carry[name])

        return run

    return alternate({n: call(n) for n in jitted}, repeats), first, bytes_accessed


def time_train_step(config: str, batch, repeats: int) -> list[float]:
    """The compiled train step with the default optimizer (bench.train_step's set-up)."""
    model = bench_step.build_model(config, ("dtype = 'float32'",))
    shapes = {k: v.shape for k, v in batch.items()}
    cfg = optimizer.OptimizerConfig()
    tx = optimizer.make_optimizer(cfg)
    mesh = partitioning.make_mesh((-1, 1, 1))
    with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
        compiled, _, sh = train_state.compile_train_step(
            model, tx, optimizer.make_schedule(cfg), train_state.StepConfig(), mesh, shapes
        )
        params = train_state.init_params(model, shapes, jax.random.PRNGKey(0), sh["params"])
        state = {"s": train_state.init_state(params, tx, sh)}
        gbatch = jax.device_put(batch, partitioning.batch_sharding(mesh))

        def run():
            state["s"], metrics = compiled(state["s"], gbatch)
            jax.block_until_ready(metrics)

        return alternate({"step": run}, repeats)["step"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="t5_1_1/small")
    p.add_argument("--repeats", type=int, default=15, help="timed updates per implementation")
    p.add_argument("--step_repeats", type=int, default=5, help="timed train steps")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--inputs", type=int, default=128)
    p.add_argument("--targets", type=int, default=32)
    p.add_argument("--t5x_path", default=None, help="a google-research/t5x checkout")
    args = p.parse_args(argv)
    model = bench_step.build_model(args.config, ("dtype = 'float32'",))
    batch = bench_step.random_batch(model, args.batch_size, args.inputs, args.targets)
    shapes = {k: v.shape for k, v in batch.items()}
    params = jax.jit(lambda r: nn.unbox(model.get_initial_variables(r, shapes)["params"]))(
        jax.random.PRNGKey(0)
    )
    keys = iter(jax.random.split(jax.random.PRNGKey(1), len(jax.tree.leaves(params))))
    grads = jax.tree.map(lambda x: 1e-3 * jax.random.normal(next(keys), x.shape), params)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    fns = update_fns(optimizer.OptimizerConfig(), args.t5x_path)
    times, first, bytes_accessed = time_updates(params, grads, fns, args.repeats)
    step_times = time_train_step(args.config, batch, args.step_repeats)
    ref = first["optax"]
    rows = []
    for name, ts in times.items():
        diff = max(
            float(np.max(np.abs((a - p0) - (b - p0))) / max(np.max(np.abs(b - p0)), 1e-30))
            for a, b, p0 in zip(*(jax.tree.leaves(t) for t in (first[name], ref, params)))
        )
        rows.append(
            {
                "implementation": name,
                "ms/update min": 1e3 * min(ts),
                "ms/update median": 1e3 * statistics.median(ts),
                "vs optax": statistics.median(ts) / statistics.median(times["optax"]),
                "passes (XLA bytes)": bytes_accessed[name] / (4 * n_params),
                "max rel diff": f"{diff:.1e}",
            }
        )
    step_ms = 1e3 * statistics.median(step_times)
    default_ms = 1e3 * statistics.median(times["flan_jax"])
    print(
        f"{args.config}: {n_params / 1e6:.1f}M float32 parameters, {common.host_cores()} host "
        f"cores, {args.repeats} alternating updates each"
    )
    common.print_table(
        "Adafactor update + apply (max rel diff: first update vs optax's, per leaf)", rows, COLUMNS
    )
    print(
        f"\ntrain step ({args.batch_size}x({args.inputs}+{args.targets}), default optimizer): "
        f"median {step_ms:.0f} ms (min {1e3 * min(step_times):.0f}); the update alone is "
        f"{default_ms / step_ms:.0%} of it"
    )
    path = common.append_result(
        "optimizer_update",
        {"args": vars(args), "rows": rows, "train_step_ms": [1e3 * t for t in step_times]},
    )
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
