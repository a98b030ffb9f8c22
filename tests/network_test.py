"""Tests of flan_jax.model.network: sizes, scan/remat/attention options, dtypes, bad configs."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from tiny_configs import LLAMA, T5_TINY

import gin
from flan_jax.model import models, network

GIN_MODELS = os.path.join(os.path.dirname(__file__), "..", "gin", "models")
# The shared tiny configs, shrunk: the same architectures at a few kilobytes of parameters.
ENC_DEC = dataclasses.replace(T5_TINY, vocab_size=40, emb_dim=16, head_dim=4, mlp_dim=32)
DEC = dataclasses.replace(
    LLAMA, vocab_size=40, emb_dim=16, head_dim=4, mlp_dim=32, num_decoder_layers=3, rope_theta=1e4
)
ENC_DEC_BATCH = {
    "encoder_input_tokens": jnp.array([[3, 4, 5, 1, 7, 8, 1, 0], [9, 10, 11, 12, 1, 0, 0, 0]]),
    "encoder_segment_ids": jnp.array([[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 0, 0, 0]]),
    "encoder_positions": jnp.array([[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 2, 3, 4, 0, 0, 0]]),
    "decoder_input_tokens": jnp.array([[0, 6, 0, 9, 0], [0, 13, 14, 0, 0]]),
    "decoder_target_tokens": jnp.array([[6, 1, 9, 1, 0], [13, 14, 1, 0, 0]]),
    "decoder_loss_weights": jnp.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]),
    "decoder_segment_ids": jnp.array([[1, 1, 2, 2, 0], [1, 1, 1, 0, 0]]),
    "decoder_positions": jnp.array([[0, 1, 0, 1, 0], [0, 1, 2, 0, 0]]),
}
DEC_BATCH = {
    "decoder_input_tokens": jnp.array([[0, 5, 6, 7, 0, 8, 9, 0], [0, 11, 12, 13, 14, 15, 0, 0]]),
    "decoder_target_tokens": jnp.array([[5, 6, 7, 1, 8, 9, 1, 0], [11, 12, 13, 14, 15, 1, 0, 0]]),
    "decoder_loss_weights": jnp.array([[0, 1, 1, 1, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1, 0, 0]]),
    "decoder_segment_ids": jnp.array([[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 0, 0]]),
    "decoder_positions": jnp.array([[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5, 0, 0]]),
    "decoder_causal_attention": jnp.array([[1, 1, 0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]]),
}

# Published T5 v1.1 sizes: small 77M, base 248M, large 783M, xl 2.85B, xxl 11.1B.
PARAM_COUNTS = {
    "t5_1_1/tiny": 1_279_744,  # = ../shared/fixtures/t5x_tiny
    "t5_1_1/small": 76_961_152,
    "t5_1_1/base": 247_577_856,
    "t5_1_1/large": 783_150_080,
    "t5_1_1/xl": 2_849_757_184,
    "t5_1_1/xxl": 11_135_332_352,
    "t5/tiny": 968_448,
    "t5/base": 222_903_552,  # original T5 base (published: 220M)
    "decoder_only/tiny": 623_232,
    "decoder_only/small": 60_170_752,
    "decoder_only/base": 134_302_464,
    "decoder_only/large": 374_129_664,
    "llama_example": 8_030_261_248,  # Llama-3-8B
    "palm_example": 8_632_012_800,
}


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_gin_size_configs_have_published_parameter_counts(name):
    gin.clear_config()
    gin.add_config_file_search_path(os.path.dirname(GIN_MODELS))  # size files include their base
    gin.parse_config_file(os.path.join(GIN_MODELS, f"{name}.gin"))
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    gin.clear_config()
    shapes = model.param_shapes({"encoder_input_tokens": (1, 4), "decoder_input_tokens": (1, 4)})
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == PARAM_COUNTS[name]


def _init(model, shapes):
    return nn.unbox(
        jax.jit(lambda r: model.get_initial_variables(r, shapes)["params"])(jax.random.key(0))
    )


def _stack_layers(tree: dict) -> dict:
    """Plain params (`layers_{i}`) -> scanned layout (`layers` with a leading layer axis)."""
    names = sorted((k for k in tree if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
    out = {
        k: (_stack_layers(v) if isinstance(v, dict) else v)
        for k, v in tree.items()
        if k not in names
    }
    if names:
        out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[tree[k] for k in names])
    return out


def _loss(cfg, params, batch, cls):
    kw = {"inputs_bidirectional_attention": True} if cls is models.DecoderOnlyModel else {}
    return jax.jit(cls(cfg, **kw).loss_fn)(params, batch, None)[0]


CASES = [
    (ENC_DEC, ENC_DEC_BATCH, models.EncoderDecoderModel),
    (DEC, DEC_BATCH, models.DecoderOnlyModel),
]


@pytest.mark.parametrize("cfg,batch,cls", CASES, ids=["enc_dec", "decoder_only"])
def test_scan_remat_and_attention_impl_give_the_same_loss(cfg, batch, cls, monkeypatch):
    from flan_jax.model import fused_attention

    # the fused kernels' path even on CPU (where the model would take the faster einsum)
    monkeypatch.setattr(fused_attention, "worth_it", lambda backend=None: True)
    shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)}
    params = _init(cls(cfg), shapes)
    reference = _loss(cfg, params, batch, cls)
    scanned_cfg = network.TransformerConfig(
        **{**vars(cfg), "scan_layers": True, "remat_policy": "full"}
    )
    scanned = _init(cls(scanned_cfg), shapes)
    assert jax.tree.map(jnp.shape, scanned) == jax.tree.map(jnp.shape, _stack_layers(params))
    np.testing.assert_allclose(
        _loss(scanned_cfg, _stack_layers(params), batch, cls), reference, rtol=1e-5
    )
    # the fused path's AttentionMask (segment ids, static causal flag) through scan + remat
    fused_cfg = network.TransformerConfig(**{**vars(scanned_cfg), "attention_impl": "fused"})
    np.testing.assert_allclose(
        _loss(fused_cfg, _stack_layers(params), batch, cls), reference, rtol=1e-5
    )
    for option in (
        {"remat_policy": "dots_with_no_batch_dims_saveable"},
        {"attention_impl": "dot_product_attention"},
        {"one_hot_embed": False},
    ):
        variant = network.TransformerConfig(**{**vars(cfg), **option})
        np.testing.assert_allclose(
            _loss(variant, params, batch, cls), reference, rtol=1e-5, err_msg=str(option)
        )


def test_scan_gradients_match_plain():
    shapes = {"decoder_input_tokens": (1, 8)}
    model = models.DecoderOnlyModel(DEC, inputs_bidirectional_attention=True)
    params = _init(model, shapes)
    scan_cfg = network.TransformerConfig(
        **{**vars(DEC), "scan_layers": True, "remat_policy": "full"}
    )
    scan_model = models.DecoderOnlyModel(scan_cfg, inputs_bidirectional_attention=True)
    grads = jax.jit(jax.grad(lambda p: model.loss_fn(p, DEC_BATCH, None)[0]))(params)
    scan_grads = jax.jit(jax.grad(lambda p: scan_model.loss_fn(p, DEC_BATCH, None)[0]))(
        _stack_layers(params)
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), _stack_layers(grads), scan_grads
    )


def test_scanned_decode_cache_is_batch_major_and_matches_plain():
    scan_cfg = network.TransformerConfig(**{**vars(DEC), "scan_layers": True})
    params = _init(models.DecoderOnlyModel(DEC), {"decoder_input_tokens": (1, 8)})
    batch = {"decoder_input_tokens": DEC_BATCH["decoder_input_tokens"][:, :4]}
    outs = []
    for cfg, p in ((DEC, params), (scan_cfg, _stack_layers(params))):
        step_fn, cache, first = models.DecoderOnlyModel(cfg)._decoding_setup(p, batch, 3)
        for leaf in jax.tree.leaves(cache["model"]):
            assert leaf.ndim == 0 or leaf.shape[0] == 2  # batch-major for decoding.py
        step_fn = jax.jit(step_fn)
        logits, cache = step_fn(first, cache)
        logits2, _ = step_fn(jnp.array([7, 9]), cache)
        outs.append((logits, logits2))
    np.testing.assert_allclose(outs[0][0], outs[1][0], atol=1e-5)
    np.testing.assert_allclose(outs[0][1], outs[1][1], atol=1e-5)
    key = _init(models.DecoderOnlyModel(scan_cfg), {"decoder_input_tokens": (1, 8)})
    assert key["decoder"]["layers"]["self_attention"]["key"]["kernel"].shape == (3, 16, 8)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg = network.TransformerConfig(**{**vars(ENC_DEC), "dtype": "bfloat16"})
    model = models.EncoderDecoderModel(cfg)
    params = _init(model, {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 5)})
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    logits = jax.jit(model._logits)(params, ENC_DEC_BATCH, None)
    ref = jax.jit(models.EncoderDecoderModel(ENC_DEC)._logits)(params, ENC_DEC_BATCH, None)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, ref, atol=0.1)


def test_original_t5_ties_logits_to_the_scaled_embedding():
    cfg = network.TransformerConfig(
        **{**vars(ENC_DEC), "mlp_activations": ("relu",), "logits_via_embedding": True}
    )
    params = _init(
        models.EncoderDecoderModel(cfg),
        {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 5)},
    )
    assert "logits_dense" not in params["decoder"]
    assert set(params["decoder"]["layers_0"]["mlp"]) == {"wi", "wo"}
    module = network.EncoderDecoder(cfg)
    b = ENC_DEC_BATCH
    logits = module.apply(
        {"params": params},
        b["encoder_input_tokens"],
        b["decoder_input_tokens"],
        b["decoder_target_tokens"],
    )
    # Zero the embedding row of token 5: its logit must be exactly 0 (logits = x @ E.T / sqrt(d)).
    zeroed = jax.tree.map(lambda x: x, params)
    zeroed["token_embedder"]["embedding"] = params["token_embedder"]["embedding"].at[39].set(0.0)
    logits_zero = module.apply(
        {"params": zeroed},
        b["encoder_input_tokens"],
        b["decoder_input_tokens"],
        b["decoder_target_tokens"],
    )
    np.testing.assert_array_equal(logits_zero[..., 39], 0.0)
    np.testing.assert_allclose(logits_zero[..., :39], logits[..., :39], atol=1e-6)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"mlp_activations": ("gelu", "swish")}, "unknown MLP activation 'swish'"),
        (
            {"num_heads": 4, "num_kv_heads": 3},
            r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)",
        ),
        ({"remat_policy": "everything"}, "remat_policy 'everything'"),
        ({"attention_impl": "flash"}, "attention_impl 'flash' is unknown"),
        ({"dtype": "float16"}, "dtype 'float16' is unknown"),
        ({"position_embedding": "rope", "head_dim": 5}, "even head_dim, got 5"),
    ],
)
def test_bad_configs_name_the_value(change, message):
    with pytest.raises(ValueError, match=message):
        network.TransformerConfig(**{**vars(ENC_DEC), **change})
