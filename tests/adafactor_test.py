"""flan_jax's Adafactor against optax.adafactor: bitwise-equal updates and states over 12 steps,
the same state tree (interchangeable checkpoints), and sharded == single-device updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from tiny_configs import T5_TINY

from flan_jax import partitioning
from flan_jax.model import models
from flan_jax.training import adafactor, optimizer, train_state

STEPS = 12


def assert_close(actual, desired, msg=""):
    """Within 1e-6 relative, or 1e-6 of the leaf's largest value (sharded reductions sum in
    another order; elements near zero carry that noise)."""
    desired = np.asarray(desired)
    atol = 1e-6 * float(np.max(np.abs(desired), initial=0.0))
    np.testing.assert_allclose(actual, desired, rtol=1e-6, atol=atol, err_msg=msg)


def t5_tiny_params():
    model = models.EncoderDecoderModel(T5_TINY)
    shapes = {k: (2, 8) for k in ("encoder_input_tokens", "decoder_input_tokens")}
    return jax.jit(lambda r: nn.unbox(model.get_initial_variables(r, shapes)["params"]))(
        jax.random.PRNGKey(0)
    )


def leaves_params():
    """Factored ([256, 130], [3, 200, 160]: rank 3) and unfactored ([512], [6, 32], [100, 300])."""
    shapes = {"a": (256, 130), "b": (3, 200, 160), "c": (512,), "d": (6, 32), "e": (100, 300)}
    keys = jax.random.split(jax.random.PRNGKey(1), len(shapes))
    params = {k: jax.random.normal(r, s) for r, (k, s) in zip(keys, shapes.items())}
    params["z"] = jnp.zeros((128, 256))  # zero-initialised: the parameter-scale floor
    return params


def run(tx, params, steps=STEPS):
    """Per step: the updates; and the final state. Gradients vary with the step (in size too)
    but not with the parameters, so that ulp differences do not feed back into them."""
    update = jax.jit(tx.update)
    state, out, init = tx.init(params), [], params
    for i in range(steps):
        grads = jax.tree.map(
            lambda p, i=i: (
                jnp.cos(p * (i + 1) + jnp.arange(p.size).reshape(p.shape) * 1e-3)
                * 10.0 ** (i % 3 - 3)
            ),
            init,
        )
        updates, state = update(grads, state, params)
        out.append(updates)
        params = optax.apply_updates(params, updates)
    return out, state


SETTINGS = {
    "t5": {},
    "no clipping, no parameter scale": dict(
        clipping_threshold=None, multiply_by_parameter_scale=False
    ),
    "weight decay": dict(weight_decay_rate=1e-3),
}


@pytest.mark.parametrize("params_fn", [t5_tiny_params, leaves_params], ids=["t5_tiny", "leaves"])
@pytest.mark.parametrize("kwargs", SETTINGS.values(), ids=SETTINGS.keys())
def test_updates_equal_optax_adafactor_over_steps(params_fn, kwargs):
    params = params_fn()
    sched = optimizer.make_schedule(optimizer.OptimizerConfig(learning_rate=1e-2))
    ours, our_state = run(adafactor.adafactor(sched, **kwargs), params)
    ref, ref_state = run(optax.adafactor(sched, **kwargs), params)
    for step, (u1, u2) in enumerate(zip(ours, ref)):
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(u1), jax.tree.leaves(u2)):
            np.testing.assert_array_equal(a, b, f"step {step} {jax.tree_util.keystr(path)}")
    assert jax.tree.structure(our_state) == jax.tree.structure(ref_state)
    jax.tree.map(np.testing.assert_array_equal, our_state, ref_state)


def test_state_is_optax_adafactor_state_and_interchangeable():
    """A state written by optax.adafactor continues in ours (a restored old checkpoint)."""
    params = leaves_params()
    sched = optimizer.make_schedule(optimizer.OptimizerConfig())
    ours, ref = adafactor.adafactor(sched), optax.adafactor(sched)
    shapes = lambda tx: jax.tree.map(jnp.shape, jax.eval_shape(tx.init, params))  # noqa: E731
    assert shapes(ours) == shapes(ref)
    _, ref_state = run(ref, params, steps=3)
    grads = jax.tree.map(jnp.sin, params)
    u1, s1 = ours.update(grads, ref_state, params)
    u2, s2 = ref.update(grads, ref_state, params)
    jax.tree.map(np.testing.assert_array_equal, (u1, s1), (u2, s2))
    assert int(s1[0].count) == 4 and int(s1[2].count) == 4


def test_config_switch_and_validation():
    params = {"w": jnp.ones((4, 4))}
    for impl in optimizer.ADAFACTOR_IMPLEMENTATIONS:
        tx = optimizer.make_optimizer(optimizer.OptimizerConfig(implementation=impl))
        updates, _ = tx.update(params, tx.init(params), params)
        np.testing.assert_allclose(updates["w"], -1e-3 * np.ones((4, 4)), rtol=1e-6)
    with pytest.raises(ValueError, match="implementation 'adam' must be one of"):
        optimizer.OptimizerConfig(implementation="adam")
    with pytest.raises(ValueError, match="needs the parameters"):
        adafactor.adafactor(1e-3).update(params, adafactor.adafactor(1e-3).init(params))


def test_sharded_update_equals_single_device():
    """Row/column means and block RMS over sharded axes: 8 devices, (2, 1, 4) mesh."""
    params = leaves_params()
    tx = optimizer.make_optimizer(optimizer.OptimizerConfig())
    grads = jax.tree.map(lambda p: jnp.cos(3.0 * p) + 0.1, params)
    single = jax.jit(tx.update)(grads, tx.init(params), params)
    mesh = partitioning.make_mesh((2, 1, 4))

    def spec(x):  # the last two axes over data and model where they divide
        axes = [None] * x.ndim
        for i, (name, n) in zip(range(x.ndim - 2, x.ndim), (("data", 2), ("model", 4))):
            axes[i] = name if i >= 0 and x.shape[i] % n == 0 else None
        return jax.sharding.PartitionSpec(*axes)

    sh = jax.tree.map(lambda x: jax.sharding.NamedSharding(mesh, spec(x)), params)
    opt_shape = jax.eval_shape(tx.init, params)
    opt_sh = partitioning.opt_state_shardings(opt_shape, params, sh, mesh)
    state = jax.jit(tx.init, out_shardings=opt_sh)(jax.device_put(params, sh))
    update = jax.jit(tx.update, out_shardings=(sh, opt_sh))
    sharded = update(jax.device_put(grads, sh), state, jax.device_put(params, sh))
    assert sharded[0]["a"].sharding == sh["a"]
    jax.tree.map(lambda a, b: assert_close(a, b), sharded, single)


def test_train_steps_equal_with_either_implementation():
    """5 compiled train steps (donated state) of the T5 tiny model: bitwise the same state."""
    model = models.EncoderDecoderModel(T5_TINY)
    rng = np.random.default_rng(0)
    batch = {
        k: rng.integers(2, 384, (4, n)).astype(np.int32)
        for k, n in (("encoder_input_tokens", 16), ("decoder_input_tokens", 8))
    }
    batch["decoder_target_tokens"] = batch["decoder_input_tokens"]
    batch["decoder_loss_weights"] = np.ones((4, 8), np.int32)
    shapes = {k: v.shape for k, v in batch.items()}
    mesh = partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    states = {}
    for impl in optimizer.ADAFACTOR_IMPLEMENTATIONS:
        cfg = optimizer.OptimizerConfig(implementation=impl)
        tx = optimizer.make_optimizer(cfg)
        with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
            step, _, sh = train_state.compile_train_step(
                model, tx, optimizer.make_schedule(cfg), train_state.StepConfig(), mesh, shapes
            )
            params = train_state.init_params(model, shapes, jax.random.PRNGKey(0), sh["params"])
            state = train_state.init_state(params, tx, sh)
            for _ in range(5):
                state, _ = step(state, batch)
        states[impl] = jax.device_get(state)
    jax.tree.map(np.testing.assert_array_equal, states["flan_jax"], states["optax"])
