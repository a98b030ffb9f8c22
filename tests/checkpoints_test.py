"""Checkpoints: restore == saved (onto another mesh), iterator state, params-only loading."""

import jax
import numpy as np
import optax
import pytest
import tensorflow as tf
from partitioning_test import SHAPES, ToyModel

from flan_jax import partitioning
from flan_jax.checkpoints import manager as checkpoints
from flan_jax.training import optimizer, train_state


def _state(mesh):
    model = ToyModel()
    tx = optimizer.make_optimizer(optimizer.OptimizerConfig())
    abstract, sh = train_state.state_shardings(model, tx, SHAPES, mesh)
    params = train_state.init_params(model, SHAPES, jax.random.PRNGKey(1), sh["params"])
    state = train_state.init_state(params, tx, sh)
    # make the optimizer state non-trivial
    grads = jax.tree.map(lambda p: p * 0.5 + 0.1, params)
    _, opt = jax.jit(tx.update, out_shardings=(sh["params"], sh["opt_state"]))(
        grads, state["opt_state"], params
    )
    return dict(state, opt_state=opt), abstract


def test_restore_equals_saved_on_another_mesh_with_iterator(tmp_path):
    state, _ = _state(partitioning.make_mesh((2, 4, 1)))
    ckpt = checkpoints.Checkpointer(str(tmp_path), checkpoints.CheckpointConfig(period=1, keep=2))
    it = iter(tf.data.Dataset.range(100).shuffle(10, seed=3).batch(2))
    for _ in range(3):
        next(it)
    ckpt.save(7, state, it)
    expected_next = [next(it).numpy().tolist() for _ in range(3)]
    ckpt.close()

    _, abstract = _state(partitioning.make_mesh((1, 8, 1)))
    ckpt = checkpoints.Checkpointer(str(tmp_path), checkpoints.CheckpointConfig(period=1, keep=2))
    assert ckpt.latest_step() == 7
    it2 = iter(tf.data.Dataset.range(100).shuffle(10, seed=3).batch(2))
    restored = ckpt.restore(7, abstract, it2)
    assert [next(it2).numpy().tolist() for _ in range(3)] == expected_next
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored, state
    )
    assert restored["params"]["wi"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
    assert restored["params"]["wi"].sharding.mesh.shape["fsdp"] == 8
    assert isinstance(restored["opt_state"][0], optax.FactoredState)
    ckpt.close()


def test_keep_n_removes_old_checkpoints_and_iterators(tmp_path):
    state, _ = _state(partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    ckpt = checkpoints.Checkpointer(
        str(tmp_path), checkpoints.CheckpointConfig(period=1, keep=2, async_save=False)
    )
    it = iter(tf.data.Dataset.range(10))
    for step in (1, 2, 3, 4):
        ckpt.save(step, state, it)
    ckpt.close()
    assert ckpt.manager.all_steps() == [3, 4]
    assert sorted(tf.io.gfile.listdir(str(tmp_path / "data_iterators"))) == ["step_3", "step_4"]


def test_initial_params_from_model_dir_ignore_optimizer(tmp_path):
    state, _ = _state(partitioning.make_mesh((2, 4, 1)))
    ckpt = checkpoints.Checkpointer(str(tmp_path), checkpoints.CheckpointConfig(period=1))
    ckpt.save(5, state)
    ckpt.close()
    _, abstract = _state(partitioning.make_mesh((2, 1, 4)))
    for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "5"):
        params = checkpoints.load_initial_params(str(path), abstract["params"])
        jax.tree.map(
            lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
            params,
            state["params"],
        )
        assert params["wi"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")


def test_config_validation():
    with pytest.raises(ValueError, match=r"CHECKPOINT_PERIOD \(0\)"):
        checkpoints.CheckpointConfig(period=0)
