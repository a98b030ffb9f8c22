"""Hugging Face OPTForCausalLM <-> flan_jax decoder-only: config and tensor names.

OPT is a pre-LN (post-LN for 350m) decoder with LayerNorm biases, biases on every
projection, a ReLU MLP, learned absolute positions offset by 2 and an output head tied to
the token embedding (unscaled). OPT-350m embeds tokens at word_embed_proj_dim (512) and
projects in to / out of hidden_size (1024) without bias.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flan_jax.model import network

# (flan path, HF tensor name, kind); kind 'dense' is transposed, 'copy' copied as is.
Entry = tuple[tuple[str, ...], str, str]
ARCHITECTURE = "OPTForCausalLM"
EMBED_NAME = "model.decoder.embed_tokens.weight"
# HF OPT activation_function -> flan_jax activation name
ACTIVATIONS = {"relu": "relu", "gelu": "gelu_exact", "gelu_new": "gelu", "silu": "silu"}
OPT_POSITION_OFFSET = 2


def opt_config(c: dict[str, Any]) -> network.TransformerConfig:
    """TransformerConfig of an OPT config.json; refuses variants flan_jax does not build."""
    act = c.get("activation_function", "relu")
    if act not in ACTIVATIONS:
        raise ValueError(
            f"OPT activation_function {act!r} is not supported; use one of {sorted(ACTIVATIONS)}"
        )
    if not c.get("layer_norm_elementwise_affine", True):
        raise ValueError("OPT layer_norm_elementwise_affine=False is not supported (flan_jax "
                         "LayerNorm always has scale and bias)")  # fmt: skip
    pre_ln = c.get("do_layer_norm_before", True)
    if pre_ln and c.get("_remove_final_layer_norm", False):
        raise ValueError("OPT _remove_final_layer_norm=True with pre-LN is not supported")
    hidden, heads = c["hidden_size"], c["num_attention_heads"]
    if hidden % heads:
        raise ValueError(f"OPT hidden_size ({hidden}) must be a multiple of heads ({heads})")
    proj = c.get("word_embed_proj_dim", hidden)
    return network.TransformerConfig(
        vocab_size=c["vocab_size"],
        emb_dim=hidden,
        num_heads=heads,
        head_dim=hidden // heads,
        mlp_dim=c["ffn_dim"],
        num_decoder_layers=c["num_hidden_layers"],
        mlp_activations=(ACTIVATIONS[act],),
        position_embedding="learned",
        max_position_embeddings=c["max_position_embeddings"],
        position_offset=OPT_POSITION_OFFSET,
        scale_attention_logits=True,
        norm_type="layernorm",
        post_layer_norm=not pre_ln,
        use_bias=c.get("enable_bias", True),
        embed_proj_dim=None if proj == hidden else proj,
        logits_via_embedding=c.get("tie_word_embeddings", True),
        scale_tied_logits=False,
        layer_norm_epsilon=1e-5,  # torch.nn.LayerNorm's default, which OPT uses
    )


def _linear(flan: tuple[str, ...], hf: str, bias: bool) -> Iterator[Entry]:
    yield (*flan, "kernel"), f"{hf}.weight", "dense"
    if bias:
        yield (*flan, "bias"), f"{hf}.bias", "copy"


def _norm(flan: tuple[str, ...], hf: str) -> Iterator[Entry]:
    yield (*flan, "scale"), f"{hf}.weight", "copy"
    yield (*flan, "bias"), f"{hf}.bias", "copy"


def opt_entries(cfg: network.TransformerConfig) -> Iterator[Entry]:
    """Every OPT tensor except the output head (tied, or handled by the caller)."""
    dec, hf_dec = ("decoder",), "model.decoder"
    yield (*dec, "token_embedder", "embedding"), EMBED_NAME, "copy"
    yield (*dec, "position_embedder", "embedding"), f"{hf_dec}.embed_positions.weight", "copy"
    if cfg.embed_proj_dim is not None:
        yield from _linear((*dec, "project_in"), f"{hf_dec}.project_in", False)
        yield from _linear((*dec, "project_out"), f"{hf_dec}.project_out", False)
    if not cfg.post_layer_norm:
        yield from _norm((*dec, "decoder_norm"), f"{hf_dec}.final_layer_norm")
    norm = "post" if cfg.post_layer_norm else "pre"
    projections = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}
    for i in range(cfg.num_decoder_layers):
        flan, hf = (*dec, f"layers_{i}"), f"{hf_dec}.layers.{i}"
        for name, hf_name in projections.items():
            yield from _linear((*flan, "self_attention", name), f"{hf}.self_attn.{hf_name}",
                               cfg.use_bias)  # fmt: skip
        yield from _linear((*flan, "mlp", "wi"), f"{hf}.fc1", cfg.use_bias)
        yield from _linear((*flan, "mlp", "wo"), f"{hf}.fc2", cfg.use_bias)
        yield from _norm((*flan, f"{norm}_self_attention_layer_norm"), f"{hf}.self_attn_layer_norm")
        yield from _norm((*flan, f"{norm}_mlp_layer_norm"), f"{hf}.final_layer_norm")


def opt_hf_config(cfg: network.TransformerConfig, base: dict[str, Any]) -> dict[str, Any]:
    """config.json of the OPTForCausalLM equivalent to cfg (token ids etc. kept from base)."""
    acts = {v: k for k, v in ACTIVATIONS.items()}
    problems = {
        "position_embedding": (cfg.position_embedding, "learned"),
        "position_offset": (cfg.position_offset, OPT_POSITION_OFFSET),
        "norm_type": (cfg.norm_type, "layernorm"),
        "scale_attention_logits": (cfg.scale_attention_logits, True),
        "kv_heads": (cfg.kv_heads, cfg.num_heads),
        "head_dim": (cfg.head_dim, cfg.emb_dim // cfg.num_heads),
        "one activation": (len(cfg.mlp_activations) == 1 and cfg.mlp_activations[0] in acts, True),
        "parallel_block": (cfg.parallel_block, False),
    }
    bad = {k: got for k, (got, want) in problems.items() if got != want}
    if bad or (cfg.logits_via_embedding and cfg.scale_tied_logits):
        raise ValueError(
            f"this decoder-only config does not export to OPTForCausalLM: {bad or ''} "
            "(needs learned positions offset 2, LayerNorm, scaled logits, MHA, one activation, "
            "unscaled tied logits)"
        )
    return {
        "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1, **base,
        "architectures": [ARCHITECTURE], "model_type": "opt",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.emb_dim, "ffn_dim": cfg.mlp_dim,
        "num_attention_heads": cfg.num_heads, "num_hidden_layers": cfg.num_decoder_layers,
        "max_position_embeddings": cfg.max_position_embeddings,
        "word_embed_proj_dim": cfg.model_width, "do_layer_norm_before": not cfg.post_layer_norm,
        "activation_function": acts[cfg.mlp_activations[0]], "enable_bias": cfg.use_bias,
        "layer_norm_elementwise_affine": True, "_remove_final_layer_norm": False,
        "tie_word_embeddings": cfg.logits_via_embedding,
    }  # fmt: skip
