"""AdamW (OPT-IML): schedules, the update against a hand-written Adam, golden state shardings,
checkpoint restore == saved and resume; selected by gin in runs/finetune_adam.gin."""

import os

import jax
import numpy as np
import optax
import pytest
from partitioning_test import SHAPES, ToyModel

import gin
from flan_jax import partitioning
from flan_jax.checkpoints import manager as checkpoints
from flan_jax.model import models, network
from flan_jax.training import optimizer, train_state

GIN_DIR = os.path.join(os.path.dirname(__file__), "..", "gin")


def test_schedules_warmup_then_constant_or_linear_decay():
    const = optimizer.make_schedule(optimizer.AdamWConfig(learning_rate=1e-3, warmup_steps=4))
    assert [float(const(s)) for s in (0, 1, 3, 100)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3])
    linear = optimizer.make_schedule(
        optimizer.AdamWConfig(
            learning_rate=1e-3,
            schedule="linear",
            warmup_steps=4,
            decay_steps=14,
            final_learning_rate_ratio=0.1,
        )  # fmt: skip
    )
    got = [float(linear(s)) for s in (0, 3, 4, 9, 14, 50)]
    assert got == pytest.approx([2.5e-4, 1e-3, 1e-3, 5.5e-4, 1e-4, 1e-4], rel=1e-6)


def test_config_validation_quotes_values():
    with pytest.raises(ValueError, match=r"'linear' needs decay_steps \(None\) > warmup_steps"):
        optimizer.AdamWConfig(schedule="linear", warmup_steps=10)
    with pytest.raises(ValueError, match=r"b2 \(1.0\) must be in \[0, 1\)"):
        optimizer.AdamWConfig(b2=1.0)
    with pytest.raises(ValueError, match="AdamW schedule 'cosine' must be one of"):
        optimizer.AdamWConfig(schedule="cosine")


def test_update_matches_hand_written_adamw_with_clipping():
    cfg = optimizer.AdamWConfig(learning_rate=0.1, weight_decay=0.1, global_norm_clip=1.0)
    tx = optimizer.make_optimizer(cfg)
    params = {"w": np.array([1.0, -2.0, 3.0], np.float32), "b": np.array([0.5], np.float32)}
    grads = [
        {"w": np.array([3.0, 4.0, 0.0], np.float32), "b": np.array([0.0], np.float32)},  # norm 5
        {"w": np.array([0.1, -0.2, 0.3], np.float32), "b": np.array([0.2], np.float32)},
    ]
    state, p = tx.init(params), params
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    want = {k: x.astype(np.float64) for k, x in params.items()}
    for t, g in enumerate(grads, 1):
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
        norm = np.sqrt(sum(np.sum(np.square(x)) for x in g.values()))
        for k in params:
            gk = g[k] * min(1.0, 1.0 / norm)
            m[k] = 0.9 * m[k] + 0.1 * gk
            v[k] = 0.95 * v[k] + 0.05 * gk**2
            step = (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.95**t)) + 1e-8)
            want[k] = want[k] - 0.1 * (step + 0.1 * want[k])
    for k in params:
        np.testing.assert_allclose(p[k], want[k], rtol=1e-5)


OPT_TINY = network.TransformerConfig(
    vocab_size=64, emb_dim=16, num_heads=4, head_dim=4, mlp_dim=32, num_decoder_layers=1,
    mlp_activations=("relu",), position_embedding="learned", max_position_embeddings=16,
    position_offset=2, norm_type="layernorm", use_bias=True, scale_attention_logits=True,
    logits_via_embedding=True, scale_tied_logits=False,
)  # fmt: skip
IN_OUT, OUT_IN, NORM = ("fsdp", "model"), ("model", "fsdp"), (None,)
LAYER = {
    **{f"self_attention/{n}/kernel": IN_OUT for n in ("query", "key", "value")},
    **{f"self_attention/{n}/bias": ("model",) for n in ("query", "key", "value")},
    "self_attention/out/kernel": OUT_IN, "self_attention/out/bias": ("fsdp",),
    "mlp/wi/kernel": IN_OUT, "mlp/wi/bias": ("model",),
    "mlp/wo/kernel": OUT_IN, "mlp/wo/bias": ("fsdp",),
    **{f"pre_{n}_layer_norm/{p}": NORM
       for n in ("self_attention", "mlp") for p in ("scale", "bias")},
}  # fmt: skip
OPT_GOLDEN = {
    "decoder/token_embedder/embedding": OUT_IN,
    "decoder/position_embedder/embedding": OUT_IN,
    "decoder/decoder_norm/scale": NORM,
    "decoder/decoder_norm/bias": NORM,
    **{f"decoder/layers_0/{k}": v for k, v in LAYER.items()},
}


def _specs(tree) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = {}
    for path, sharding in flat:
        name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                        for k in path)  # fmt: skip
        out[name] = tuple(sharding.spec)
    return out


def test_golden_partition_specs_of_adamw_state_for_tiny_opt():
    model, tx = models.DecoderOnlyModel(OPT_TINY), optimizer.make_adamw(optimizer.AdamWConfig())
    mesh = partitioning.make_mesh((2, 2, 2))
    _, shardings = train_state.state_shardings(model, tx, {"decoder_input_tokens": (1, 8)}, mesh)
    specs = _specs(shardings["opt_state"])
    # state: (clip_by_global_norm's empty state, (ScaleByAdamState, add_decayed_weights' empty
    # state, scale_by_schedule's count)); mu and nu take the parameters' specs
    for moment in ("mu", "nu"):
        got = {k.split(f"1/0/{moment}/", 1)[1]: v for k, v in specs.items() if f"/{moment}/" in k}
        assert got == OPT_GOLDEN, moment
    assert specs["1/0/count"] == () and specs["1/2/count"] == ()
    assert len(specs) == 2 * len(OPT_GOLDEN) + 2


def _adamw_state(mesh):
    tx = optimizer.make_optimizer(optimizer.AdamWConfig(learning_rate=1e-2, warmup_steps=3))
    abstract, sh = train_state.state_shardings(ToyModel(), tx, SHAPES, mesh)
    params = train_state.init_params(ToyModel(), SHAPES, jax.random.PRNGKey(1), sh["params"])
    state = train_state.init_state(params, tx, sh)
    update = jax.jit(tx.update, out_shardings=(sh["params"], sh["opt_state"]))
    for i in range(2):  # non-trivial moments and counts
        grads = jax.tree.map(lambda p, i=i: p * 0.5 + 0.1 * (i + 1), state["params"])
        updates, opt = update(grads, state["opt_state"], state["params"])
        state = dict(state, params=optax.apply_updates(state["params"], updates), opt_state=opt)
    return state, abstract, tx


def test_adamw_state_restores_equal_on_another_mesh_and_resumes_identically(tmp_path):
    state, _, tx = _adamw_state(partitioning.make_mesh((2, 4, 1)))
    ckpt = checkpoints.Checkpointer(str(tmp_path), checkpoints.CheckpointConfig(period=1, keep=1))
    ckpt.save(2, state)
    ckpt.close()
    _, abstract, _ = _adamw_state(partitioning.make_mesh((1, 8, 1)))
    ckpt = checkpoints.Checkpointer(str(tmp_path), checkpoints.CheckpointConfig(period=1, keep=1))
    restored = ckpt.restore(2, abstract)
    ckpt.close()
    equal = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    jax.tree.map(equal, restored, state)
    adam = restored["opt_state"][1][0]
    assert isinstance(adam, optax.ScaleByAdamState) and int(adam.count) == 2
    assert restored["opt_state"][1][0].mu["wi"].sharding.mesh.shape["fsdp"] == 8
    # the next update (warmup step 3 of 3) is the same from the saved and the restored state
    grads = jax.tree.map(lambda p: p * 0.25, state["params"])
    a = tx.update(grads, state["opt_state"], state["params"])
    b = tx.update(grads, restored["opt_state"], restored["params"])
    jax.tree.map(equal, jax.device_get(a), jax.device_get(b))


def test_finetune_adam_gin_selects_adamw_with_opt_iml_settings():
    gin.clear_config()
    gin.add_config_file_search_path(GIN_DIR)
    macros = ["MODEL_DIR='/tmp/x'", "MIXTURE_OR_TASK_NAME='flan_tiny'", "TRAIN_STEPS=100",
              "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}", "INITIAL_CHECKPOINT_PATH=None",
              "ADAM_SCHEDULE='linear'"]  # fmt: skip
    files = [os.path.join(GIN_DIR, f) for f in ("models/opt/125m.gin", "runs/finetune_adam.gin")]
    gin.parse_config_files_and_bindings(files, macros)
    cfg = gin.query_parameter("train.train.optimizer_config").scoped_configurable_fn()
    gin.clear_config()
    assert cfg == optimizer.AdamWConfig(
        learning_rate=5e-5, schedule="linear", warmup_steps=60, decay_steps=100, b1=0.9, b2=0.95,
        eps=1e-8, weight_decay=0.1, global_norm_clip=1.0,
    )  # fmt: skip
