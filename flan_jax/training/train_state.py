"""The train state, its sharded initialisation, and the pure train / eval steps."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding

from flan_jax import partitioning
from flan_jax.types import Batch, PyTree

Metrics = dict[str, jax.Array]
# TrainState is a plain dict (orbax saves and restores it as-is):
#   {"step": int32 scalar, "params": tree, "opt_state": tree}
TrainState = dict[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepConfig:
    """What the train step does besides the optimizer update.

    bf16 compute, z-loss and the loss normalizing factor belong to the model
    (`TransformerConfig.dtype`, `models.LossConfig`); the step only sums gradients.

    Attributes:
      num_microbatches: split each batch into this many microbatches and sum their
        gradients. Each microbatch's loss is told the full batch's weight sum
        (`loss_fn(..., weight_total=)`), so a loss normalised by NUM_REAL_TARGET_TOKENS
        divides by the batch's token count, and the sum equals the full-batch gradient.
      dropout_seed: base seed of the dropout rng, folded with the step (and microbatch).
    """

    num_microbatches: int = 1
    dropout_seed: int = 0

    def __post_init__(self):
        if self.num_microbatches < 1:
            raise ValueError(f"num_microbatches ({self.num_microbatches}) must be >= 1")


def state_shardings(model, tx, input_shapes, mesh: Mesh, rng=None) -> tuple[PyTree, TrainState]:
    """Abstract state (ShapeDtypeStructs with shardings) and its shardings, without allocating."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    boxed = jax.eval_shape(lambda r: model.get_initial_variables(r, input_shapes), rng)["params"]
    param_sh = partitioning.params_shardings(boxed, mesh)
    # Unbox without a sharding constraint: under jax.set_mesh (as in
    # train.train) nn.unbox constrains the abstract leaves eagerly and raises TypeError.
    params_shape = jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
        boxed,
        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
    )
    opt_shape = jax.eval_shape(tx.init, params_shape)
    opt_sh = partitioning.opt_state_shardings(opt_shape, params_shape, param_sh, mesh)
    shardings = {"step": partitioning.replicated(mesh), "params": param_sh, "opt_state": opt_sh}
    shapes = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": params_shape,
        "opt_state": opt_shape,
    }
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    return abstract, shardings


def init_params(model, input_shapes, rng, shardings) -> PyTree:
    """Parameters created directly in their shardings (never materialised on one device)."""
    init = jax.jit(
        lambda r: nn.unbox(model.get_initial_variables(r, input_shapes)["params"]),
        out_shardings=shardings,
    )
    return init(rng)


def init_state(params, tx, shardings: TrainState) -> TrainState:
    """Optimizer state under jit with out_shardings (plain tx.init leaves `count` on one device)."""
    opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings["step"])
    return {"step": step, "params": params, "opt_state": opt_state}


def _split_microbatches(batch: Batch, n: int, mesh: Mesh) -> Batch:
    """[B, ...] -> [n, B/n, ...]; microbatch i takes rows i, i+n, ... so it spans every shard."""
    sharding = NamedSharding(mesh, jax.sharding.PartitionSpec(None, partitioning.BATCH_AXES))

    def split(x):
        x = x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, sharding)

    return jax.tree.map(split, batch)


def grads_and_metrics(params, batch: Batch, loss_fn: Callable, config: StepConfig, rng, mesh: Mesh):
    """Gradients (summed over microbatches) and summed metrics of one batch.

    `loss_fn(params, batch, rng, weight_total=None)`; microbatches get `weight_total`.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if config.num_microbatches == 1:
        (_, metrics), grads = grad_fn(params, batch, rng)
        return grads, metrics
    micro = _split_microbatches(batch, config.num_microbatches, mesh)
    # a microbatch dividing by its own weight sum would make the summed loss ~n times too large
    total = jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32))

    def body(carry, xs):
        i, mb = xs
        mb_rng = None if rng is None else jax.random.fold_in(rng, i)
        (_, m), g = grad_fn(params, mb, mb_rng, weight_total=total)
        acc_g, acc_m = carry
        return (jax.tree.map(jnp.add, acc_g, g), jax.tree.map(jnp.add, acc_m, m)), None

    zeros_g = jax.tree.map(jnp.zeros_like, params)
    first_mb = jax.tree.map(lambda x: x[0], micro)
    m_shape = jax.eval_shape(lambda: grad_fn(params, first_mb, rng, weight_total=total)[0][1])
    zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
    idx = jnp.arange(config.num_microbatches)
    (grads, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m), (idx, micro))
    return grads, metrics


def make_train_step(
    loss_fn: Callable, tx: optax.GradientTransformation, schedule, config: StepConfig, mesh: Mesh
):
    """Pure `train_step(state, batch) -> (state, metrics)`; jit it with shardings and donation."""

    def train_step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(jax.random.PRNGKey(config.dropout_seed), state["step"])
        grads, metrics = grads_and_metrics(state["params"], batch, loss_fn, config, rng, mesh)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = dict(
            metrics, learning_rate=schedule(state["step"]), grad_norm=optax.global_norm(grads)
        )
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    return train_step


def make_eval_step(loss_fn: Callable):
    """Pure `eval_step(params, batch) -> metrics` (teacher-forced, no dropout)."""

    def eval_step(params, batch: Batch):
        _, metrics = loss_fn(params, batch, None)
        return metrics

    return eval_step


def summarize(metrics: Mapping[str, float | np.ndarray], num_steps: int = 1) -> dict[str, float]:
    """Per-token loss and accuracy from summed metrics (T5X's conventions)."""
    w = float(metrics.get("weight_sum", 0.0)) or 1.0
    out = {
        "loss": float(metrics["loss"]) / max(num_steps, 1),
        "cross_ent_per_token": float(metrics["cross_ent_loss"]) / w,
        "accuracy": float(metrics["correct"]) / w,
        "weight_sum": float(metrics.get("weight_sum", 0.0)),
    }
    if "z_loss" in metrics:
        out["z_loss"] = float(metrics["z_loss"]) / max(num_steps, 1)
    return out


def step_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled (per-device SPMD) computation, from XLA's cost analysis.

    Only a second opinion: on GPU it can count 5-50x fewer FLOPs than the model performs, and
    it counts a scanned layer stack once. MFU uses the analytic count (flan_jax.model.flops).
    """
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def compile_train_step(model, tx, schedule, step_config: StepConfig, mesh: Mesh, shapes):
    """The train step jitted with the real shardings, lowered on abstract values and compiled.

    Call under `jax.set_mesh(mesh)` and the logical axis rules. Returns
    (compiled, abstract state, state shardings); nothing is allocated.
    """
    batch_sh, repl = partitioning.batch_sharding(mesh), partitioning.replicated(mesh)
    abstract, shardings = state_shardings(model, tx, shapes, mesh)
    step_fn = jax.jit(
        make_train_step(model.loss_fn, tx, schedule, step_config, mesh),
        in_shardings=(shardings, batch_sh),
        out_shardings=(shardings, repl),
        donate_argnums=0,
        keep_unused=True,  # every state and batch buffer is an argument: exact memory report
    )
    batch_abstract = {
        k: jax.ShapeDtypeStruct(v, np.int32, sharding=batch_sh) for k, v in shapes.items()
    }
    return step_fn.lower(abstract, batch_abstract).compile(), abstract, shardings


MEMORY_FIELDS = {
    "arguments": "argument_size_in_bytes",
    "outputs": "output_size_in_bytes",
    "aliased (donated)": "alias_size_in_bytes",
    "temporaries": "temp_size_in_bytes",
    "generated code": "generated_code_size_in_bytes",
}


def memory_report(compiled) -> dict[str, int | float | None]:
    """Bytes per device of a compiled step (XLA's memory_analysis) and its FLOPs per device.

    `peak` = arguments + outputs - aliased + temporaries + generated code: the live set when
    every buffer is resident at once (donated state is counted once).
    """
    stats = compiled.memory_analysis()
    report = {name: int(getattr(stats, attr)) for name, attr in MEMORY_FIELDS.items()}
    report["peak"] = (
        report["arguments"] + report["outputs"] - report["aliased (donated)"]
        + report["temporaries"] + report["generated code"]
    )  # fmt: skip
    report["flops"] = step_flops(compiled)
    return report
