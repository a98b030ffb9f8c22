"""OPT presets (gin/models/opt/) and the OPT / Mistral options of the shared network."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gin
from flan_jax.model import models, network

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


def _flan_tiny_opt():
    gin.clear_config()
    gin.add_config_file_search_path(GIN_DIR)
    from flan_jax.cli import demo  # noqa: F401  (registers demo.run_demo for the gin file)

    gin.parse_config_files_and_bindings(
        [os.path.join(GIN_DIR, "experiments", "flan_tiny_opt.gin")], [], finalize_config=False
    )
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    adamw = gin.query_parameter("demo.run_demo.optimizer_config").scoped_configurable_fn()
    gin.clear_config()
    return model, adamw


def test_flan_tiny_opt_trains_with_adamw_on_packed_targets_only_rows():
    """experiments/flan_tiny_opt.gin's model and AdamW: a packed prefix-LM row (two examples,
    loss on targets only) is learned; the loss falls below a recorded reference."""
    from flan_jax import partitioning
    from flan_jax.training import optimizer, train_state

    model, adamw = _flan_tiny_opt()
    assert model.loss_on_targets_only and model.feature_converter_cls.__name__ == (
        "PrefixLMFeatureConverter"
    )  # fmt: skip
    assert (adamw.b2, adamw.eps, adamw.global_norm_clip, adamw.warmup_steps) == (
        0.95,
        1e-8,
        1.0,
        20,
    )
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 300, size=(2, 24)).astype(np.int32)
    seg = np.array([[1] * 14 + [2] * 10] * 2, np.int32)
    pos = np.array([list(range(14)) + list(range(10))] * 2, np.int32)
    weights = np.array([[0] * 8 + [1] * 6 + [0] * 5 + [1] * 5] * 2, np.int32)  # targets only
    batch = {
        "decoder_input_tokens": np.concatenate([np.zeros((2, 1), np.int32), tokens[:, :-1]], 1),
        "decoder_target_tokens": tokens, "decoder_loss_weights": weights,
        "decoder_segment_ids": seg, "decoder_positions": pos,
    }  # fmt: skip
    mesh = partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    tx, schedule = optimizer.make_optimizer(adamw), optimizer.make_schedule(adamw)
    _, sh = train_state.state_shardings(model, tx, {"decoder_input_tokens": (2, 24)}, mesh)
    params = train_state.init_params(
        model, {"decoder_input_tokens": (2, 24)}, jax.random.PRNGKey(0), sh["params"]
    )
    state = train_state.init_state(params, tx, sh)
    step = jax.jit(train_state.make_train_step(
        model.loss_fn, tx, schedule, train_state.StepConfig(), mesh))  # fmt: skip
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]) / float(metrics["weight_sum"]))
    assert float(metrics["weight_sum"]) == 22.0  # only target tokens count
    assert losses[0] == pytest.approx(np.log(384), rel=0.2)  # untrained: about uniform
    assert all(b < a for a, b in zip(losses[5::5], losses[10::5]))
    assert losses[-1] < 0.5 * losses[0]
