"""T5X checkpoints (Orbax step dirs and the legacy msgpack + tensorstore layout) -> flan_jax params.

Reads only the `target` subtree (the model parameters); T5X's optimizer state is skipped.
flan_jax keeps T5X's parameter names, so the tree is used as is.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from flax import serialization

from flan_jax.model import network
from flan_jax.types import Params


def checkpoint_layout(path: str) -> str:
    """Returns 'legacy' (msgpack `checkpoint` file) or 'orbax' (`state/` item) for a step dir."""
    if os.path.isfile(os.path.join(path, "checkpoint")):
        return "legacy"
    if os.path.isfile(os.path.join(path, "state", "_METADATA")):
        return "orbax"
    if os.path.isfile(os.path.join(path, "_METADATA")):
        return "orbax_item"
    raise FileNotFoundError(
        f"{path!r} is not a T5X checkpoint step dir: expected a msgpack `checkpoint` file "
        "(legacy format) or an Orbax `state/_METADATA`; pass e.g. MODEL_DIR/checkpoint_100"
    )


def load_t5x_params(path: str, dtype: np.dtype | str | None = None) -> Params:
    """Reads the model parameters of a T5X checkpoint step dir.

    Args:
      path: `.../checkpoint_<step>` written by T5X, either layout (or its Orbax `state/`).
      dtype: cast every parameter to this dtype (None: keep the stored dtype).

    Returns:
      Nested dict of numpy arrays with T5X names, e.g.
      params['encoder']['layers_0']['attention']['query']['kernel'] [embed, heads * head_dim].
    """
    path = os.path.abspath(path)
    layout = checkpoint_layout(path)
    if layout == "legacy":
        params = _load_legacy(path)
    else:
        params = _load_orbax(os.path.join(path, "state") if layout == "orbax" else path)
    if dtype is not None:
        params = jax.tree.map(lambda x: np.asarray(x, dtype), params)
    return params


def _load_orbax(item_dir: str) -> Params:
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(item_dir).item_metadata.tree
    if "target" not in tree:
        raise ValueError(
            f"Orbax checkpoint {item_dir!r} has no 'target' subtree (top-level keys "
            f"{sorted(tree)}); is it a T5X train state?"
        )
    item = {
        "target": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree["target"])
    }
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    restored = checkpointer.restore(
        item_dir,
        args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
    )
    return restored["target"]


def _is_tensorstore_spec(leaf: Any) -> bool:
    return isinstance(leaf, dict) and "driver" in leaf and "kvstore" in leaf


def _load_legacy(step_dir: str) -> Params:
    with open(os.path.join(step_dir, "checkpoint"), "rb") as f:
        state = serialization.msgpack_restore(f.read())
    try:
        target = state["optimizer"]["target"]
    except KeyError as e:
        raise ValueError(
            f"legacy T5X checkpoint {step_dir!r} has no optimizer/target (top-level keys "
            f"{sorted(state)}); is it a T5X train state?"
        ) from e
    return _read_arrays(target, step_dir)


def _read_arrays(tree: Any, step_dir: str) -> Any:
    """Replaces tensorstore specs (paths relative to step_dir) by their arrays."""
    if _is_tensorstore_spec(tree):
        spec = dict(tree)
        kvstore = dict(spec["kvstore"])
        kvstore["path"] = os.path.join(step_dir, kvstore["path"])
        spec["kvstore"] = kvstore
        return ts.open(spec, open=True, read=True).result().read().result()
    if isinstance(tree, dict):
        return {k: _read_arrays(v, step_dir) for k, v in tree.items()}
    return np.asarray(tree)


def config_from_t5x_params(
    params: Params,
    *,
    mlp_activations: tuple[str, ...] | None = None,
    relpos_max_distance: int = 128,
) -> network.TransformerConfig:
    """Infers the T5 encoder-decoder TransformerConfig from T5X parameter shapes.

    Heads come from `encoder/relpos_bias/rel_embedding` [heads, buckets]; activations default
    to ('gelu', 'linear') with `wi_0`/`wi_1` (T5 v1.1) and ('relu',) with a single `wi` (T5).
    relpos_max_distance is not stored; T5X hard-codes 128.
    """
    enc, dec = params["encoder"], params["decoder"]
    heads, buckets = enc["relpos_bias"]["rel_embedding"].shape
    emb, joined = enc["layers_0"]["attention"]["query"]["kernel"].shape
    mlp = enc["layers_0"]["mlp"]
    gated = "wi_0" in mlp
    if mlp_activations is None:
        mlp_activations = ("gelu", "linear") if gated else ("relu",)
    count = lambda stack: sum(1 for k in stack if k.startswith("layers_"))
    return network.TransformerConfig(
        vocab_size=params["token_embedder"]["embedding"].shape[0],
        emb_dim=emb,
        num_heads=heads,
        head_dim=joined // heads,
        mlp_dim=mlp["wi_0" if gated else "wi"]["kernel"].shape[1],
        num_encoder_layers=count(enc),
        num_decoder_layers=count(dec),
        mlp_activations=tuple(mlp_activations),
        logits_via_embedding="logits_dense" not in dec,
        relpos_num_buckets=buckets,
        relpos_max_distance=relpos_max_distance,
    )
