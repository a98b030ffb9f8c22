"""Schedules, Adafactor's T5 defaults, clipping, and microbatched == full-batch gradients."""

import jax
import numpy as np
import optax
import pytest
from partitioning_test import SHAPES, ToyModel, toy_batch

from flan_jax import partitioning
from flan_jax.training import optimizer, train_state


def test_constant_and_rsqrt_schedules():
    const = optimizer.make_schedule(optimizer.OptimizerConfig(learning_rate=1e-3))
    assert [float(const(s)) for s in (0, 10, 1000)] == pytest.approx([1e-3] * 3)
    rsqrt = optimizer.make_schedule(
        optimizer.OptimizerConfig(learning_rate=0.01, schedule="rsqrt", warmup_steps=100)
    )
    got = [float(rsqrt(s)) for s in (0, 49, 99, 399, 9999)]
    assert got == pytest.approx([1e-4, 5e-3, 1e-2, 5e-3, 1e-3], rel=1e-6)


def test_cooldown_decays_linearly_to_zero_at_its_end():
    cfg = optimizer.OptimizerConfig(learning_rate=0.02, cooldown_fraction=0.4, cooldown_end=1000)
    wsd = optimizer.make_schedule(cfg)
    got = [float(wsd(s)) for s in (0, 600, 700, 900, 999, 1000, 1200)]
    assert got == pytest.approx([0.02, 0.02, 0.015, 0.005, 0.00005, 0.0, 0.0], rel=1e-5)
    rsqrt = optimizer.make_schedule(
        optimizer.OptimizerConfig(
            learning_rate=0.01,
            schedule="rsqrt",
            warmup_steps=100,
            cooldown_fraction=0.4,
            cooldown_end=500,
        )
    )
    # rsqrt's 5e-3 at step 399, halved by the cooldown (101 of its 200 steps left)
    assert float(rsqrt(399)) == pytest.approx(5e-3 * 101 / 200, rel=1e-6)
    with pytest.raises(ValueError, match=r"needs cooldown_end \(None\)"):
        optimizer.OptimizerConfig(cooldown_fraction=0.3)
    with pytest.raises(ValueError, match=r"cooldown_fraction \(1.5\) must be in"):
        optimizer.OptimizerConfig(cooldown_fraction=1.5, cooldown_end=10)


def test_config_validation_quotes_values():
    with pytest.raises(ValueError, match="schedule 'cosine' must be one of"):
        optimizer.OptimizerConfig(schedule="cosine")
    with pytest.raises(ValueError, match=r"learning_rate \(-1\)"):
        optimizer.OptimizerConfig(learning_rate=-1)
    with pytest.raises(ValueError, match="rsqrt' needs warmup_steps"):
        optimizer.OptimizerConfig(schedule="rsqrt")


def test_adafactor_matches_optax_t5_defaults():
    params = {"w": np.linspace(-1, 1, 256 * 128, dtype=np.float32).reshape(256, 128)}
    grads = {"w": np.cos(params["w"])}
    ours = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=1e-2))
    ref = optax.adafactor(
        1e-2, decay_rate=0.8, clipping_threshold=1.0, multiply_by_parameter_scale=True
    )
    u1, _ = ours.update(grads, ours.init(params), params)
    u2, _ = ref.update(grads, ref.init(params), params)
    np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)


def test_global_norm_clip_bounds_update_input():
    tx = optimizer.make_optimizer(
        optimizer.OptimizerConfig(
            global_norm_clip=0.5, multiply_by_parameter_scale=False, clipping_threshold=None
        )
    )
    params = {"w": np.ones((4,), np.float32)}
    state = tx.init(params)
    small, _ = tx.update({"w": np.full((4,), 1e-3, np.float32)}, state, params)
    big, _ = tx.update({"w": np.full((4,), 1e3, np.float32)}, state, params)
    # adafactor normalises by the second moment, so both give the same direction and size
    np.testing.assert_allclose(small["w"], big["w"], rtol=1e-5)


@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (2, 1, 4)])
def test_microbatched_grads_equal_full_batch(mesh_shape):
    devices = jax.devices()[: int(np.prod(mesh_shape))]
    mesh = partitioning.make_mesh(mesh_shape, devices=devices)
    model = ToyModel()
    params = jax.jit(
        lambda r: train_state.nn.unbox(model.get_initial_variables(r, SHAPES)["params"])
    )(jax.random.PRNGKey(0))
    batch = toy_batch()

    def grads(n):
        cfg = train_state.StepConfig(num_microbatches=n)
        fn = jax.jit(
            lambda p, b: train_state.grads_and_metrics(p, b, model.loss_fn, cfg, None, mesh)
        )
        with jax.set_mesh(mesh), train_state.nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
            return jax.device_get(
                fn(params, jax.device_put(batch, partitioning.batch_sharding(mesh)))
            )

    full_g, full_m = grads(1)
    for n in (2, 4):
        g, m = grads(n)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, full_g)
        np.testing.assert_allclose(m["loss"], full_m["loss"], rtol=1e-6)
        assert m["weight_sum"] == full_m["weight_sum"] and m["num_examples"] == 16
