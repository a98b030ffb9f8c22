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
    dcn_shape: Sequence[int] | None = None,
) -> Mesh:
    """Builds a mesh with Auto axis types (T5X-style automatic sharding).

    One slice (or one GPU host, or CPU): `shape` is the whole mesh. On TPU the devices are
    laid out by `jax.experimental.mesh_utils.create_device_mesh`, so mesh neighbours are
    interconnect neighbours; elsewhere they keep `jax.devices()` order.

    Several slices (multi-slice TPU) or hosts joined by the data-center network: `shape` is
    the mesh *within* one slice and `dcn_shape` how many slices each axis spans, e.g. two
    v5e-16 slices with data across slices: shape (1, 16, 1), dcn_shape (2, 1, 1) -> a
    (2, 16, 1) mesh whose `data` axis crosses the DCN and whose `fsdp` axis stays inside a
    slice. A slice is the devices sharing `slice_index` on TPU, elsewhere one host's devices.

    Args:
      shape: sizes for (data, fsdp, model) within a slice; one entry may be -1 to take the
        remaining devices.
      axis_names: mesh axis names, default ('data', 'fsdp', 'model').
      devices: devices to use (default: all global devices).
      dcn_shape: slices spanned by each axis (product = number of slices); None: one slice.
    """
    grid = device_grid(shape, axis_names, jax.devices() if devices is None else devices, dcn_shape)
    return Mesh(grid, tuple(axis_names), axis_types=(jax.sharding.AxisType.Auto,) * grid.ndim)


def device_grid(
    shape: Sequence[int],
    axis_names: Sequence[str],
    devices: Sequence[jax.Device],
    dcn_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """The device array of `make_mesh` (same arguments), before it becomes a Mesh."""
    devices = list(devices)
    shape, dcn = list(shape), [1] * len(shape) if dcn_shape is None else list(dcn_shape)
    if len(shape) != len(axis_names) or len(dcn) != len(axis_names):
        raise ValueError(
            f"mesh shape {tuple(shape)} and dcn_shape {tuple(dcn)} must each have one size "
            f"per axis {tuple(axis_names)}"
        )
    if any(d < 1 for d in dcn):
        raise ValueError(f"dcn_shape {tuple(dcn)}: sizes must be >= 1")
    slices = _slices(devices) if dcn_shape is not None else [devices]
    if len(slices) != int(np.prod(dcn)):
        raise ValueError(
            f"dcn_shape {tuple(dcn)} spans {int(np.prod(dcn))} slices but the devices form "
            f"{len(slices)} (slice_index on TPU, else hosts); make the product of "
            "dcn_shape equal the number of slices"
        )
    per_slice = len(devices) // len(slices)
    if any(len(s) != per_slice for s in slices):
        raise ValueError(f"slices have unequal device counts {[len(s) for s in slices]}")
    shape = _resolve_shape(shape, axis_names, per_slice)
    blocks = np.empty(len(slices), dtype=object)
    for i, slice_devices in enumerate(slices):
        blocks[i] = _slice_mesh(shape, slice_devices)
    # [*dcn, *shape] -> interleave (dcn_0, shape_0, dcn_1, ...) -> each axis = dcn_i x shape_i,
    # the slice index being the major (outer) part of the axis
    grid = np.stack(list(blocks)).reshape(dcn + shape)
    n = len(shape)
    grid = grid.transpose([k for i in range(n) for k in (i, n + i)])
    return grid.reshape([d * s for d, s in zip(dcn, shape)])


def _resolve_shape(shape: list[int], axis_names: Sequence[str], num_devices: int) -> list[int]:
    """Fills a -1 and checks the product against the device count."""
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)}: at most one axis may be -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if num_devices % known:
            raise ValueError(
                f"mesh shape {tuple(shape)}: {num_devices} devices are not divisible by the "
                f"fixed axes' product {known}; change the mesh sizes"
            )
        shape[shape.index(-1)] = num_devices // known
    if int(np.prod(shape)) != num_devices:
        raise ValueError(
            f"mesh shape {dict(zip(axis_names, shape))} has {int(np.prod(shape))} devices but "
            f"{num_devices} are available; make the product equal the device count (or use -1)"
        )
    return shape


def _slices(devices: Sequence[jax.Device]) -> list[list[jax.Device]]:
    """Devices grouped by `slice_index` on TPU (multi-slice), else by host (`process_index`)."""
    key = "slice_index" if devices[0].platform == "tpu" else "process_index"
    groups: dict[int, list[jax.Device]] = {}
    for d in devices:
        groups.setdefault(getattr(d, key), []).append(d)
    return [groups[k] for k in sorted(groups)]


def _slice_mesh(shape: Sequence[int], devices: Sequence[jax.Device]) -> np.ndarray:
    """One slice's devices as an array of `shape` (topology-aware on TPU)."""
    if devices[0].platform == "tpu":
        from jax.experimental import mesh_utils

        return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return np.asarray(devices, dtype=object).reshape(shape)


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
    invalid (a spec with more axes than the array), hence this derivation.
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
