"""Train-step benchmark: speed, achieved FLOP/s vs a matmul peak of the same run, compile, memory.

Per config: steps/s, target tokens/s, achieved FLOP/s (XLA cost analysis of the compiled
per-device step of the plain model, no scan or remat, over the step's best wall time) and its
share of `bench.common`'s matmul peak measured in the same run, compile time cold and from
the persistent compilation cache, and peak memory per device (XLA memory_analysis:
arguments + outputs - donated + temporaries + generated code).
Variant rows turn `scan_layers` / remat on for one config. Usage:
  python -m bench.train_step [--configs t5_1_1/tiny,...] [--variants_of t5_1_1/small]
Prints a table and appends one JSON line to bench/results/train_step.jsonl.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import numpy as np
from flax import linen as nn

import gin
from bench import common
from flan_jax import optimizer, partitioning, specs, train, train_state

CONFIGS = (
    "t5_1_1/tiny", "decoder_only/tiny", "t5_1_1/small", "decoder_only/small",
    "t5_1_1/base", "decoder_only/base",
)  # fmt: skip
# (label, gin bindings of network.TransformerConfig)
VARIANTS = (
    ("scan", ("scan_layers = True",)),
    ("remat full", ("remat_policy = 'full'",)),
    ("scan + remat full", ("scan_layers = True", "remat_policy = 'full'")),
)
COLUMNS = (
    "config", "variant", "params(M)", "batch", "compile cold(s)", "compile cached(s)",
    "steps/s", "tgt tok/s", "GFLOP/step", "XLA GFLOP/step", "GFLOP/s", "of peak", "peak MiB",
)  # fmt: skip


@gin.configurable("bench_model")
def _bench_model(model=gin.REQUIRED):
    return model


def build_model(config: str, bindings: tuple[str, ...] = ()):
    """The MODEL of gin/models/<config>.gin, with `network.TransformerConfig.<binding>`s."""
    gin.clear_config()
    path = str(specs.spec_dir("gin") / "models" / f"{config}.gin")
    extra = [f"network.TransformerConfig.{b}" for b in bindings]
    gin.parse_config_files_and_bindings([path], ["bench_model.model = %MODEL", *extra])
    return _bench_model()


def random_batch(model, batch_size: int, inputs: int, targets: int) -> dict[str, np.ndarray]:
    """Unpacked rows of random tokens; loss on the `targets` tokens of each row only."""
    rng = np.random.default_rng(0)
    lengths = model.feature_converter_cls(pack=False).get_model_feature_lengths(
        {"inputs": inputs, "targets": targets}
    )
    vocab = model.config.vocab_size
    batch = {
        k: rng.integers(2, vocab, size=(batch_size, n)).astype(np.int32) for k, n in lengths.items()
    }
    for k, n in lengths.items():
        if k.endswith("loss_weights"):
            batch[k] = (np.arange(n) >= n - targets).astype(np.int32)[None].repeat(batch_size, 0)
        elif k.endswith("causal_attention"):  # prefix LM: the inputs attend bidirectionally
            batch[k] = (np.arange(n) < n - targets).astype(np.int32)[None].repeat(batch_size, 0)
    return batch


def _compile(model, tx, cfg, mesh, shapes):
    start = time.perf_counter()
    compiled, abstract, shardings = train.compile_train_step(
        model, tx, optimizer.make_schedule(cfg), train_state.StepConfig(), mesh, shapes
    )
    return compiled, abstract, shardings, time.perf_counter() - start


def bench_config(config: str, variant: str, bindings, mesh, *, steps, batch_size, inputs, targets):
    """One row: compile cold then from the persistent cache, `steps` timed steps (best of)."""
    model = build_model(config, bindings)
    batch = random_batch(model, batch_size, inputs, targets)
    shapes = {k: v.shape for k, v in batch.items()}
    cfg = optimizer.OptimizerConfig()
    tx = optimizer.make_optimizer(cfg)
    with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
        jax.clear_caches()
        compiled, abstract, sh, cold_s = _compile(model, tx, cfg, mesh, shapes)
        jax.clear_caches()  # the in-memory caches; the persistent cache keeps the executable
        compiled, abstract, sh, cached_s = _compile(model, tx, cfg, mesh, shapes)
        params = train_state.init_params(model, shapes, jax.random.PRNGKey(0), sh["params"])
        state = train_state.init_state(params, tx, sh)
        gbatch = jax.device_put(batch, partitioning.batch_sharding(mesh))
        times = []
        for i in range(steps + 1):  # the first call is a warm-up
            start = time.perf_counter()
            state, metrics = compiled(state, gbatch)
            jax.block_until_ready(metrics)
            if i:
                times.append(time.perf_counter() - start)
    seconds = min(times)  # noise on a shared machine only adds time
    report = train.memory_report(compiled)
    flops = report["flops"]
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
    return {
        "config": config,
        "variant": variant,
        "params(M)": n_params / 1e6,
        "batch": f"{batch_size}x({inputs}+{targets})",
        "compile cold(s)": cold_s,
        "compile cached(s)": cached_s,
        "steps/s": 1 / seconds,
        "tgt tok/s": batch_size * targets / seconds,
        "XLA GFLOP/step": flops / 1e9 if flops else None,
        "peak MiB": report["peak"] / 2**20,
        "step_s_min": seconds,
        "step_s_median": statistics.median(times),
        "memory_bytes": report,
    }


def _size(config: str, args) -> dict:
    small = not config.endswith("tiny")
    return dict(
        steps=args.small_steps if small else args.steps,
        batch_size=args.small_batch_size if small else args.batch_size,
        inputs=args.inputs,
        targets=args.targets,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--variants_of", default="t5_1_1/small", help="config of the scan/remat rows")
    p.add_argument("--steps", type=int, default=10, help="timed steps, tiny configs")
    p.add_argument("--batch_size", type=int, default=8, help="tiny configs")
    p.add_argument("--small_steps", type=int, default=3, help="timed steps, other configs")
    p.add_argument("--small_batch_size", type=int, default=4, help="other configs")
    p.add_argument("--inputs", type=int, default=128)
    p.add_argument("--targets", type=int, default=32)
    args = p.parse_args(argv)
    # a fresh persistent cache: the first compile of each step is cold, the second a cache hit
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="flan_jax_bench_"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    peak = common.matmul_peak_flops()
    mesh = partitioning.make_mesh((-1, 1, 1))
    print(
        f"device {peak['device']} x{jax.device_count()}, {common.host_cores()} host cores; "
        f"matmul peak ({peak['size']}^2 {peak['dtype']}) {peak['flops_per_s'] / 1e9:.1f} GFLOP/s"
    )
    configs = args.configs.split(",")
    runs = [(c, "-", ()) for c in configs]
    if args.variants_of:
        plain = [] if args.variants_of in configs else [(args.variants_of, "-", ())]
        runs += plain + [(args.variants_of, label, b) for label, b in VARIANTS]
    rows, model_flops = [], {}
    for config, variant, bindings in runs:
        row = bench_config(config, variant, bindings, mesh, **_size(config, args))
        # scan and remat do the same math: rate every variant by its plain step's FLOPs (XLA's
        # count of a scanned step covers the loop body once; remat adds recomputation)
        flops = model_flops.setdefault(config, row["XLA GFLOP/step"])
        row["GFLOP/step"] = flops
        row["GFLOP/s"] = flops / row["step_s_min"] if flops else None
        row["of_peak_ratio"] = (row["GFLOP/s"] or 0) * 1e9 / peak["flops_per_s"]
        row["of peak"] = f"{row['of_peak_ratio']:.1%}"
        rows.append(row)
        print(f"  {config} {variant}: {row['steps/s']:.3g} steps/s", flush=True)
    common.print_table("train step (FLOPs: XLA cost analysis, per device)", rows, COLUMNS)
    path = common.append_result(
        "train_step", {"matmul_peak": peak, "args": vars(args), "rows": rows}
    )
    print(f"\nappended to {path}")


if __name__ == "__main__":
    main()
