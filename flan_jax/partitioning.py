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
        raise ValueError(f"mesh shape {tuple(shape)} must have one size per axis {tuple(axis_names)}")
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
    """Maps a tree of logical PartitionSpecs (e.g. nn.get_partition_spec(boxed)) to NamedShardings."""
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(spec), rules)),
        tree,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
