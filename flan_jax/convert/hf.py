"""Hugging Face safetensors dirs <-> flan_jax params: T5 (v1.1, Flan-T5, original), mT5, UMT5,
Llama, Qwen2, Mistral and OPT (flan_jax.convert.hf_opt).

Dense kernels are transposed (torch Linear [out, in] vs flax [in, out]); head layouts need no
permutation: flan_jax uses HF's `head * head_dim + d` columns and rotate-half RoPE.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from flan_jax import convert
from flan_jax.checkpoints.manager import check_param_shapes
from flan_jax.convert import consumed, hf_opt
from flan_jax.model import network
from flan_jax.types import Params

SUPPORTED_ARCHITECTURES = {
    "T5ForConditionalGeneration": "encoder_decoder",
    "MT5ForConditionalGeneration": "encoder_decoder",
    "UMT5ForConditionalGeneration": "encoder_decoder",
    "LlamaForCausalLM": "decoder_only",
    "Qwen2ForCausalLM": "decoder_only",
    "MistralForCausalLM": "decoder_only",
    hf_opt.ARCHITECTURE: "decoder_only",
}
# HF T5 dense_act_fn -> flan_jax activation name
T5_ACTIVATIONS = {
    "relu": "relu",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu": "gelu_exact",
    "silu": "silu",
}
# flan_jax mlp_activations -> HF T5 feed_forward_proj (HF's gated-gelu is the tanh GELU)
T5_EXPORT_PROJ = {
    ("relu",): "relu",
    ("gelu_exact",): "gelu",
    ("silu",): "silu",
    ("relu", "linear"): "gated-relu",
    ("gelu", "linear"): "gated-gelu",
    ("silu", "linear"): "gated-silu",
}
# Entries: (flan path, HF tensor name, kind); kind 'dense' is transposed, the rest copied.
Entry = tuple[tuple[str, ...], str, str]


def read_hf_config(path: str) -> dict[str, Any]:
    """config.json of a HF model dir, with its architecture checked."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    hf_architecture(config)
    return config


def hf_architecture(hf_config: dict[str, Any]) -> str:
    """The supported `architectures[0]`, or ValueError naming it and the supported list."""
    names = hf_config.get("architectures") or [f"<model_type {hf_config.get('model_type')!r}>"]
    if names[0] not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"Hugging Face architecture {names[0]!r} is not supported; flan_jax converts "
            f"{sorted(SUPPORTED_ARCHITECTURES)}"
        )
    return names[0]


def _t5_config(c: dict[str, Any]) -> network.TransformerConfig:
    proj = c.get("feed_forward_proj", "relu")
    gated = proj.startswith("gated-")
    act_name = "gelu_new" if proj == "gated-gelu" else c.get("dense_act_fn", proj.split("-")[-1])
    if act_name not in T5_ACTIVATIONS:
        raise ValueError(
            f"T5 activation {act_name!r} is not supported; use one of {sorted(T5_ACTIVATIONS)}"
        )
    act = T5_ACTIVATIONS[act_name]
    return network.TransformerConfig(
        vocab_size=c["vocab_size"],
        emb_dim=c["d_model"],
        num_heads=c["num_heads"],
        head_dim=c["d_kv"],
        mlp_dim=c["d_ff"],
        num_encoder_layers=c["num_layers"],
        num_decoder_layers=c.get("num_decoder_layers") or c["num_layers"],
        mlp_activations=(act, "linear") if gated else (act,),
        # tied and scaled: the embedding serves as head; scaled but untied: a scaled logits_dense
        logits_via_embedding=_t5_scales_logits(c) and c.get("tie_word_embeddings", True),
        relpos_num_buckets=c.get("relative_attention_num_buckets", 32),
        relpos_max_distance=c.get("relative_attention_max_distance", 128),
        layer_norm_epsilon=c.get("layer_norm_epsilon", 1e-6),
    )


def _t5_scales_logits(c: dict[str, Any]) -> bool:
    """Original T5 scales decoder outputs by d_model ** -0.5 (tied head); v1.1 does not."""
    return bool(c.get("scale_decoder_outputs", c.get("tie_word_embeddings", True)))


def _rope_theta(c: dict[str, Any]) -> float:
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(
            f"Llama rope_type {kind!r} is not supported; flan_jax implements 'default' RoPE"
        )
    return float(rope.get("rope_theta", c.get("rope_theta", 10000.0)))


def _llama_config(c: dict[str, Any]) -> network.TransformerConfig:
    for flag in ("attention_bias", "mlp_bias"):
        if c.get(flag):
            raise ValueError(f"Llama {flag}=True is not supported (flan_jax layers have no biases)")
    if c.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Llama hidden_act {c['hidden_act']!r} is not supported; expected 'silu'")
    heads = c["num_attention_heads"]
    return network.TransformerConfig(
        vocab_size=c["vocab_size"],
        emb_dim=c["hidden_size"],
        num_heads=heads,
        num_kv_heads=c.get("num_key_value_heads") or heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // heads,
        mlp_dim=c["intermediate_size"],
        num_decoder_layers=c["num_hidden_layers"],
        mlp_activations=("silu", "linear"),
        position_embedding="rope",
        rope_theta=_rope_theta(c),
        scale_attention_logits=True,
        layer_norm_epsilon=c.get("rms_norm_eps", 1e-6),
    )


def _qwen2_config(c: dict[str, Any]) -> network.TransformerConfig:
    """Qwen2: Llama with biases on query/key/value (not on out)."""
    if c.get("use_sliding_window"):
        raise ValueError(
            "Qwen2 use_sliding_window=True (windowed attention on some layers only) is not "
            "supported; flan_jax converts Qwen2 with full attention on every layer"
        )
    return dataclasses.replace(_llama_config(c), qkv_bias=True)


def _mistral_config(c: dict[str, Any]) -> network.TransformerConfig:
    """Mistral: Llama with sliding-window attention (keys fewer than sliding_window behind)."""
    return dataclasses.replace(_llama_config(c), sliding_window=c.get("sliding_window"))


CONFIGS = {
    "T5ForConditionalGeneration": _t5_config,
    "MT5ForConditionalGeneration": _t5_config,
    "UMT5ForConditionalGeneration": lambda c: dataclasses.replace(
        _t5_config(c), relpos_per_layer=True
    ),
    "LlamaForCausalLM": _llama_config,
    "Qwen2ForCausalLM": _qwen2_config,
    "MistralForCausalLM": _mistral_config,
    hf_opt.ARCHITECTURE: hf_opt.opt_config,
}


def config_from_hf(hf_config: dict[str, Any]) -> tuple[str, network.TransformerConfig]:
    """(flan architecture, TransformerConfig) for a HF config.json dict."""
    name = hf_architecture(hf_config)
    return SUPPORTED_ARCHITECTURES[name], CONFIGS[name](hf_config)


def _mlp_names(cfg: network.TransformerConfig) -> list[str]:
    return ["wi_0", "wi_1", "wo"] if len(cfg.mlp_activations) > 1 else ["wi", "wo"]


def _attention(
    prefix: tuple[str, ...], hf: str, names: tuple[str, str, str, str]
) -> Iterator[Entry]:
    for flan, short in zip(("query", "key", "value", "out"), names):
        yield (*prefix, flan, "kernel"), f"{hf}.{short}.weight", "dense"


def t5_entries(cfg: network.TransformerConfig) -> Iterator[Entry]:
    """Every T5 tensor except the output head (handled by _logits_kernel)."""
    yield ("token_embedder", "embedding"), "shared.weight", "copy"
    qkvo = ("q", "k", "v", "o")
    for stack, n in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
        rel = "layer.0.SelfAttention.relative_attention_bias.weight"
        for i in range(n) if cfg.relpos_per_layer else [None]:  # UMT5: a table per layer
            flan = (stack, "relpos_bias") if i is None else (stack, f"layers_{i}", "relpos_bias")
            yield (*flan, "rel_embedding"), f"{stack}.block.{i or 0}.{rel}", "dense"
        yield (stack, f"{stack}_norm", "scale"), f"{stack}.final_layer_norm.weight", "copy"
        for i in range(n):
            hf, flan = f"{stack}.block.{i}.layer", (stack, f"layers_{i}")
            mlp_index = 1
            if stack == "encoder":
                yield from _attention((*flan, "attention"), f"{hf}.0.SelfAttention", qkvo)
                yield (
                    (*flan, "pre_attention_layer_norm", "scale"),
                    f"{hf}.0.layer_norm.weight",
                    "copy",
                )
            else:
                yield from _attention((*flan, "self_attention"), f"{hf}.0.SelfAttention", qkvo)
                yield (
                    (*flan, "pre_self_attention_layer_norm", "scale"),
                    f"{hf}.0.layer_norm.weight",
                    "copy",
                )
                yield from _attention(
                    (*flan, "encoder_decoder_attention"), f"{hf}.1.EncDecAttention", qkvo
                )
                yield (
                    (*flan, "pre_cross_attention_layer_norm", "scale"),
                    f"{hf}.1.layer_norm.weight",
                    "copy",
                )
                mlp_index = 2
            for name in _mlp_names(cfg):
                yield (
                    (*flan, "mlp", name, "kernel"),
                    f"{hf}.{mlp_index}.DenseReluDense.{name}.weight",
                    "dense",
                )
            yield (
                (*flan, "pre_mlp_layer_norm", "scale"),
                f"{hf}.{mlp_index}.layer_norm.weight",
                "copy",
            )


def llama_entries(cfg: network.TransformerConfig) -> Iterator[Entry]:
    """Every Llama tensor except the output head (handled by _logits_kernel)."""
    yield ("decoder", "token_embedder", "embedding"), "model.embed_tokens.weight", "copy"
    yield ("decoder", "decoder_norm", "scale"), "model.norm.weight", "copy"
    mlp = {"wi_0": "gate_proj", "wi_1": "up_proj", "wo": "down_proj"}
    for i in range(cfg.num_decoder_layers):
        hf, flan = f"model.layers.{i}", ("decoder", f"layers_{i}")
        qkvo = ("q_proj", "k_proj", "v_proj", "o_proj")
        yield from _attention((*flan, "self_attention"), f"{hf}.self_attn", qkvo)
        yield (
            (*flan, "pre_self_attention_layer_norm", "scale"),
            f"{hf}.input_layernorm.weight",
            "copy",
        )
        yield (
            (*flan, "pre_mlp_layer_norm", "scale"),
            f"{hf}.post_attention_layernorm.weight",
            "copy",
        )
        for flan_name, hf_name in mlp.items():
            yield (*flan, "mlp", flan_name, "kernel"), f"{hf}.mlp.{hf_name}.weight", "dense"


def qwen2_entries(cfg: network.TransformerConfig) -> Iterator[Entry]:
    """Llama's tensors plus the query/key/value biases."""
    yield from llama_entries(cfg)
    for i in range(cfg.num_decoder_layers):
        for flan, short in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            path = ("decoder", f"layers_{i}", "self_attention", flan, "bias")
            yield path, f"model.layers.{i}.self_attn.{short}.bias", "copy"


def _entries(family: str, cfg: network.TransformerConfig) -> Iterator[Entry]:
    """Tensor entries of a HF architecture name (SUPPORTED_ARCHITECTURES)."""
    if SUPPORTED_ARCHITECTURES[family] == "encoder_decoder":
        return t5_entries(cfg)
    if family == hf_opt.ARCHITECTURE:
        return hf_opt.opt_entries(cfg)
    return qwen2_entries(cfg) if family == "Qwen2ForCausalLM" else llama_entries(cfg)


def _embed_name(family: str) -> str:
    if SUPPORTED_ARCHITECTURES[family] == "encoder_decoder":
        return "shared.weight"
    return hf_opt.EMBED_NAME if family == hf_opt.ARCHITECTURE else "model.embed_tokens.weight"


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a HF dir (model.safetensors or sharded model-*.safetensors)."""
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(
            f"no *.safetensors in {path!r}; save the model with save_pretrained()"
        )
    tensors = {}
    for file in files:
        with safe_open(file, framework="numpy") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return tensors


def _set(tree: Params, path: tuple[str, ...], value: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Params, path: tuple[str, ...]) -> np.ndarray:
    for key in path:
        tree = tree[key]
    return tree


def _logits_kernel(family, cfg, hf_config, tensors) -> np.ndarray | None:
    """flan `logits_dense` kernel [embed, vocab], or None when the model ties its head."""
    architecture = SUPPORTED_ARCHITECTURES[family]
    embed_name = _embed_name(family)
    head = tensors.get("lm_head.weight", tensors[embed_name])
    if cfg.logits_via_embedding:
        if not np.array_equal(head, tensors[embed_name]):
            raise ValueError(
                f"{family} ties its output head, but lm_head.weight differs from {embed_name}"
            )
        return None
    scale = (
        cfg.emb_dim**-0.5
        if architecture == "encoder_decoder" and _t5_scales_logits(hf_config)
        else 1.0
    )
    return np.ascontiguousarray(head.T) * np.asarray(scale, head.dtype)


def hf_to_flan(path: str) -> tuple[Params, str, network.TransformerConfig, dict[str, Any]]:
    """Converts a HF dir to (params, flan architecture, TransformerConfig, HF config dict).

    Raises:
      ValueError: unsupported architecture, a missing tensor, or the first tensor whose shape
        does not match config.json (naming both shapes).
    """
    hf_config = read_hf_config(path)
    family = hf_architecture(hf_config)
    architecture, cfg = config_from_hf(hf_config)
    expected = convert.expected_param_shapes(architecture, cfg)
    tensors = consumed.Tracked(read_safetensors(path))
    if "shared.weight" not in tensors and "encoder.embed_tokens.weight" in tensors:
        tensors["shared.weight"] = tensors["encoder.embed_tokens.weight"]
    params: Params = {}
    for flan, name, kind in _entries(family, cfg):
        if name not in tensors:
            raise ValueError(f"{path}: tensor {name!r} (flan {'/'.join(flan)}) is missing")
        value = np.ascontiguousarray(tensors[name].T) if kind == "dense" else tensors[name]
        want = _get(expected, flan).shape
        if value.shape != want:
            raise ValueError(
                f"{path}: tensor {name!r} has shape {tensors[name].shape} (flan "
                f"{'/'.join(flan)} {value.shape}) but config.json implies {want}; the config "
                "does not match the weights"
            )
        _set(params, flan, value)
    kernel = _logits_kernel(family, cfg, hf_config, tensors)
    if kernel is not None:
        _set(params, ("decoder", "logits_dense", "kernel"), kernel)
    check_param_shapes(params, expected, path)
    consumed.check_consumed(path, tensors, hf_config)
    return params, architecture, cfg, hf_config


def _export_family(architecture: str, cfg: network.TransformerConfig, base: dict) -> str:
    """The HF architecture to write: the source's (when converted from HF), else inferred."""
    names = base.get("architectures") or []
    if names and names[0] in SUPPORTED_ARCHITECTURES:
        if SUPPORTED_ARCHITECTURES[names[0]] != architecture:
            raise ValueError(f"hf_config names {names[0]} but the model is {architecture}")
        return names[0]
    if architecture == "encoder_decoder":
        return (
            "UMT5ForConditionalGeneration" if cfg.relpos_per_layer else "T5ForConditionalGeneration"
        )
    if cfg.position_embedding == "learned":
        return hf_opt.ARCHITECTURE
    if cfg.qkv_bias:
        return "Qwen2ForCausalLM"
    return "MistralForCausalLM" if cfg.sliding_window else "LlamaForCausalLM"


def _hf_config_for(family: str, cfg: network.TransformerConfig, base: dict[str, Any]) -> dict:
    """config.json for the HF model equivalent to cfg (keeping token ids etc. from base)."""
    if SUPPORTED_ARCHITECTURES[family] == "encoder_decoder":
        kind = {"MT5ForConditionalGeneration": "mt5", "UMT5ForConditionalGeneration": "umt5"}
        mt5 = {"architectures": [family], "model_type": kind[family]} if family in kind else {}
        return {**base, **_t5_hf_config(cfg), **mt5}
    if family == hf_opt.ARCHITECTURE:
        return hf_opt.opt_hf_config(cfg, base)
    config = _llama_hf_config(cfg, base)
    if family == "Qwen2ForCausalLM":
        config.update(architectures=[family], model_type="qwen2", use_sliding_window=False)
        config.pop("attention_bias"), config.pop("mlp_bias")
    elif family == "MistralForCausalLM":
        config.update(
            architectures=[family], model_type="mistral", sliding_window=cfg.sliding_window
        )
    return config


def _llama_hf_config(cfg: network.TransformerConfig, base: dict[str, Any]) -> dict:
    if cfg.use_bias or cfg.norm_type != "rms" or cfg.embed_proj_dim is not None:
        raise ValueError(
            "Llama-style export needs RMSNorm, no projection biases and no embed_proj_dim; "
            f"got norm_type={cfg.norm_type!r}, use_bias={cfg.use_bias}, "
            f"embed_proj_dim={cfg.embed_proj_dim}"
        )
    if cfg.position_embedding != "rope" or cfg.parallel_block or not cfg.scale_attention_logits:
        raise ValueError(
            "only Llama-style decoder-only models (rope, scaled logits, sequential block) "
            f"export to HF LlamaForCausalLM; got position_embedding="
            f"{cfg.position_embedding!r}, parallel_block={cfg.parallel_block}, "
            f"scale_attention_logits={cfg.scale_attention_logits}"
        )
    if cfg.mlp_activations != ("silu", "linear"):
        raise ValueError(
            f"Llama export needs mlp_activations ('silu', 'linear'), got {cfg.mlp_activations}"
        )
    base = {k: v for k, v in base.items() if k not in ("rope_scaling", "rope_theta")}
    return {
        "bos_token_id": 1, "eos_token_id": 2, **base,
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.emb_dim, "intermediate_size": cfg.mlp_dim,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim, "num_hidden_layers": cfg.num_decoder_layers,
        "rms_norm_eps": cfg.layer_norm_epsilon, "hidden_act": "silu",
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
    }  # fmt: skip


def _t5_hf_config(cfg: network.TransformerConfig) -> dict[str, Any]:
    proj = T5_EXPORT_PROJ.get(cfg.mlp_activations)
    if proj is None:
        raise ValueError(
            f"T5 mlp_activations {cfg.mlp_activations} have no HF feed_forward_proj; "
            f"exportable: {sorted(T5_EXPORT_PROJ)}"
        )
    return {
        "decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0,
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        "is_encoder_decoder": True, "vocab_size": cfg.vocab_size, "d_model": cfg.emb_dim,
        "d_kv": cfg.head_dim, "d_ff": cfg.mlp_dim, "num_heads": cfg.num_heads,
        "num_layers": cfg.num_encoder_layers, "num_decoder_layers": cfg.num_decoder_layers,
        "feed_forward_proj": proj, "relative_attention_num_buckets": cfg.relpos_num_buckets,
        "relative_attention_max_distance": cfg.relpos_max_distance,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "tie_word_embeddings": cfg.logits_via_embedding,
        "scale_decoder_outputs": cfg.logits_via_embedding,
    }  # fmt: skip


def flan_to_hf(
    params: Params,
    architecture: str,
    cfg: network.TransformerConfig,
    dst: str,
    hf_config: dict[str, Any] | None = None,
) -> None:
    """Writes dst/config.json + dst/model.safetensors loadable by transformers' from_pretrained.

    Args:
      params: flan_jax params (unboxed, unscanned) of `cfg`.
      hf_config: the original config.json (token ids, dropout, ...) to start from, if any.
    """
    if cfg.scan_layers:
        raise ValueError(
            "export needs per-layer params (scan_layers=False); unstack `layers` first"
        )
    check_param_shapes(params, convert.expected_param_shapes(architecture, cfg), "flan params")
    base = dict(hf_config or {})
    family = _export_family(architecture, cfg, base)
    tensors = {}
    for flan, name, kind in _entries(family, cfg):
        value = np.asarray(_get(params, flan))
        tensors[name] = np.ascontiguousarray(value.T if kind == "dense" else value)
    if not cfg.logits_via_embedding:
        head = np.asarray(_get(params, ("decoder", "logits_dense", "kernel")))
        tensors["lm_head.weight"] = np.ascontiguousarray(head.T)
    os.makedirs(dst, exist_ok=True)
    save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    config = _hf_config_for(family, cfg, base)
    config["dtype"] = str(next(iter(tensors.values())).dtype)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
