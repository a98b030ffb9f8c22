"""Analytic model FLOPs of a train step and the devices' peak FLOP/s: MFU on every backend.

Model FLOPs per train step (PaLM, appendix B; the convention MaxText and T5X-era MFU use):

  3 x forward, forward = 2 x (matmul parameters) per token + 4 x H x d_head x L_q x L_k per
  attention layer per row

i.e. 6 N per token plus 12 H d_head L_q L_k per attention layer and row. N counts the matmul
weights a token passes through: attention q/k/v/out, MLP wi_*/wo, the logits projection (tied
or not); the decoder's cross-attention key/value weights count per encoder token. The input
embedding lookup, norms, the T5 relative-position bias and softmax are not counted. Attention
counts the whole row (L_q x L_k, no halving for causal masks, packed rows as one row): the work
the einsum reference does. Remat recomputation is not model FLOPs. XLA's cost analysis is only
a second opinion: on GPU it reports 5-50x too few FLOPs and it counts a scanned layer stack
once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp

# Dense bfloat16 peak FLOP/s per chip (vendor figures, no sparsity), matched against
# jax.Device.device_kind (lower case) in order: the first substring found wins.
PEAK_BF16_FLOPS = (
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),
    ("tpu v6", 918e12),  # v6e (Trillium)
    ("tpu v4", 275e12),
    ("h200", 989e12),
    ("h100", 989e12),  # SXM; the PCIe part is 756 TFLOP/s
    ("a100", 312e12),
)


def peak_flops(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of one device from PEAK_BF16_FLOPS (None: not in the table)."""
    kind = device_kind.lower()
    for name, flops in PEAK_BF16_FLOPS:
        if name in kind:
            return flops
    return None


def layer_params(config) -> dict[str, int]:
    """Matmul weights of one attention block, one MLP and the logits projection."""
    d, h, kv, dh = config.emb_dim, config.num_heads, config.kv_heads, config.head_dim
    return {
        "attention": d * h * dh * 2 + d * kv * dh * 2,  # query + out, key + value
        "mlp": d * config.mlp_dim * (len(config.mlp_activations) + 1),
        "logits": d * config.vocab_size,
    }


def forward_flops(config, batch: int, input_length: int, target_length: int) -> float:
    """Forward-pass model FLOPs of `batch` rows.

    Encoder-decoder (num_encoder_layers > 0): `input_length` encoder and `target_length`
    decoder positions. Decoder-only: one row of `target_length` positions (inputs included;
    `input_length` is ignored).
    """
    p = layer_params(config)
    hd = config.num_heads * config.head_dim
    n_enc, n_dec = config.num_encoder_layers, config.num_decoder_layers
    per_row = 2 * (n_dec * (p["attention"] + p["mlp"]) + p["logits"]) * target_length
    per_row += 4 * hd * n_dec * target_length**2
    if n_enc:
        # cross-attention: query/out per decoder token, key/value per encoder token
        qo = 2 * config.emb_dim * hd
        per_row += 2 * n_dec * (qo * target_length + (p["attention"] - qo) * input_length)
        per_row += 2 * n_enc * (p["attention"] + p["mlp"]) * input_length
        per_row += 4 * hd * (n_enc * input_length**2 + n_dec * target_length * input_length)
    return float(batch * per_row)


def train_flops_per_step(config, shapes: Mapping[str, tuple[int, ...]]) -> float:
    """Model FLOPs of one train step (all devices) for model input shapes {feature: (B, L)}."""
    batch, target_length = shapes["decoder_input_tokens"]
    input_length = shapes["encoder_input_tokens"][1] if "encoder_input_tokens" in shapes else 0
    return 3.0 * forward_flops(config, batch, input_length, target_length)


def mfu(model_flops_per_s_per_device: float, device_kind: str) -> float | None:
    """Model FLOPs utilisation against the table's bf16 peak (None: device not in the table)."""
    peak = peak_flops(device_kind)
    return None if peak is None else model_flops_per_s_per_device / peak


def measured_matmul_peak(*, size: int = 1024, dtype: str = "float32", repeats: int = 3) -> float:
    """FLOP/s of a jitted [size, size] x [size, size] product, best of `repeats`: the practical
    peak of a device with no table entry (CPU)."""
    a = jnp.ones((size, size), dtype)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def device_peak(device_kind: str) -> tuple[float, str]:
    """(peak FLOP/s per device, where it comes from): the bf16 table, else a measured matmul."""
    peak = peak_flops(device_kind)
    if peak is not None:
        return peak, "bf16 peak"
    return measured_matmul_peak(), "measured matmul peak"
