"""Golden shardings, Adafactor state shardings, and sharded == single-device train steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from flan_jax import partitioning
from flan_jax.training import optimizer, train_state


class ToyNet(nn.Module):
    """Embed -> mlp -> logits, with logical axis names like the real network."""

    vocab: int = 128
    embed: int = 128
    mlp: int = 256
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, tokens, deterministic=True):
        init = nn.initializers.normal(0.05)
        emb = self.param(
            "embedding",
            nn.with_logical_partitioning(init, ("vocab", "embed")),
            (self.vocab, self.embed),
        )
        wi = self.param(
            "wi", nn.with_logical_partitioning(init, ("embed", "mlp")), (self.embed, self.mlp)
        )
        wo = self.param(
            "wo", nn.with_logical_partitioning(init, ("mlp", "vocab")), (self.mlp, self.vocab)
        )
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (self.embed,)
        )
        x = jnp.take(emb, tokens, axis=0).astype(jnp.float32) * scale
        x = nn.with_logical_constraint(
            x, ("activation_batch", "activation_length", "activation_embed")
        )
        h = nn.relu(x @ wi)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return h @ wo


class ToyModel:
    """The model contract (get_initial_variables, loss_fn) around ToyNet."""

    def __init__(self, dropout_rate=0.0, poison_token=None):
        self.net = ToyNet(dropout_rate=dropout_rate)
        self.poison_token = poison_token

    def get_initial_variables(self, rng, input_shapes, input_types=None):
        return self.net.init(rng, jnp.ones(input_shapes["decoder_input_tokens"], jnp.int32))

    def loss_fn(self, params, batch, dropout_rng, weight_total=None):  # a sum: no normaliser
        det = dropout_rng is None
        rngs = None if det else {"dropout": dropout_rng}
        logits = self.net.apply(
            {"params": params}, batch["decoder_input_tokens"], deterministic=det, rngs=rngs
        )
        logits = logits.astype(jnp.float32)
        targets = batch["decoder_target_tokens"]
        w = batch["decoder_loss_weights"].astype(jnp.float32)
        logp = jax.nn.log_softmax(logits)
        xent = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        loss = jnp.sum(xent * w)
        if self.poison_token is not None:
            loss = jnp.where(jnp.any(targets == self.poison_token), jnp.nan, loss)
        metrics = {
            "loss": loss,
            "cross_ent_loss": loss,
            "z_loss": jnp.zeros(()),
            "weight_sum": jnp.sum(w),
            "correct": jnp.sum((jnp.argmax(logits, -1) == targets) * w),
            "num_examples": jnp.asarray(targets.shape[0], jnp.float32),
        }
        return loss, metrics


def toy_batch(batch_size=16, length=8, seed=0):
    rng = np.random.default_rng(seed)
    tgt = rng.integers(2, 128, size=(batch_size, length)).astype(np.int32)
    inp = np.concatenate([np.zeros((batch_size, 1), np.int32), tgt[:, :-1]], axis=1)
    w = (rng.random((batch_size, length)) > 0.2).astype(np.int32)
    return {"decoder_input_tokens": inp, "decoder_target_tokens": tgt, "decoder_loss_weights": w}


SHAPES = {"decoder_input_tokens": (16, 8)}


def test_golden_param_and_adafactor_state_shardings():
    mesh = partitioning.make_mesh((2, 1, 4))
    tx = optimizer.make_optimizer(optimizer.OptimizerConfig())
    _, sh = train_state.state_shardings(ToyModel(), tx, SHAPES, mesh)
    specs = jax.tree.map(lambda s: s.spec, sh["params"])
    # a mesh axis is used once per array: ("mlp", "vocab") -> (None, "model")
    assert specs == {
        "embedding": P("model", "fsdp"),
        "wi": P("fsdp", "model"),
        "wo": P(None, "model"),
        "scale": P(None),
    }
    flat = {
        jax.tree_util.keystr(p): s.spec
        for p, s in jax.tree_util.tree_flatten_with_path(sh["opt_state"])[0]
    }
    # factored statistics (rank 1) are replicated; the full `v` of the 1-D scale is replicated too
    assert flat == {
        "[0].count": P(),
        **{f"[0].{k}['{n}']": P() for k in ("v_row", "v_col") for n in specs},
        # factored params keep a dummy (1,) `v`; the 1-D scale keeps a full `v` with its spec
        **{f"[0].v['{n}']": P() for n in ("embedding", "wi", "wo")},
        "[0].v['scale']": P(None),
        "[2].count": P(),
    }


def test_opt_state_takes_param_spec_when_shapes_match():
    mesh = partitioning.make_mesh((1, 8, 1))
    params = {
        "a": jax.ShapeDtypeStruct((8, 16), jnp.float32),
        "b": jax.ShapeDtypeStruct((4,), jnp.float32),
    }
    psh = {
        "a": jax.sharding.NamedSharding(mesh, P("fsdp", None)),
        "b": partitioning.replicated(mesh),
    }
    opt = jax.eval_shape(optimizer.optax.adam(1e-3).init, params)
    osh = partitioning.opt_state_shardings(opt, params, psh, mesh)
    assert osh[0].mu["a"].spec == P("fsdp", None)
    assert osh[0].nu["b"].spec == P()
    assert osh[0].count.spec == P()


def test_validate_batch_size_quotes_numbers():
    mesh = partitioning.make_mesh((2, 4, 1))
    with pytest.raises(ValueError, match=r"BATCH_SIZE \(12\) .* data\*fsdp \(8\)"):
        partitioning.validate_batch_size(12, mesh)
    with pytest.raises(ValueError, match=r"num_microbatches \(3\)"):
        partitioning.validate_batch_size(16, mesh, num_microbatches=3)
    partitioning.validate_batch_size(16, mesh, num_microbatches=2)


def test_make_mesh_rejects_wrong_device_count():
    with pytest.raises(ValueError, match="has 16 devices but 8 are available"):
        partitioning.make_mesh((2, 2, 4))
    assert dict(partitioning.make_mesh((-1, 2, 1)).shape) == {"data": 4, "fsdp": 2, "model": 1}


def test_make_mesh_one_slice_keeps_device_order():
    mesh = partitioning.make_mesh((2, 4, 1))
    assert (mesh.devices == np.asarray(jax.devices(), dtype=object).reshape(2, 4, 1)).all()


class FakeDevice:  # a CPU/GPU host's device: hosts are the slices
    def __init__(self, id, process_index):
        self.id, self.process_index, self.platform = id, process_index, "cpu"

    def __repr__(self):
        return f"d{self.id}"


def test_device_grid_puts_each_slice_in_its_own_block():
    # 4 hosts of 4 devices, listed interleaved to show the grouping comes from process_index
    devices = [FakeDevice(i, i % 4) for i in range(16)]
    grid = partitioning.device_grid((1, 2, 2), partitioning.MESH_AXES, devices, (2, 1, 2))
    assert grid.shape == (2, 2, 4)
    slices = np.vectorize(lambda d: d.process_index)(grid)
    # data spans slices {0,1} | {2,3} (outer); model spans slice pairs, each within 2 columns
    assert slices.tolist() == [
        [[0, 0, 1, 1], [0, 0, 1, 1]],
        [[2, 2, 3, 3], [2, 2, 3, 3]],
    ]
    # within a slice, its devices in their listed order: slice 1 = d1, d5, d9, d13
    assert grid[0, :, 2:].ravel().tolist() == [devices[i] for i in (1, 5, 9, 13)]


def test_make_mesh_dcn_errors_name_the_numbers():
    with pytest.raises(
        ValueError, match=r"dcn_shape \(2, 1, 1\) spans 2 slices but the devices form 1"
    ):
        partitioning.make_mesh((1, 4, 1), dcn_shape=(2, 1, 1))  # one process: one slice
    devices = [FakeDevice(i, i // 4) for i in range(8)]
    with pytest.raises(ValueError, match="has 8 devices but 4 are available"):
        partitioning.device_grid((2, 4, 1), partitioning.MESH_AXES, devices, (2, 1, 1))
    assert partitioning.device_grid(
        (-1, 2, 1), partitioning.MESH_AXES, devices, (2, 1, 1)
    ).shape == (4, 2, 1)


def run_steps(mesh, num_steps=3, num_microbatches=1, dropout_rate=0.0):
    """Initialises on `mesh` and runs `num_steps` steps; returns (losses, params as numpy)."""
    model = ToyModel(dropout_rate=dropout_rate)
    cfg = optimizer.OptimizerConfig(learning_rate=1e-2)
    tx = optimizer.make_optimizer(cfg)
    _, sh = train_state.state_shardings(model, tx, SHAPES, mesh)
    step_cfg = train_state.StepConfig(num_microbatches=num_microbatches)
    with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
        params = train_state.init_params(model, SHAPES, jax.random.PRNGKey(0), sh["params"])
        state = train_state.init_state(params, tx, sh)
        step = jax.jit(
            train_state.make_train_step(
                model.loss_fn, tx, optimizer.make_schedule(cfg), step_cfg, mesh
            ),
            in_shardings=(sh, partitioning.batch_sharding(mesh)),
            out_shardings=(sh, partitioning.replicated(mesh)),
            donate_argnums=0,
        )
        losses = []
        for i in range(num_steps):
            batch = jax.device_put(toy_batch(seed=i), partitioning.batch_sharding(mesh))
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
    return np.array(losses), jax.device_get(state["params"])


@pytest.mark.parametrize("shape", [(2, 1, 4), (1, 8, 1), (2, 4, 1)])
def test_sharded_equals_single_device(shape):
    ref_losses, ref_params = run_steps(partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    losses, params = run_steps(partitioning.make_mesh(shape))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, ref_params
    )
    assert losses[-1] < losses[0]
