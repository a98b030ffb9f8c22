"""Logical axis names -> mesh axes ('data', 'fsdp', 'model'): the one rules table, and meshes.

Every parameter and activation in flan_jax declares logical axis names where it is
created; this module alone decides how those names map onto the device mesh.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "model")

# Parameters use the plain names; activations use the `activation_*` names (MaxText's
# split), so that e.g. `embed` of a weight can be fsdp-sharded while the `embed` of an
# activation stays whole (its batch is already split over data and fsdp).
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "model"),
    ("activation_heads", "model"),
    ("activation_kv", None),
    ("activation_vocab", "model"),
    # parameters
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("relpos_buckets", None),
    ("layers", None),
    ("norm", None),
)


def make_mesh(
    shape: Sequence[int] = (-1, 1, 1),
    axis_names: Sequence[str] = MESH_AXES,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Builds a mesh with Auto axis types (T5X-style automatic sharding).

    Args:
      shape: sizes for (data, fsdp, model); one entry may be -1 to take the remaining devices.
      axis_names: mesh axis names, default ('data', 'fsdp', 'model').
      devices: devices to use (default: all global devices).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != len(axis_names):
        raise ValueError(
            f"mesh shape {tuple(shape)} must have one size per axis {tuple(axis_names)}"
        )
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)}: at most one axis may be -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(
                f"mesh shape {tuple(shape)}: {len(devices)} devices are not divisible by the "
                f"fixed axes' product {known}; change the mesh sizes"
            )
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(
            f"mesh shape {dict(zip(axis_names, shape))} has {int(np.prod(shape))} devices but "
            f"{len(devices)} are available; make the product equal the device count (or use -1)"
        )
    return Mesh(
        np.asarray(devices).reshape(shape),
        tuple(axis_names),
        axis_types=(jax.sharding.AxisType.Auto,) * len(axis_names),
    )


def logical_to_mesh_spec(logical_axes: Sequence[str | None] | None, rules=LOGICAL_AXIS_RULES):
    """PartitionSpec for one array's logical axes (None -> replicated)."""
    if logical_axes is None:
        return PartitionSpec()
    return nn.logical_to_mesh_axes(tuple(logical_axes), rules)


def logical_to_mesh_sharding(tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """Maps a tree of logical PartitionSpecs (nn.get_partition_spec(boxed)) to NamedShardings."""
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(spec), rules)),
        tree,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


BATCH_AXES = ("data", "fsdp")


def data_parallel_size(mesh: Mesh) -> int:
    """Number of ways the batch is split: data * fsdp."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.shape]))


def validate_batch_size(batch_size: int, mesh: Mesh, num_microbatches: int = 1) -> None:
    """Fails before compiling when the global batch does not split over the mesh and hosts."""
    d = data_parallel_size(mesh)
    if batch_size % num_microbatches:
        raise ValueError(
            f"BATCH_SIZE ({batch_size}) must be divisible by num_microbatches ({num_microbatches})"
        )
    micro = batch_size // num_microbatches
    if micro % d:
        raise ValueError(
            f"BATCH_SIZE ({batch_size}) / num_microbatches ({num_microbatches}) = {micro} must be "
            f"divisible by data*fsdp ({d}) of mesh {dict(mesh.shape)}"
        )
    if batch_size % jax.process_count():
        raise ValueError(
            f"BATCH_SIZE ({batch_size}) must be divisible by the process count "
            f"({jax.process_count()}): each host feeds an equal share"
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a [batch, ...] array: batch split over data and fsdp, rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def params_shardings(boxed_params, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """NamedShardings for a (possibly abstract) tree of nn.Partitioned-boxed parameters.

    Unboxed leaves (no logical names) are replicated. The result has the unboxed tree's
    structure.
    """
    specs = nn.get_partition_spec(boxed_params)
    return logical_to_mesh_sharding(specs, mesh, rules)


def _dict_keys(path) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def opt_state_shardings(opt_state_shapes, params_shapes, param_shardings, mesh: Mesh):
    """Shardings for optimizer state derived from the parameters' shardings.

    A state leaf whose trailing dict keys name a parameter and whose shape equals that
    parameter's shape takes its sharding (momenta, unfactored `v`); anything else
    (Adafactor's factored `v_row`/`v_col`, counts) is replicated: it is O(rows + cols).
    optax copies logical annotations onto factored statistics of lower rank, which is
    invalid (see STACK.md), hence this derivation.
    """
    by_path = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params_shapes)[0]:
        by_path[_dict_keys(path)] = leaf.shape
    shard_by_path = {
        _dict_keys(path): s for path, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]
    }
    repl = replicated(mesh)

    def pick(path, leaf):
        keys = _dict_keys(path)
        for start in range(len(keys)):
            suffix = keys[start:]
            if suffix in by_path:
                return shard_by_path[suffix] if by_path[suffix] == leaf.shape else repl
        return repl

    return jax.tree_util.tree_map_with_path(pick, opt_state_shapes)
