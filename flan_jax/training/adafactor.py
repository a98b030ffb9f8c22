"""Adafactor with T5's defaults as one computation per parameter, keeping optax.adafactor's state.

optax.adafactor chains five transformations (factored RMS, block-RMS clipping, learning rate,
parameter scale, sign flip), each a separate tree map. The arithmetic here is the same, op for
op and in the same order, so updates and states are bitwise equal (tests/adafactor_test.py).
What differs is the parameter scale: optax's `scale_by_param_block_rms` takes a gradient-safe
RMS that reduces every parameter twice, the second reduction reading a materialised
`where(rms <= floor, 1, param)` copy and waiting on the first; here each parameter is reduced
once, independently of the gradient's statistics. On CPU that removes about 3 of the ~14
parameter-sized memory passes of an update (BENCHMARKS.md, "Adafactor update").

The state is optax.adafactor's own (its `init`), so checkpoints, optimizer-state shardings
(partitioning.opt_state_shardings) and restores are interchangeable between the two.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def factored_dims(shape: tuple[int, ...], min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """(second-largest, largest) axis of a parameter whose second moment is factored, or None.

    optax's rule: rank >= 2 and the second-largest dimension at least `min_dim_size_to_factor`.
    `v_row` drops the largest axis, `v_col` the second-largest: a [512, 32128] kernel keeps
    v_row [512] and v_col [32128].
    """
    if len(shape) < 2:
        return None
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


def _second_moment_step(grad, v_row, v_col, v, decay, *, min_dim_size_to_factor, epsilon):
    """Adafactor's preconditioned gradient and the new (v_row, v_col, v) of one parameter."""
    dtype = grad.dtype
    grad_sqr = grad * grad + epsilon
    dims = factored_dims(grad.shape, min_dim_size_to_factor)
    if dims is None:
        new_v = (decay * v + (1.0 - decay) * grad_sqr).astype(dtype)
        return grad * new_v**-0.5, (v_row, v_col, new_v)
    d1, d0 = dims
    new_v_row = (decay * v_row + (1.0 - decay) * jnp.mean(grad_sqr, axis=d0)).astype(dtype)
    new_v_col = (decay * v_col + (1.0 - decay) * jnp.mean(grad_sqr, axis=d1)).astype(dtype)
    reduced_d1 = d1 - 1 if d1 > d0 else d1
    row_factor = (new_v_row / jnp.mean(new_v_row, axis=reduced_d1, keepdims=True)) ** -0.5
    col_factor = new_v_col**-0.5
    update = grad * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)
    return update, (new_v_row, new_v_col, v)


def adafactor(
    learning_rate: float | optax.Schedule,
    *,
    decay_rate: float = 0.8,
    clipping_threshold: float | None = 1.0,
    multiply_by_parameter_scale: bool = True,
    weight_decay_rate: float | None = None,
    min_dim_size_to_factor: int = 128,
    epsilon: float = 1e-30,
    min_parameter_scale: float = 1e-3,
) -> optax.GradientTransformation:
    """optax.adafactor(learning_rate, ...) without momentum, computed leaf by leaf.

    Same arguments and defaults as optax.adafactor (`epsilon` is its `eps`,
    `min_parameter_scale` the floor of scale_by_param_block_rms) and the same state tree.
    """
    reference = optax.adafactor(
        learning_rate=learning_rate,
        min_dim_size_to_factor=min_dim_size_to_factor,
        decay_rate=decay_rate,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        clipping_threshold=clipping_threshold,
        eps=epsilon,
        weight_decay_rate=weight_decay_rate,
    )
    schedule: Callable = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

    def leaf_update(grad, param, v_row, v_col, v, decay, lr):
        update, moments = _second_moment_step(
            grad, v_row, v_col, v, decay,
            min_dim_size_to_factor=min_dim_size_to_factor, epsilon=epsilon,
        )  # fmt: skip
        if clipping_threshold is not None:
            rms = jnp.sqrt(jnp.mean(update * update))
            update = update / jnp.maximum(1.0, rms / clipping_threshold)
        update = jnp.asarray(lr, grad.dtype) * update
        if multiply_by_parameter_scale:
            update = update * jnp.maximum(jnp.sqrt(jnp.mean(param * param)), min_parameter_scale)
        if weight_decay_rate is not None:
            update = update + weight_decay_rate * param
        return -update, moments

    def update_fn(grads, state, params=None):
        if params is None:
            raise ValueError(
                "adafactor's update needs the parameters: tx.update(grads, state, params)"
            )
        moments = state[0]
        (lr_state,) = [s for s in state if isinstance(s, optax.ScaleByScheduleState)] or [None]
        lr = schedule(moments.count if lr_state is None else lr_state.count)
        decay = 1.0 - jnp.asarray(moments.count + 1, jnp.float32) ** (-decay_rate)
        out = jax.tree.map(
            lambda g, p, r, c, v: leaf_update(g, p, r, c, v, decay, lr),
            grads, params, moments.v_row, moments.v_col, moments.v,
        )  # fmt: skip
        treedef = jax.tree.structure(grads)
        leaves = treedef.flatten_up_to(out)
        updates = treedef.unflatten([u for u, _ in leaves])
        new_moments = optax.FactoredState(
            count=optax.safe_increment(moments.count),
            v_row=treedef.unflatten([m[0] for _, m in leaves]),
            v_col=treedef.unflatten([m[1] for _, m in leaves]),
            v=treedef.unflatten([m[2] for _, m in leaves]),
        )
        new_state = tuple(
            new_moments
            if s is moments
            else optax.ScaleByScheduleState(count=optax.safe_increment(s.count))
            if s is lr_state
            else s
            for s in state
        )
        return updates, new_state

    return optax.GradientTransformation(reference.init, update_fn)
