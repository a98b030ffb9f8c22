"""Fused attention paths (flan_jax.model.fused_attention) against the einsum reference, on CPU.

Tolerances: float32 1e-5 absolute on unit-scale outputs (summation order only); bfloat16
3e-2 absolute (8 mantissa bits: both paths round q/k/v and the probabilities to bfloat16, at
different points). Only real (non-padding) query positions are compared: padding rows are
fully masked and their output is unused.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_configs import LLAMA, T5_TINY

from flan_jax.model import fused_attention, layers, models

B, L, H, K, D = 2, 16, 4, 2, 8
SEGMENTS = np.array([[1] * 6 + [2] * 7 + [0] * 3, [1] * 9 + [2] * 4 + [3] * 3], np.int32)
PREFIX = np.array([[1] * 3 + [0] * 3 + [1] * 4 + [0] * 6, [1] * 5 + [0] * 11], bool)
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 3e-2}


def _qkv(dtype, kv_heads=K):
    ks = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(ks[0], (B, L, H, D)).astype(dtype)
    k = jax.random.normal(ks[1], (B, L, kv_heads, D)).astype(dtype)
    v = jax.random.normal(ks[2], (B, L, kv_heads, D)).astype(dtype)
    return q, k, v


def _reference(q, k, v, seg, prefix, relpos, causal):
    m = layers.AttentionMask(
        q_segments=seg, kv_segments=seg, prefix=prefix, relpos=relpos, causal=causal
    )
    return layers._attend(q, k, v, m.dense_bias(jnp.float32), "einsum")


def _close(a, b, dtype):
    real = SEGMENTS > 0
    a, b = np.asarray(a, np.float32)[real], np.asarray(b, np.float32)[real]
    np.testing.assert_allclose(a, b, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("mode", ["causal", "prefix", "bidirectional_relpos", "causal_relpos"])
def test_xla_fused_path_matches_einsum(dtype, mode):
    q, k, v = _qkv(dtype)
    seg = jnp.asarray(SEGMENTS)
    prefix = jnp.asarray(PREFIX) if mode == "prefix" else None
    causal = mode != "bidirectional_relpos"
    relpos = None
    if mode.endswith("relpos"):
        relpos = jax.random.normal(jax.random.key(3), (1, H, L, L)).astype(dtype)
    want = _reference(q, k, v, seg, prefix, relpos, causal)
    got = fused_attention.xla(q, k, v, seg, seg, prefix, relpos, causal)
    assert got.dtype == dtype
    _close(got, want, dtype)


def test_splash_kernel_matches_einsum_in_interpret_mode():
    """The TPU kernel itself (Pallas interpret mode on CPU), causal + segment ids, GQA;
    splash blocks are multiples of 128 tokens."""
    n = 128
    ks = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(ks[0], (1, n, H, D))
    k, v = (jax.random.normal(x, (1, n, K, D)) for x in ks[1:])
    seg = jnp.asarray(np.repeat([1, 2, 3, 0], [50, 40, 30, 8])[None].astype(np.int32))
    got = fused_attention.splash(q, k, v, seg, interpret=True)
    want = _reference(q, k, v, seg, None, None, True)
    real = np.asarray(seg) > 0
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5, rtol=0)


def test_cudnn_packed_layout_encodes_the_segment_mask():
    """cuDNN cannot run on CPU: check the offsets/lengths it gets rebuild the reference mask."""
    seg = np.array([[1, 1, 1, 2, 2, 0, 0, 0], [1, 2, 2, 2, 3, 3, 3, 3]], np.int32)
    offsets, lengths = jax.device_get(fused_attention.segment_offsets(jnp.asarray(seg)))
    np.testing.assert_array_equal(offsets[:, :4], [[0, 3, 5, -1], [0, 1, 4, 8]])
    np.testing.assert_array_equal(lengths[:, :3], [[3, 2, -1], [1, 3, 4]])
    assert (offsets[:, 4:] == -1).all() and (lengths[:, 3:] == -1).all()
    for causal in (False, True):
        rebuilt = np.zeros((2, 8, 8), bool)
        for b in range(2):
            for s in range(int((lengths[b] > 0).sum())):
                lo, hi = offsets[b, s], offsets[b, s] + lengths[b, s]
                block = np.ones((hi - lo, hi - lo), bool)
                rebuilt[b, lo:hi, lo:hi] = np.tril(block) if causal else block
        want = fused_attention.dense_mask(jnp.asarray(seg), jnp.asarray(seg), None, causal)
        np.testing.assert_array_equal(rebuilt, np.asarray(want)[:, 0])


def _packed_batch(decoder_only: bool):
    rng = np.random.default_rng(0)
    seg = SEGMENTS
    pos = np.concatenate([np.arange(n) for n in (6, 7, 3, 9, 4, 3)]).reshape(B, L).astype(np.int32)
    tokens = np.where(seg > 0, rng.integers(2, 64, (B, L)), 0).astype(np.int32)
    batch = {
        "decoder_input_tokens": tokens,
        "decoder_target_tokens": tokens,
        "decoder_loss_weights": (seg > 0).astype(np.int32),
        "decoder_segment_ids": seg,
        "decoder_positions": pos,
    }
    if decoder_only:
        batch["decoder_causal_attention"] = (PREFIX & (seg > 0)).astype(np.int32)
    else:
        batch.update(encoder_input_tokens=tokens, encoder_segment_ids=seg, encoder_positions=pos)
    return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize(("name", "dtype"), [("t5", "float32"), ("prefix_lm", "bfloat16")])
def test_fused_model_loss_and_grads_match_einsum(name, dtype, monkeypatch):
    base = T5_TINY if name == "t5" else dataclasses.replace(LLAMA, vocab_size=64)
    cls = models.EncoderDecoderModel if name == "t5" else models.DecoderOnlyModel
    kw = {} if name == "t5" else {"inputs_bidirectional_attention": True}
    batch = _packed_batch(name != "t5")
    ref = cls(dataclasses.replace(base, dtype=dtype), **kw)
    fused = cls(dataclasses.replace(base, dtype=dtype, attention_impl="fused"), **kw)
    shapes = {k: v.shape for k, v in batch.items()}
    params = jax.tree.map(
        lambda x: x.value if hasattr(x, "value") else x,
        ref.get_initial_variables(jax.random.key(0), shapes)["params"],
        is_leaf=lambda x: hasattr(x, "value"),
    )
    seen = []
    real_attend = fused_attention.attend

    def spy(q, k, v, q_seg, kv_seg, prefix, relpos, causal, backend=None):
        seen.append((q_seg.shape, None if relpos is None else relpos.shape))
        return real_attend(q, k, v, q_seg, kv_seg, prefix, relpos, causal, backend)

    monkeypatch.setattr(fused_attention, "attend", spy)
    # on CPU the model takes the einsum (faster here); force the fused path to test it
    monkeypatch.setattr(fused_attention, "worth_it", lambda backend=None: True)

    def grad(model):
        return jax.jit(jax.value_and_grad(lambda p: model.loss_fn(p, batch, None)[0]))(params)

    (want, g_want), (got, g_got) = grad(ref), grad(fused)
    # the fused path got segment ids [b, L] and at most a [1, H, L, L] relative bias
    assert seen and all(s == (B, L) and r in (None, (1, 4, L, L)) for s, r in seen)
    tol = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(float(got), float(want), rtol=tol)
    flat_want, flat_got = jax.tree.leaves(g_want), jax.tree.leaves(g_got)
    scale = max(float(jnp.abs(g).max()) for g in flat_want)
    for a, b in zip(flat_got, flat_want, strict=True):
        assert a.dtype == jnp.float32  # float32 parameters and gradients in bf16 mode too
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol * scale * 5, rtol=0)


def test_gpu_selection_falls_back_to_xla_where_cudnn_refuses():
    """jax checks cuDNN's limits while tracing (here: no cuDNN at all); the XLA path takes over."""
    q, k, v = _qkv(jnp.bfloat16)
    seg = jnp.asarray(SEGMENTS)
    with pytest.warns(UserWarning, match="cuDNN attention unavailable"):
        got = fused_attention.attend(q, k, v, seg, seg, None, None, True, backend="gpu")
    want = fused_attention.xla(q, k, v, seg, seg, None, None, True)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
