"""Converted checkpoints: the on-disk layout (orbax `{"params": ...}` + model JSON) and loading.

`load_params(path)` reads a converted dir, a Hugging Face dir or a T5X step dir; it is what
the trainer's INITIAL_CHECKPOINT_PATH uses for anything that is not a flan_jax run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from flan_jax.model import models, network
from flan_jax.types import Params

ARCHITECTURES = ("encoder_decoder", "decoder_only")
PARAMS_ITEM = "default"  # orbax item dir, the name flan_jax.checkpoints.manager looks for
MODEL_CONFIG_FILE = "flan_model.json"


def make_model(architecture: str, config: network.TransformerConfig) -> models.BaseModel:
    """EncoderDecoderModel or DecoderOnlyModel for `architecture`."""
    if architecture == "encoder_decoder":
        return models.EncoderDecoderModel(config)
    if architecture == "decoder_only":
        return models.DecoderOnlyModel(config)
    raise ValueError(f"architecture {architecture!r} is unknown; use one of {ARCHITECTURES}")


def expected_param_shapes(architecture: str, config: network.TransformerConfig) -> Params:
    """Parameter shapes {path: ShapeDtypeStruct} the flan_jax model of `config` creates."""
    model = make_model(architecture, config)
    shapes = {"encoder_input_tokens": (1, 1), "decoder_input_tokens": (1, 1)}
    variables = jax.eval_shape(lambda: model.get_initial_variables(jax.random.key(0), shapes))
    return jax.tree.map(
        lambda x: x.value if hasattr(x, "value") else x,
        variables["params"],
        is_leaf=lambda x: hasattr(x, "value"),
    )


def save_converted(
    path: str,
    params: Params,
    architecture: str,
    config: network.TransformerConfig,
    extra: dict[str, Any] | None = None,
) -> None:
    """Writes `path/default/` (orbax PyTree {"params": ...}) and `path/flan_model.json`."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    arrays = jax.tree.map(np.asarray, params)
    checkpointer = ocp.PyTreeCheckpointer()
    checkpointer.save(os.path.join(path, PARAMS_ITEM), {"params": arrays}, force=True)
    meta = {
        "architecture": architecture,
        "config": dataclasses.asdict(config),
        **(extra or {}),
    }
    with open(os.path.join(path, MODEL_CONFIG_FILE), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


def load_converted_config(path: str) -> tuple[str, network.TransformerConfig, dict[str, Any]]:
    """(architecture, TransformerConfig, the whole JSON) of a dir written by save_converted."""
    with open(os.path.join(path, MODEL_CONFIG_FILE)) as f:
        meta = json.load(f)
    config = dict(meta["config"])
    config["mlp_activations"] = tuple(config["mlp_activations"])
    return meta["architecture"], network.TransformerConfig(**config), meta


def load_params(path: str) -> Params:
    """Parameters (nested dict of numpy arrays, T5X names) from any supported checkpoint.

    Args:
      path: a dir written by `flan-jax convert` (`default/` + flan_model.json), a Hugging
        Face dir (config.json + *.safetensors) or a T5X step dir (`checkpoint_<step>`).
    """
    from flan_jax.convert import hf, t5x

    path = os.path.expanduser(path)
    if os.path.isfile(os.path.join(path, PARAMS_ITEM, "_METADATA")):
        item = os.path.join(os.path.abspath(path), PARAMS_ITEM)
        restored = ocp.PyTreeCheckpointer().restore(item)
        return jax.tree.map(np.asarray, restored["params"])
    if os.path.isfile(os.path.join(path, "config.json")):
        return hf.hf_to_flan(path)[0]
    try:
        return t5x.load_t5x_params(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{path!r} is not a checkpoint flan_jax can read: expected a converted dir "
            f"({PARAMS_ITEM}/ + {MODEL_CONFIG_FILE}), a Hugging Face dir (config.json + "
            "*.safetensors) or a T5X checkpoint_<step> dir"
        ) from e
