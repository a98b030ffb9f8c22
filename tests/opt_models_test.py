"""OPT presets (gin/models/opt/) and the OPT / Mistral options of the shared network."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gin
from flan_jax import models, network

GIN_DIR = os.path.join(os.path.dirname(__file__), "..", "gin")
# Published OPT sizes 125M, 350M, 1.3B, 30B, 175B; the exact counts are Hugging Face's
# (e.g. facebook/opt-125m has 125,239,296 parameters, opt-350m 331,196,416).
OPT_PARAM_COUNTS = {
    "125m": (125e6, 125_239_296),
    "350m": (350e6, 331_196_416),
    "1_3b": (1.3e9, 1_315_758_080),
    "30b": (30e9, 29_974_540_288),
    "175b": (175e9, 174_604_468_224),
}


@pytest.mark.parametrize("size", sorted(OPT_PARAM_COUNTS))
def test_opt_presets_have_published_parameter_counts(size):
    gin.clear_config()
    gin.add_config_file_search_path(GIN_DIR)
    gin.parse_config_file(os.path.join(GIN_DIR, "models", "opt", f"{size}.gin"))
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    gin.clear_config()
    shapes = model.param_shapes({"decoder_input_tokens": (1, 4)})  # jax.eval_shape: no memory
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    published, exact = OPT_PARAM_COUNTS[size]
    assert count == exact
    assert abs(count - published) / published < 0.06
    cfg = model.config
    assert (cfg.position_embedding, cfg.position_offset, cfg.norm_type, cfg.use_bias) == (
        "learned", 2, "layernorm", True
    )  # fmt: skip
    assert cfg.post_layer_norm == (size == "350m")


TINY_OPT = network.TransformerConfig(
    vocab_size=37, emb_dim=15, num_heads=3, head_dim=5, mlp_dim=22, num_decoder_layers=2,
    mlp_activations=("relu",), position_embedding="learned", max_position_embeddings=12,
    position_offset=2, norm_type="layernorm", use_bias=True, scale_attention_logits=True,
    logits_via_embedding=True, scale_tied_logits=False, post_layer_norm=True, embed_proj_dim=7,
    sliding_window=3,
)  # fmt: skip


def test_packed_rows_equal_separate_rows_with_learned_positions_and_window():
    """Positions restart per packed example, and the window counts within one example."""
    model = models.DecoderOnlyModel(TINY_OPT)
    params = jax.jit(lambda r: model.get_initial_variables(r, {"decoder_input_tokens": (1, 9)}))(
        jax.random.key(0)
    )["params"]
    params = jax.tree.map(lambda x: x + 0.3 * jnp.sin(jnp.arange(x.size).reshape(x.shape)),
                          jax.tree.map(lambda b: b.value, params,
                                       is_leaf=lambda b: hasattr(b, "value")))  # fmt: skip
    a, b = [4, 9, 13, 21, 30], [6, 7, 8, 2]
    packed = {
        "decoder_input_tokens": np.array([a + b], np.int32),
        "decoder_target_tokens": np.array([a + b], np.int32),
        "decoder_segment_ids": np.array([[1] * 5 + [2] * 4], np.int32),
        "decoder_positions": np.array([list(range(5)) + list(range(4))], np.int32),
    }
    separate = {
        "decoder_input_tokens": np.array([a, b + [0]], np.int32),
        "decoder_target_tokens": np.array([a, b + [0]], np.int32),
    }
    logits = jax.jit(model._logits)
    got, want = np.asarray(logits(params, packed, None)), np.asarray(logits(params, separate, None))
    np.testing.assert_allclose(got[0, :5], want[0], atol=1e-5)
    np.testing.assert_allclose(got[0, 5:], want[1, :4], atol=1e-5)
    assert np.abs(want[0, 3] - want[0, 4]).max() > 1e-2  # positions and inputs matter


def test_decoder_only_options_are_refused_with_an_encoder():
    with pytest.raises(ValueError, match="position_embedding='learned', sliding_window are "
                       "decoder-only options; got num_encoder_layers=2"):  # fmt: skip
        network.TransformerConfig(
            vocab_size=8, emb_dim=4, num_heads=1, head_dim=4, mlp_dim=4, num_decoder_layers=1,
            num_encoder_layers=2, position_embedding="learned", sliding_window=4,
        )  # fmt: skip
