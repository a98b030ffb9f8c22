"""Analytic model FLOPs (flan_jax.model.flops) against a hand count and the traced forward pass."""

import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_configs import LLAMA, T5_TINY

from flan_jax.model import flops, models

B, L_IN, L_TGT = 2, 12, 8


def test_decoder_only_hand_count():
    # LLAMA: d 32, 4 query heads / 2 kv heads of 8, SwiGLU mlp 64, vocab 64, 2 layers.
    attention = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32  # q, k, v, out
    mlp = 32 * 64 * 2 + 64 * 32  # wi_0, wi_1, wo
    n = 2 * (attention + mlp) + 32 * 64  # + logits
    assert n == 20480
    per_row = 2 * n * 16 + 2 * 4 * (4 * 8) * 16 * 16  # 2N per token; QK^T and AV per layer
    want = 3 * B * per_row
    assert want == 4_325_376
    assert flops.train_flops_per_step(LLAMA, {"decoder_input_tokens": (B, 16)}) == want


def test_encoder_decoder_hand_count():
    # T5_TINY: d 128, 4 heads of 32, gated-GELU mlp 512, vocab 384, 2 + 2 layers, untied logits.
    attention = 4 * 128 * 128
    mlp = 128 * 512 * 3
    enc = 2 * (attention + mlp) * 2 * L_IN  # 2 layers, 2 FLOPs per weight per token
    dec = (2 * (attention + mlp) + 128 * 384) * 2 * L_TGT  # self-attention, mlp, logits
    # cross-attention: query and out per decoder token, key and value per encoder token
    dec += 2 * (2 * 128 * 128 * 2 * L_TGT + 2 * 128 * 128 * 2 * L_IN)
    hd = 4 * 32
    attn = 4 * hd * (2 * L_IN * L_IN + 2 * L_TGT * L_TGT + 2 * L_TGT * L_IN)
    want = 3 * B * (enc + dec + attn)
    shapes = {"encoder_input_tokens": (B, L_IN), "decoder_input_tokens": (B, L_TGT)}
    assert flops.train_flops_per_step(T5_TINY, shapes) == want


def _dot_flops(jaxpr) -> int:
    """2 x output size x contracted size, summed over every dot_general (nested jaxprs too)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2 * int(np.prod(out)) * int(np.prod([lhs[i] for i in contract]))
        for sub in jax.core.jaxprs_in_params(eqn.params):
            total += _dot_flops(sub)
    return total


@pytest.mark.parametrize("name", ["t5", "decoder_only"])
def test_formula_matches_the_traced_forward_matmuls(name):
    if name == "t5":
        cfg = dataclasses.replace(T5_TINY, one_hot_embed=False)  # a lookup, not a matmul
        model = models.EncoderDecoderModel(cfg)
        shapes = {"encoder_input_tokens": (B, L_IN), "decoder_input_tokens": (B, L_TGT)}
        args = (jnp.ones((B, L_IN), jnp.int32), jnp.ones((B, L_TGT), jnp.int32))
        args += (args[1],)
        # the relative-position bias is a [heads, buckets] x one-hot einsum per stack: not
        # model FLOPs
        relpos = 2 * 4 * 32 * (L_IN * L_IN + L_TGT * L_TGT)
    else:
        cfg = dataclasses.replace(LLAMA, one_hot_embed=False)
        model = models.DecoderOnlyModel(cfg)
        shapes = {"decoder_input_tokens": (B, L_TGT)}
        args = (jnp.ones((B, L_TGT), jnp.int32),)
        relpos = 0
    params = jax.eval_shape(lambda: model.get_initial_variables(jax.random.key(0), shapes))
    traced = jax.make_jaxpr(lambda p: model.module.apply(p, *args))(params)
    forward = flops.forward_flops(cfg, B, L_IN, L_TGT)
    assert _dot_flops(traced.jaxpr) - relpos == forward
    assert flops.train_flops_per_step(cfg, shapes) == 3 * forward


def test_peak_table():
    assert flops.peak_flops("NVIDIA H200") == 989e12
    assert flops.peak_flops("TPU v5 lite") == 197e12
    assert flops.peak_flops("TPU v5p") == 459e12
    assert flops.peak_flops("TPU v4") == 275e12
    assert flops.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.peak_flops("cpu") is None
    assert flops.mfu(494.5e12, "NVIDIA H100 80GB HBM3") == pytest.approx(0.5)


def test_progress_line_shows_analytic_mfu_then_xla(tmp_path):
    from flan_jax.training import metrics_log

    stream = io.StringIO()
    n_dev = jax.device_count()
    log = metrics_log.MetricsLogger(
        str(tmp_path),
        total_steps=10,
        flops_per_device_step=2e9,  # XLA's (too low) count
        model_flops_per_step=n_dev * 1e11,
        peak_flops_per_device=1e12,
        stream=stream,
    )
    record = log.log_train(
        4, {"loss": 1.0, "accuracy": 0.5}, num_steps=2, seconds=1.0, tokens=100, target_tokens=50
    )
    log.close()
    # 1e11 model FLOPs per device in a 0.5 s step: 0.2 TFLOP/s, 20% of a 1 TFLOP/s peak
    assert record["model_flops_per_s_per_device"] == pytest.approx(2e11)
    assert record["mfu"] == pytest.approx(0.2)
    assert record["xla_flops_per_s_per_device"] == pytest.approx(4e9)
    assert stream.getvalue().rstrip().endswith("0.2 TFLOP/s/dev MFU 20.0% (XLA 0.004)")
