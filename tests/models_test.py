"""Tests of flan_jax.model.models: T5X fixture parity, losses, scoring, cached decoding, packing."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from conftest import FIXTURES_DIR, needs_fixtures
from flax import linen as nn
from tiny_configs import LLAMA, T5_TINY

from flan_jax.model import models, network
from flan_jax.model.decoding import DecodeConfig

T5X_TINY = os.path.join(FIXTURES_DIR, "t5x_tiny")


@pytest.fixture(scope="module")
def t5x():
    import orbax.checkpoint as ocp

    params = ocp.PyTreeCheckpointer().restore(os.path.join(T5X_TINY, "orbax/checkpoint_100/state"))[
        "target"
    ]
    data = dict(np.load(os.path.join(T5X_TINY, "batch_and_logits.npz")))
    return models.EncoderDecoderModel(T5_TINY), params, data


BATCH_KEYS = (
    "encoder_input_tokens decoder_input_tokens decoder_target_tokens decoder_loss_weights "
    "encoder_segment_ids decoder_segment_ids encoder_positions decoder_positions"
).split()


@needs_fixtures
def test_t5x_fixture_logits_loss_and_param_tree(t5x):
    model, params, data = t5x
    batch = {k: data[k] for k in BATCH_KEYS}
    shapes = model.param_shapes({"encoder_input_tokens": (1, 32), "decoder_input_tokens": (1, 16)})
    assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, params)
    logits = jax.jit(model._logits)(params, batch, None)
    np.testing.assert_allclose(logits, data["logits"], atol=1e-4, rtol=0)
    loss, metrics = jax.jit(model.loss_fn)(params, batch, None)
    np.testing.assert_allclose(loss, 174.69290, rtol=1e-6)
    np.testing.assert_allclose(metrics["z_loss"], data["loss_z_term"], rtol=1e-5)
    assert metrics["weight_sum"] == 51.0
    assert metrics["num_examples"] == 6.0  # 2 packed rows x 2 + 2 unpacked rows
    np.testing.assert_allclose(metrics["cross_ent_loss"], loss - metrics["z_loss"], rtol=1e-6)


@needs_fixtures
def test_t5x_fixture_unpacked_rows_without_segment_ids(t5x):
    model, params, data = t5x
    batch = {
        "encoder_input_tokens": data["encoder_input_tokens"][2:],
        "decoder_input_tokens": data["unpacked_decoder_input_tokens"],
        "decoder_target_tokens": data["decoder_target_tokens"][2:],
    }
    logits = jax.jit(model._logits)(params, batch, None)
    np.testing.assert_allclose(logits, data["logits_unpacked_no_segment_ids"], atol=1e-4, rtol=0)


@needs_fixtures
def test_t5x_fixture_greedy_and_beam1_decodes(t5x):
    model, params, data = t5x
    batch = {"encoder_input_tokens": data["greedy_inputs"]}
    greedy = jax.jit(
        lambda p, b: model.predict_batch(p, b, decode=DecodeConfig(max_decode_len=16))
    )(params, batch)
    np.testing.assert_array_equal(greedy, data["greedy_outputs"])
    beam = DecodeConfig(method="beam", num_beams=1, alpha=0.6, max_decode_len=16)
    tokens, aux = jax.jit(lambda p, b: model.predict_batch_with_aux(p, b, decode=beam))(
        params, batch
    )
    np.testing.assert_array_equal(tokens[:, 0], data["beam1_outputs"])
    np.testing.assert_allclose(aux["scores"][:, 0], data["beam1_scores"], rtol=1e-5)


@needs_fixtures
def test_score_batch_is_sum_of_target_log_likelihoods(t5x):
    model, params, data = t5x
    batch = {k: data[k] for k in BATCH_KEYS}
    scores = jax.jit(model.score_batch)(params, batch)
    log_probs = jax.nn.log_softmax(data["logits"].astype(np.float64), axis=-1)
    picked = np.take_along_axis(log_probs, data["decoder_target_tokens"][..., None], axis=-1)[
        ..., 0
    ]
    np.testing.assert_allclose(scores, (picked * data["decoder_loss_weights"]).sum(-1), rtol=1e-5)


def test_loss_normalizing_factor_and_label_smoothing():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 3, 5)), jnp.float32)
    targets = jnp.array([[1, 2, 0], [4, 0, 0]])
    weights = (targets > 0).astype(jnp.int32)
    lp = jax.nn.log_softmax(logits)
    nll = -np.take_along_axis(np.asarray(lp), np.asarray(targets)[..., None], -1)[..., 0]
    plain = models.LossConfig(z_loss=0.0)
    total, z, wsum = models.cross_entropy_loss(logits, targets, weights, plain)
    np.testing.assert_allclose(total, (nll * weights).sum(), rtol=1e-6)
    assert z == 0.0 and wsum == 3.0
    per_token = models.LossConfig(z_loss=0.0, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
    np.testing.assert_allclose(
        models.cross_entropy_loss(logits, targets, weights, per_token)[0], total / 3, rtol=1e-6
    )
    fixed = models.LossConfig(z_loss=0.0, loss_normalizing_factor=10.0)
    np.testing.assert_allclose(
        models.cross_entropy_loss(logits, targets, weights, fixed)[0], total / 10, rtol=1e-6
    )
    # Label smoothing 0.1 over 5 classes: KL(soft || p) = CE(soft, p) - H(soft).
    smooth = models.LossConfig(z_loss=0.0, label_smoothing=0.1)
    soft = jax.nn.one_hot(targets, 5) * 0.875 + 0.025
    kl = -(soft * lp).sum(-1) + (soft * np.log(soft)).sum(-1)
    np.testing.assert_allclose(
        models.cross_entropy_loss(logits, targets, weights, smooth)[0],
        (kl * weights).sum(),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="'NUM_TOKENS'"):
        models.LossConfig(loss_normalizing_factor="NUM_TOKENS")


def _init(model, shapes, seed=0):
    init = jax.jit(lambda rng: model.get_initial_variables(rng, shapes)["params"])
    return nn.unbox(init(jax.random.key(seed)))


@jax.jit
def _llama_logits(params, tokens, causal=None):
    """Full forward pass of LLAMA (every position real)."""
    return network.DecoderOnly(LLAMA).apply({"params": params}, tokens, None, None, None, causal)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_decoder_only_prefill_and_cached_steps_equal_full_forward(bidirectional):
    model = models.DecoderOnlyModel(LLAMA, inputs_bidirectional_attention=bidirectional)
    params = _init(model, {"decoder_input_tokens": (1, 8)})
    rng = np.random.default_rng(1)
    lengths, steps, width = np.array([3, 5]), 4, 6
    seqs = rng.integers(2, 64, size=(2, 10)).astype(np.int32)
    seqs[:, 0] = 0  # BOS
    prompt_mask = (np.arange(width) < lengths[:, None]).astype(np.int32)
    prompt = np.where(prompt_mask, seqs[:, :width], 0)
    step_fn, cache, first = model._decoding_setup(
        params,
        {
            "decoder_input_tokens": jnp.asarray(prompt),
            "decoder_causal_attention": jnp.asarray(prompt_mask),
        },
        steps,
    )
    # Causal (after the prefix): position k of the full pass only sees tokens <= k.
    causal = (np.arange(10) < lengths[:, None]).astype(np.int32) if bidirectional else None
    full = _llama_logits(params, jnp.asarray(seqs), causal)
    step_fn, token = jax.jit(step_fn), first
    for t in range(steps):
        logits, cache = step_fn(token, cache)
        np.testing.assert_allclose(logits, full[np.arange(2), lengths - 1 + t], atol=1e-5, rtol=0)
        token = jnp.asarray(seqs[np.arange(2), lengths + t])


def test_decoder_only_predict_greedy_matches_argmax_rollout():
    model = models.DecoderOnlyModel(LLAMA)
    params = _init(model, {"decoder_input_tokens": (1, 8)})
    prompt = jnp.array([[0, 7, 9, 0], [0, 5, 0, 0]], jnp.int32)
    causal = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]], jnp.int32)
    cfg = DecodeConfig(max_decode_len=5, eos_id=-1)
    out = jax.jit(lambda p, b: model.predict_batch(p, b, decode=cfg))(
        params, {"decoder_input_tokens": prompt, "decoder_causal_attention": causal}
    )
    for b, n in enumerate([3, 2]):
        seq = np.zeros((1, 8), np.int32)
        seq[0, :n] = prompt[b, :n]
        for k in range(n, n + 5):  # causal: trailing zeros do not change position k - 1
            seq[0, k] = int(jnp.argmax(_llama_logits(params, jnp.asarray(seq))[0, k - 1]))
        np.testing.assert_array_equal(out[b], seq[0, n : n + 5])


def test_encoder_decoder_cached_steps_equal_full_forward():
    cfg = network.TransformerConfig(
        vocab_size=50,
        emb_dim=16,
        num_heads=2,
        head_dim=8,
        mlp_dim=32,
        num_encoder_layers=1,
        num_decoder_layers=2,
    )
    model = models.EncoderDecoderModel(cfg)
    params = _init(model, {"encoder_input_tokens": (1, 6), "decoder_input_tokens": (1, 5)})
    enc = jnp.array([[5, 6, 7, 1, 0, 0], [9, 8, 1, 0, 0, 0]], jnp.int32)
    dec = jnp.array([[0, 3, 4, 5, 6], [0, 7, 8, 9, 10]], jnp.int32)
    full = jax.jit(model.module.apply)({"params": params}, enc, dec, jnp.ones_like(dec))
    step_fn, cache, token = model._decoding_setup(params, {"encoder_input_tokens": enc}, 5)
    step_fn = jax.jit(step_fn)
    for t in range(5):
        logits, cache = step_fn(dec[:, t] if t else token, cache)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5, rtol=0)


def test_decoder_only_packed_row_equals_examples_alone():
    model = models.DecoderOnlyModel(LLAMA, inputs_bidirectional_attention=True)
    params = _init(model, {"decoder_input_tokens": (1, 8)})
    a, b = [0, 11, 12, 13, 14], [0, 21, 22]
    packed = {
        "decoder_input_tokens": jnp.array([a + b + [0]]),
        "decoder_target_tokens": jnp.array([a[1:] + [1] + b[1:] + [1] + [0]]),
        "decoder_segment_ids": jnp.array([[1] * 5 + [2] * 3 + [0]]),
        "decoder_positions": jnp.array([[0, 1, 2, 3, 4, 0, 1, 2, 0]]),
        "decoder_causal_attention": jnp.array([[1, 1, 1, 0, 0, 1, 1, 0, 0]]),
    }
    logits = jax.jit(model._logits)(params, packed, None)
    for seq, causal, sl in ((a, [1, 1, 1, 0, 0], slice(0, 5)), (b, [1, 1, 0], slice(5, 8))):
        alone = _llama_logits(params, jnp.array([seq]), jnp.array([causal]))
        np.testing.assert_allclose(logits[0, sl], alone[0], atol=1e-5, rtol=0)


def test_feature_converters_and_flops():
    assert models.EncoderDecoderModel(T5_TINY).feature_converter_cls is seqio.EncDecFeatureConverter
    assert models.DecoderOnlyModel(LLAMA).feature_converter_cls is seqio.DecoderFeatureConverter
    prefix = models.DecoderOnlyModel(LLAMA, inputs_bidirectional_attention=True)
    assert prefix.feature_converter_cls is seqio.PrefixLMFeatureConverter
    # LLAMA matmul params: 2 layers x (q 32x32 + k,v 32x16 + out 32x32 + 3 x 32x64) + logits 32x64.
    n = 2 * (1024 + 2 * 512 + 1024 + 3 * 2048) + 2048 + 2 * (2 * 32) + 32  # + norms
    assert models.DecoderOnlyModel(LLAMA).flops_per_token(16) == 6 * n + 12 * 2 * 4 * 8 * 16
    with pytest.raises(ValueError, match="num_encoder_layers=2"):
        models.DecoderOnlyModel(T5_TINY)
