"""Golden partition specs of every tiny-config parameter; sharded == single-device forward."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec
from tiny_configs import LLAMA, T5_TINY

from flan_jax import partitioning
from flan_jax.model import models

# PaLM-style: the LLaMA-style decoder with multi-query attention, a parallel block, a shared
# embedding and scanned layers.
PALM_TINY = dataclasses.replace(
    LLAMA,
    vocab_size=384,
    emb_dim=64,
    num_kv_heads=1,
    head_dim=16,
    mlp_dim=128,
    rope_theta=1e4,
    parallel_block=True,
    logits_via_embedding=True,
    scan_layers=True,
)

IN_KV, KV_OUT, NORM = ("fsdp", "model"), ("model", "fsdp"), (None,)
ATTN = {"query/kernel": IN_KV, "key/kernel": IN_KV, "value/kernel": IN_KV, "out/kernel": KV_OUT}
MLP = {"mlp/wi_0/kernel": IN_KV, "mlp/wi_1/kernel": IN_KV, "mlp/wo/kernel": KV_OUT}


def _t5_golden() -> dict[str, tuple]:
    golden = {
        "token_embedder/embedding": ("model", "fsdp"),
        "encoder/relpos_bias/rel_embedding": ("model", None),
        "encoder/encoder_norm/scale": NORM,
        "decoder/relpos_bias/rel_embedding": ("model", None),
        "decoder/decoder_norm/scale": NORM,
        "decoder/logits_dense/kernel": ("fsdp", "model"),
    }
    for i in range(2):
        enc, dec = f"encoder/layers_{i}/", f"decoder/layers_{i}/"
        golden.update(
            {enc + n: NORM for n in ("pre_attention_layer_norm/scale", "pre_mlp_layer_norm/scale")}
        )
        golden.update({enc + "attention/" + k: v for k, v in ATTN.items()})
        golden.update({enc + k: v for k, v in MLP.items()})
        for norm in (
            "pre_self_attention_layer_norm",
            "pre_cross_attention_layer_norm",
            "pre_mlp_layer_norm",
        ):
            golden[dec + norm + "/scale"] = NORM
        golden.update({dec + "self_attention/" + k: v for k, v in ATTN.items()})
        golden.update({dec + "encoder_decoder_attention/" + k: v for k, v in ATTN.items()})
        golden.update({dec + k: v for k, v in MLP.items()})
    return golden


PALM_GOLDEN = {
    "decoder/token_embedder/embedding": ("model", "fsdp"),
    "decoder/decoder_norm/scale": NORM,
    # scanned: a leading, replicated `layers` axis
    "decoder/layers/pre_self_attention_layer_norm/scale": (None, None),
    "decoder/layers/self_attention/query/kernel": (None, "fsdp", "model"),
    "decoder/layers/self_attention/key/kernel": (
        None,
        "fsdp",
        None,
    ),  # multi-query: ('embed', 'kv')
    "decoder/layers/self_attention/value/kernel": (None, "fsdp", None),
    "decoder/layers/self_attention/out/kernel": (None, "model", "fsdp"),
    "decoder/layers/mlp/wi_0/kernel": (None, "fsdp", "model"),
    "decoder/layers/mlp/wi_1/kernel": (None, "fsdp", "model"),
    "decoder/layers/mlp/wo/kernel": (None, "model", "fsdp"),
}


def _mesh_specs(model, shapes) -> dict[str, tuple]:
    boxed = jax.eval_shape(lambda: model.get_initial_variables(jax.random.key(0), shapes)["params"])
    logical = nn.get_partition_spec(boxed)
    flat = jax.tree_util.tree_flatten_with_path(
        logical, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )[0]
    out = {}
    for path, spec in flat:
        mesh_spec = partitioning.logical_to_mesh_spec(tuple(spec))
        out["/".join(p.key for p in path)] = tuple(mesh_spec) + (None,) * (
            len(spec) - len(mesh_spec)
        )
    return out


ENC_DEC_SHAPES = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)}


def test_golden_partition_specs_t5_tiny():
    assert _mesh_specs(models.EncoderDecoderModel(T5_TINY), ENC_DEC_SHAPES) == _t5_golden()


def test_golden_partition_specs_palm_tiny():
    assert _mesh_specs(models.DecoderOnlyModel(PALM_TINY), ENC_DEC_SHAPES) == PALM_GOLDEN


def _random_batch(rows: int) -> dict[str, jnp.ndarray]:
    rng = np.random.default_rng(0)
    enc = rng.integers(2, 384, size=(rows, 16)).astype(np.int32)
    enc[:, 12:] = 0
    tgt = rng.integers(2, 384, size=(rows, 8)).astype(np.int32)
    tgt[::2, 6:] = 0
    return {
        "encoder_input_tokens": enc,
        "decoder_target_tokens": tgt,
        "decoder_input_tokens": np.concatenate(
            [np.zeros((rows, 1), np.int32), tgt[:, :-1]], axis=1
        ),
        "decoder_loss_weights": (tgt > 0).astype(np.int32),
    }


@pytest.mark.parametrize("mesh_shape", [(2, 1, 4), (1, 8, 1)])
@pytest.mark.parametrize("cfg", [T5_TINY, PALM_TINY], ids=["t5", "palm"])
def test_sharded_forward_equals_single_device(mesh_shape, cfg):
    model = (models.EncoderDecoderModel if cfg.num_encoder_layers else models.DecoderOnlyModel)(cfg)
    boxed = jax.jit(lambda r: model.get_initial_variables(r, ENC_DEC_SHAPES)["params"])(
        jax.random.key(1)
    )
    params, batch = nn.unbox(boxed), _random_batch(8)
    reference = jax.jit(model._logits)(params, batch, None)

    mesh = partitioning.make_mesh(mesh_shape)
    param_shardings = partitioning.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh)
    batch_sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
        sharded_params = jax.device_put(params, param_shardings)
        sharded_batch = jax.device_put(batch, batch_sharding)
        logits = jax.jit(model._logits)(sharded_params, sharded_batch, None)
        loss = jax.jit(model.loss_fn)(sharded_params, sharded_batch, None)[0]
    assert sharded_params["decoder"]["decoder_norm"]["scale"].sharding.spec == PartitionSpec(None)
    np.testing.assert_allclose(logits, reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(loss, jax.jit(model.loss_fn)(params, batch, None)[0], rtol=1e-6)
