"""Train-step benchmark: speed, achieved FLOP/s vs a matmul peak of the same run, compile, memory.

Per config: steps/s, target tokens/s, model FLOP/s per device (analytic model FLOPs of
flan_jax.model.flops over the step's best wall time), MFU against the device's bf16 peak
(flan_jax.model.flops.PEAK_BF16_FLOPS; on CPU, which has no entry, the matmul peak measured in the
same run), the share of that measured matmul peak, XLA's cost-analysis count as a second
column, compile time cold and from the persistent compilation cache, and peak memory per
device (XLA memory_analysis: arguments + outputs - donated + temporaries + generated code).
Variant rows turn `scan_layers` / remat on for one config. Usage:
  python -m bench.train_step [--configs t5_1_1/tiny,...] [--variants_of t5_1_1/small]
      [--bind "remat_policy='full'"] [--packed]
On CPU every row binds dtype = 'float32' unless --bind sets a dtype (CPUs emulate bfloat16).
Prints a table and appends one JSON line to bench/results/train_step.jsonl. Needs jax, flax,
optax and numpy only: no TensorFlow or seqio, and gin only if installed (bench.model_gin reads
the model files otherwise).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import numpy as np
from flax import linen as nn

from bench import common, model_gin
from flan_jax import partitioning, specs
from flan_jax.model import flops as flops_lib
from flan_jax.training import optimizer, train_state

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
    "steps/s", "tgt tok/s", "GFLOP/step", "TFLOP/s/dev", "MFU", "of matmul peak",
    "XLA GFLOP/step", "peak MiB",
)  # fmt: skip


def build_model(config: str, bindings: tuple[str, ...] = ()):
    """The MODEL of gin/models/<config>.gin, with `network.TransformerConfig.<binding>`s."""
    gin_dir = specs.spec_dir("gin")
    path = str(gin_dir / "models" / f"{config}.gin")
    extra = [f"network.TransformerConfig.{b}" for b in bindings]
    try:
        import gin
    except ImportError:  # an accelerator machine with jax, flax and optax only
        return model_gin.read(path, gin_dir, extra)
    gin.clear_config()
    gin.add_config_file_search_path(str(gin_dir))
    gin.parse_config_files_and_bindings([path], extra)
    return gin.query_parameter("%MODEL").scoped_configurable_fn()


def feature_lengths(model, inputs: int, targets: int) -> dict[str, int]:
    """The model features and their lengths (seqio's converters' layout, without seqio)."""
    if model.config.num_encoder_layers:
        dec = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
        return {"encoder_input_tokens": inputs, **dict.fromkeys(dec, targets)}
    dec = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
    return {**dict.fromkeys(dec, inputs + targets), "decoder_causal_attention": inputs + targets}


def random_batch(
    model, batch_size: int, inputs: int, targets: int, packed: bool = False
) -> dict[str, np.ndarray]:
    """Rows of random tokens; loss on the `targets` tokens of each row only.

    `packed`: each row holds two examples of half the lengths, with segment ids and positions
    (the packed layout's masks and fused-attention path).
    """
    rng = np.random.default_rng(0)
    lengths = feature_lengths(model, inputs, targets)
    vocab = model.config.vocab_size
    batch = {
        k: rng.integers(2, vocab, size=(batch_size, n)).astype(np.int32) for k, n in lengths.items()
    }
    parts = 2 if packed else 1
    for k, n in lengths.items():
        row = np.arange(n) % (n // parts)
        if k.endswith("loss_weights"):
            keep = row >= n // parts - targets // parts
            batch[k] = keep.astype(np.int32)[None].repeat(batch_size, 0)
        elif k.endswith("causal_attention"):  # prefix LM: the inputs attend bidirectionally
            keep = row < n // parts - targets // parts
            batch[k] = keep.astype(np.int32)[None].repeat(batch_size, 0)
    if packed:
        for k, n in lengths.items():
            prefix = k.split("_", 1)[0]
            seg = (np.arange(n) // (n // parts) + 1).astype(np.int32)
            batch[f"{prefix}_segment_ids"] = seg[None].repeat(batch_size, 0)
            pos = (np.arange(n) % (n // parts)).astype(np.int32)
            batch[f"{prefix}_positions"] = pos[None].repeat(batch_size, 0)
    return batch


def _compile(model, tx, cfg, mesh, shapes):
    start = time.perf_counter()
    compiled, abstract, shardings = train_state.compile_train_step(
        model, tx, optimizer.make_schedule(cfg), train_state.StepConfig(), mesh, shapes
    )
    return compiled, abstract, shardings, time.perf_counter() - start


def bench_config(
    config: str, variant: str, bindings, mesh, *, steps, batch_size, inputs, targets, packed
):
    """One row: compile cold then from the persistent cache, `steps` timed steps (best of)."""
    model = build_model(config, bindings)
    batch = random_batch(model, batch_size, inputs, targets, packed)
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
    report = train_state.memory_report(compiled)
    flops = report["flops"]
    model_flops = flops_lib.train_flops_per_step(model.config, shapes)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
    return {
        "config": config,
        "variant": variant,
        "params(M)": n_params / 1e6,
        "batch": f"{batch_size}x({inputs}+{targets})" + (" packed" if packed else ""),
        "compile cold(s)": cold_s,
        "compile cached(s)": cached_s,
        "steps/s": 1 / seconds,
        "tgt tok/s": batch_size * targets / seconds,
        "GFLOP/step": model_flops / 1e9,
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
        packed=args.packed,
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
    p.add_argument("--packed", action="store_true", help="two examples per row, segment ids")
    p.add_argument(
        "--bind",
        action="append",
        default=[],
        help="network.TransformerConfig binding for every row, e.g. \"dtype = 'bfloat16'\"",
    )
    p.add_argument("--matmul_dtype", default="float32", help="dtype of the measured matmul peak")
    p.add_argument("--matmul_size", type=int, default=2048)
    args = p.parse_args(argv)
    # a fresh persistent cache: the first compile of each step is cold, the second a cache hit
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="flan_jax_bench_"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    peak = common.matmul_peak_flops(size=args.matmul_size, dtype=args.matmul_dtype)
    kind = jax.devices()[0].device_kind
    table_peak = flops_lib.peak_flops(kind)
    mfu_peak = table_peak or peak["flops_per_s"]
    mesh = partitioning.make_mesh((-1, 1, 1))
    print(
        f"device {peak['device']} x{jax.device_count()}, {common.host_cores()} host cores; "
        f"matmul peak ({peak['size']}^2 {peak['dtype']}) {peak['flops_per_s'] / 1e9:.1f} GFLOP/s; "
        + (
            f"MFU against the bf16 peak {table_peak / 1e12:.0f} TFLOP/s"
            if table_peak
            else "MFU against the measured matmul peak (no table entry)"
        )
    )
    common_bindings = tuple(args.bind)
    if jax.default_backend() == "cpu" and not any(b.startswith("dtype") for b in args.bind):
        # the real gins compute in bfloat16, which CPUs emulate: CPU tables stay float32
        common_bindings += ("dtype = 'float32'",)
    configs = args.configs.split(",")
    runs = [(c, "-", ()) for c in configs]
    if args.variants_of:
        plain = [] if args.variants_of in configs else [(args.variants_of, "-", ())]
        runs += plain + [(args.variants_of, label, b) for label, b in VARIANTS]
    rows = []
    for config, variant, bindings in runs:
        row = bench_config(config, variant, common_bindings + bindings, mesh, **_size(config, args))
        # analytic model FLOPs: the same for scan / remat variants (XLA counts a scanned body
        # once and remat's recomputation; its column is a second opinion only)
        per_dev = row["GFLOP/step"] * 1e9 / jax.device_count() / row["step_s_min"]
        row["TFLOP/s/dev"] = per_dev / 1e12
        row["mfu_ratio"] = per_dev / mfu_peak
        row["MFU"] = f"{row['mfu_ratio']:.1%}"
        row["of_peak_ratio"] = per_dev / peak["flops_per_s"]
        row["of matmul peak"] = f"{row['of_peak_ratio']:.1%}"
        rows.append(row)
        print(f"  {config} {variant}: {row['steps/s']:.3g} steps/s", flush=True)
    title = (
        "train step (model FLOPs: analytic, flan_jax.model.flops; XLA: cost analysis per device)"
    )
    common.print_table(title, rows, COLUMNS)
    path = common.append_result(
        "train_step", {"matmul_peak": peak, "args": vars(args), "rows": rows}
    )
    print(f"\nappended to {path}")


if __name__ == "__main__":
    main()
