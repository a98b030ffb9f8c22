"""Train-step benchmark: steps/s, target tokens/s, achieved FLOP/s vs a matmul peak (same run).

FLOPs come from XLA's cost analysis of the compiled (per-device) step. Usage:
  python -m bench.train_step [--steps 5] [--configs t5_1_1/tiny,decoder_only/tiny,...]
Prints a table and appends one JSON line per config to bench/results/train_step.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

import gin
from flan_jax import metrics_log, optimizer, partitioning, specs, train_state

CONFIGS = ("t5_1_1/tiny", "decoder_only/tiny", "t5_1_1/small", "decoder_only/small")


def matmul_peak_flops(n: int = 1024, reps: int = 10) -> float:
    """FLOP/s of a float32 [n, n] @ [n, n] on one device (the achievable peak reference)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t)


@gin.configurable("bench_model")
def _bench_model(model=gin.REQUIRED):
    return model


def build_model(config: str):
    """The MODEL of gin/models/<config>.gin."""
    gin.clear_config()
    path = str(specs.spec_dir("gin") / "models" / f"{config}.gin")
    gin.parse_config_files_and_bindings([path], ["bench_model.model = %MODEL"])
    return _bench_model()


def random_batch(
    model, batch_size: int, inputs: int, targets: int, vocab: int
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = model.feature_converter_cls(pack=False).get_model_feature_lengths(
        {"inputs": inputs, "targets": targets}
    )
    batch = {
        k: rng.integers(2, vocab, size=(batch_size, n)).astype(np.int32) for k, n in lengths.items()
    }
    for k in batch:
        if k.endswith("loss_weights") or k.endswith("causal_attention"):
            batch[k] = np.ones_like(batch[k])
    return batch


def bench_config(config: str, mesh, steps: int, batch_size: int, inputs: int, targets: int) -> dict:
    model = build_model(config)
    batch = random_batch(model, batch_size, inputs, targets, model.config.vocab_size)
    shapes = {k: v.shape for k, v in batch.items()}
    cfg = optimizer.OptimizerConfig()
    tx = optimizer.make_optimizer(cfg)
    with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
        abstract, sh = train_state.state_shardings(model, tx, shapes, mesh)
        params = train_state.init_params(model, shapes, jax.random.PRNGKey(0), sh["params"])
        state = train_state.init_state(params, tx, sh)
        bsh = partitioning.batch_sharding(mesh)
        step_fn = train_state.make_train_step(
            model.loss_fn, tx, optimizer.make_schedule(cfg), train_state.StepConfig(), mesh
        )
        step = jax.jit(
            step_fn,
            in_shardings=(sh, bsh),
            out_shardings=(sh, partitioning.replicated(mesh)),
            donate_argnums=0,
        )
        batch_abstract = {
            k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh) for k, v in batch.items()
        }
        t = time.perf_counter()
        compiled = step.lower(abstract, batch_abstract).compile()
        compile_s = time.perf_counter() - t
        gbatch = jax.device_put(batch, bsh)
        state, m = compiled(state, gbatch)
        jax.block_until_ready(m)
        t = time.perf_counter()
        for _ in range(steps):
            state, m = compiled(state, gbatch)
        jax.block_until_ready(m)
        seconds = (time.perf_counter() - t) / steps
    flops = metrics_log.step_flops(compiled)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
    return {
        "config": config,
        "params_m": n_params / 1e6,
        "compile_s": compile_s,
        "steps_per_s": 1 / seconds,
        "target_tokens_per_s": batch_size * targets / seconds,
        "flops_per_s_per_device": flops / seconds if flops else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--inputs", type=int, default=128)
    p.add_argument("--targets", type=int, default=32)
    p.add_argument("--configs", default=",".join(CONFIGS))
    args = p.parse_args()
    mesh = partitioning.make_mesh((-1, 1, 1))
    peak = matmul_peak_flops()
    kind = jax.devices()[0].device_kind
    print(f"device {kind} x{jax.device_count()}, matmul peak {peak / 1e9:.1f} GFLOP/s/device")
    columns = ("params(M)", "compile(s)", "steps/s", "tgt tok/s", "GFLOP/s/dev", "of peak")
    print(f"{'config':22s} " + " ".join(f"{c:>11s}" for c in columns))
    os.makedirs("bench/results", exist_ok=True)
    for config in args.configs.split(","):
        r = bench_config(config, mesh, args.steps, args.batch_size, args.inputs, args.targets)
        f = r["flops_per_s_per_device"]
        print(
            f"{config:22s} {r['params_m']:11.2f} {r['compile_s']:11.1f} {r['steps_per_s']:11.2f} "
            f"{r['target_tokens_per_s']:11.0f} {(f or 0) / 1e9:11.2f} {(f or 0) / peak:11.1%}"
        )
        r.update(
            matmul_peak_flops_per_s=peak,
            machine=platform.machine(),
            jax=jax.__version__,
            **vars(args),
        )
        with open("bench/results/train_step.jsonl", "a") as out:
            out.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
