#!/usr/bin/env bash
# The accelerator table of BENCHMARKS.md ("Train step on one GPU"), sized for one H200 in
# under 8 minutes. Needs jax, flax, optax and numpy only (no TensorFlow, seqio or gin).
# Usage (repository root): bash bench/gpu_table.sh
set -euo pipefail
run() {
  timeout 150 python -m bench.train_step --variants_of= --small_steps 8 \
    --matmul_dtype bfloat16 --matmul_size 8192 --packed "$@" || echo "row failed: $*"
}
ENC=(--small_batch_size 64 --inputs 512 --targets 128)
# before: the previous defaults (float32, dense-bias einsum attention, unscanned)
run --configs t5_1_1/base "${ENC[@]}" \
  --bind "dtype = 'float32'" --bind "attention_impl = 'einsum'" --bind "scan_layers = False"
# as shipped now: bfloat16, fused attention with segment ids, scan (+ remat from large up)
run --configs t5_1_1/base "${ENC[@]}"
run --configs t5_1_1/large "${ENC[@]}"
run --configs t5_1_1/xl --small_batch_size 32 --inputs 512 --targets 128
run --configs decoder_only/large --small_batch_size 32 --inputs 896 --targets 128
# ~1B decoder-only (d 2048, 16 layers, 16 heads of 128) on packed 2048-token rows
run --configs decoder_only/large --small_batch_size 32 --inputs 1792 --targets 256 \
  --bind "emb_dim = 2048" --bind "num_heads = 16" --bind "head_dim = 128" \
  --bind "num_decoder_layers = 16" --bind "mlp_dim = 5632"
