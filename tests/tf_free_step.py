"""One train step built without gin, seqio or TensorFlow (used by tf_free_test in and out of a
process that blocks those imports)."""

import jax
from flax import linen as nn

from bench import train_step
from flan_jax import partitioning
from flan_jax.training import optimizer, train_state


def one_step(config: str) -> dict[str, float]:
    """Metrics of one train step of `config` (bench's model reader and random batch)."""
    model = train_step.build_model(config)
    batch = train_step.random_batch(model, 2, 16, 8, packed=True)
    shapes = {k: v.shape for k, v in batch.items()}
    cfg = optimizer.OptimizerConfig()
    tx = optimizer.make_optimizer(cfg)
    mesh = partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
        step, _, sh = train_state.compile_train_step(
            model, tx, optimizer.make_schedule(cfg), train_state.StepConfig(), mesh, shapes
        )
        params = train_state.init_params(model, shapes, jax.random.PRNGKey(0), sh["params"])
        state = train_state.init_state(params, tx, sh)
        state, metrics = step(state, jax.device_put(batch, partitioning.batch_sharding(mesh)))
        _, metrics2 = step(state, jax.device_put(batch, partitioning.batch_sharding(mesh)))
    out = {k: float(v) for k, v in jax.device_get(metrics).items()}
    out["loss_after_update"] = float(metrics2["loss"])
    return out
