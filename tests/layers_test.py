"""Tests of flan_jax.model.layers: exact norms, buckets, RoPE, attention variants and MLPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from flan_jax.model import layers


def _apply(module, *args, **kw):
    variables = module.init(jax.random.key(0), *args, **kw)
    return module.apply(variables, *args, **kw), nn.unbox(variables["params"])


def test_rms_norm_values():
    x = jnp.array([[3.0, 4.0]])
    y, params = _apply(layers.RMSNorm(epsilon=1e-6), x)
    np.testing.assert_allclose(y, x / np.sqrt(12.5 + 1e-6), rtol=1e-6)
    assert params["scale"].shape == (2,)


def test_relative_position_buckets_match_t5():
    rel = jnp.array([0, -1, 1, -8, 8, -127, -200, 200])
    bi = layers.relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    np.testing.assert_array_equal(bi, [0, 1, 17, 8, 24, 15, 15, 31])
    uni = layers.relative_position_bucket(
        jnp.array([0, -1, 5, -16, -100, -1000]),
        bidirectional=False,
        num_buckets=32,
        max_distance=128,
    )
    np.testing.assert_array_equal(uni, [0, 1, 0, 16, 30, 31])


def test_relative_position_bias_reads_the_table():
    module = layers.RelativePositionBiases(num_heads=2, num_buckets=32, max_distance=128)
    idx = jnp.arange(3)
    bias, params = _apply(module, idx, idx, bidirectional=True)
    table = params["rel_embedding"]
    assert bias.shape == (1, 2, 3, 3)
    np.testing.assert_allclose(bias[0, :, 0, 1], table[:, 17])  # key one after query
    np.testing.assert_allclose(bias[0, :, 2, 0], table[:, 2])  # key two before query


def test_rope_matches_hf_llama_rotate_half():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 2, 8)).astype(np.float32)
    positions = np.array([[0, 1, 5]])
    inv_freq = 1.0 / (500.0 ** (np.arange(0, 8, 2) / 8))
    ang = positions[..., None] * inv_freq
    cos, sin = (
        np.cos(np.concatenate([ang, ang], -1))[:, :, None],
        np.sin(np.concatenate([ang, ang], -1))[:, :, None],
    )
    rotate_half = np.concatenate([-x[..., 4:], x[..., :4]], -1)
    np.testing.assert_allclose(
        layers.apply_rope(jnp.asarray(x), jnp.asarray(positions), 500.0),
        x * cos + rotate_half * sin,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        layers.apply_rope(jnp.asarray(x), jnp.zeros((1, 3), jnp.int32), 500.0), x
    )


def _attention(kv_heads, **kw):
    return layers.MultiHeadAttention(num_heads=4, num_kv_heads=kv_heads, head_dim=8, **kw)


def test_grouped_query_attention_equals_mha_with_repeated_kv_heads():
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    gqa = _attention(2)
    params = nn.unbox(gqa.init(jax.random.key(0), x, x)["params"])
    assert params["key"]["kernel"].shape == (16, 16) and params["query"]["kernel"].shape == (16, 32)
    mha_params = dict(params)
    for name in (
        "key",
        "value",
    ):  # [embed, kv * d] -> [embed, heads * d], each kv head serving 2 query heads
        k = params[name]["kernel"].reshape(16, 2, 1, 8)
        mha_params[name] = {"kernel": jnp.repeat(k, 2, axis=2).reshape(16, 32)}
    np.testing.assert_allclose(
        gqa.apply({"params": params}, x, x),
        _attention(4).apply({"params": mha_params}, x, x),
        atol=1e-5,
    )


def test_attention_impls_agree_with_mask_bias():
    x = jax.random.normal(jax.random.key(1), (2, 6, 16))
    mask = jnp.tril(jnp.ones((6, 6), bool))[None, None] & (jnp.arange(6) < 4)[None, None, None, :]
    bias = layers.mask_to_bias(mask)
    mqa = _attention(1, scale_logits=True)
    variables = mqa.init(jax.random.key(0), x, x, bias)
    ref = mqa.apply(variables, x, x, bias)
    dpa = _attention(1, scale_logits=True, impl="dot_product_attention").apply(
        variables, x, x, bias
    )
    np.testing.assert_allclose(dpa, ref, atol=1e-5)
    # Masked keys do not matter: changing tokens 4 and 5 leaves query positions 0..3 unchanged.
    x2 = x.at[:, 4:].set(7.0)
    np.testing.assert_allclose(mqa.apply(variables, x2, x2, bias)[:, :4], ref[:, :4], atol=1e-5)


def test_t5_query_init_folds_in_head_dim_scaling():
    x = jnp.ones((1, 1, 256))
    params = nn.unbox(
        layers.MultiHeadAttention(num_heads=4, num_kv_heads=4, head_dim=64).init(
            jax.random.key(0), x, x
        )["params"]
    )
    np.testing.assert_allclose(np.std(params["query"]["kernel"]), (256 * 64) ** -0.5, rtol=0.05)
    np.testing.assert_allclose(np.std(params["key"]["kernel"]), 256**-0.5, rtol=0.05)


@pytest.mark.parametrize(
    "acts,expected",
    [
        (
            ("gelu", "linear"),
            lambda h0, h1: (
                0.5 * h0 * (1 + np.tanh(np.sqrt(2 / np.pi) * (h0 + 0.044715 * h0**3))) * h1
            ),
        ),
        (("silu", "linear"), lambda h0, h1: h0 / (1 + np.exp(-h0)) * h1),
        (("relu",), lambda h0, h1: np.maximum(h0, 0)),
    ],
)
def test_mlp_activations(acts, expected):
    x = jax.random.normal(jax.random.key(2), (1, 3, 8))
    y, params = _apply(layers.MlpBlock(mlp_dim=16, activations=acts), x)
    names = ["wi"] if len(acts) == 1 else ["wi_0", "wi_1"]
    hidden = [np.asarray(x) @ np.asarray(params[n]["kernel"]) for n in names] + [None]
    np.testing.assert_allclose(
        y, expected(hidden[0], hidden[1]) @ np.asarray(params["wo"]["kernel"]), atol=1e-5
    )


def test_unknown_activation_names_the_value():
    with pytest.raises(ValueError, match="unknown MLP activation 'tanh'"):
        layers.check_activations(("tanh", "linear"))


def test_embed_one_hot_equals_take_and_attend():
    tokens = jnp.array([[1, 3, 0]])
    emb = layers.Embed(num_embeddings=5, features=4)
    variables = emb.init(jax.random.key(0), tokens)
    table = nn.unbox(variables["params"])["embedding"]
    np.testing.assert_allclose(emb.apply(variables, tokens), table[tokens], atol=1e-6)
    take = layers.Embed(num_embeddings=5, features=4, one_hot=False).apply(variables, tokens)
    np.testing.assert_array_equal(take, table[tokens])
    np.testing.assert_allclose(
        emb.apply(variables, table[:2], method="attend"), table[:2] @ table.T, atol=1e-5
    )
