"""TransformerConfig and the layers both networks stack: EncoderLayer, DecoderLayer, run_layers.

Built from flan_jax.model.layers; flan_jax.model.network assembles them into Encoder /
Decoder stacks and the EncoderDecoder / DecoderOnly networks. `TransformerConfig` is the one
frozen description of a network.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from flan_jax.model import layers
from flan_jax.types import Array

EMBED_AXES = ("activation_batch", "activation_length", "activation_embed")
LOGITS_AXES = ("activation_batch", "activation_length", "activation_vocab")
POSITION_EMBEDDINGS = ("relative", "rope", "learned")
NORM_TYPES = ("rms", "layernorm")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Hyperparameters of an encoder-decoder or decoder-only transformer.

    Attributes:
      vocab_size: embedding / logits rows.
      emb_dim: model width (d_model).
      num_heads: query heads; num_kv_heads: key/value heads (None: num_heads; 1: MQA).
      head_dim: per-head width; mlp_dim: MLP hidden width.
      mlp_activations: ('gelu','linear') T5 v1.1, ('relu',) T5, ('silu','linear') SwiGLU.
      num_encoder_layers: 0 for decoder-only; num_decoder_layers: decoder depth.
      dropout_rate: dropout everywhere (embeddings, attention probs, residual branches, MLP).
      dtype: compute dtype 'float32' or 'bfloat16' (params stay float32, logits float32).
      logits_via_embedding: tie the output projection to the embedding (scaled by
        emb_dim ** -0.5, as T5X / HF original T5); else an untied `logits_dense`.
      position_embedding: 'relative' (T5 buckets, one table per stack) or 'rope'.
      scale_attention_logits: multiply q.k by head_dim ** -0.5 (Llama/PaLM); T5 folds it
        into the query initializer instead (False).
      parallel_block: PaLM's parallel attention + MLP from one pre-norm.
      scan_layers: nn.scan over layers (params stacked under `layers`, axis `layers`).
      remat_policy: 'none', 'full' or a jax.checkpoint_policies name.
      attention_impl: 'einsum' (reference), 'dot_product_attention' (jax.nn with the dense
        bias) or 'fused' (flan_jax.model.fused_attention: segment ids, kernel chosen per backend).
      norm_type: 'rms' (T5 / Llama RMSNorm) or 'layernorm' (mean and bias, OPT).
      post_layer_norm: normalize after each residual add and skip the final norm (OPT-350m);
        decoder-only.
      use_bias: biases on every projection (attention q/k/v/out, MLP) (OPT).
      qkv_bias: biases on the query/key/value projections only (Qwen2).
      max_position_embeddings, position_offset: 'learned' absolute positions read row
        position + position_offset of a [max_position_embeddings + offset, embed] table
        (OPT keeps 2 unused leading rows). Decoder-only.
      embed_proj_dim: token embeddings of this width, projected in to / out of emb_dim
        without bias (OPT-350m's project_in / project_out); None: emb_dim.
      scale_tied_logits: with logits_via_embedding, scale outputs by emb_dim ** -0.5
        (T5); False for OPT / Qwen2.
      relpos_per_layer: one T5 relative position bias table per layer (UMT5) instead of one
        per stack.
      sliding_window: attend only to the last `sliding_window` positions (Mistral);
        None: unlimited.
    """

    vocab_size: int
    emb_dim: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    num_decoder_layers: int
    num_encoder_layers: int = 0
    num_kv_heads: int | None = None
    mlp_activations: tuple[str, ...] = ("gelu", "linear")
    dropout_rate: float = 0.0
    dtype: str = "float32"
    logits_via_embedding: bool = False
    position_embedding: str = "relative"
    relpos_num_buckets: int = 32
    relpos_max_distance: int = 128
    rope_theta: float = 10000.0
    scale_attention_logits: bool = False
    parallel_block: bool = False
    layer_norm_epsilon: float = 1e-6
    one_hot_embed: bool = True
    scan_layers: bool = False
    remat_policy: str = "none"
    attention_impl: str = "einsum"
    norm_type: str = "rms"
    post_layer_norm: bool = False
    use_bias: bool = False
    qkv_bias: bool = False
    max_position_embeddings: int = 2048
    position_offset: int = 0
    embed_proj_dim: int | None = None
    scale_tied_logits: bool = True
    sliding_window: int | None = None
    relpos_per_layer: bool = False

    def __post_init__(self):
        object.__setattr__(self, "mlp_activations", layers.check_activations(self.mlp_activations))
        kv = self.kv_heads
        if kv < 1 or self.num_heads % kv:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({kv}); "
                "use num_kv_heads == num_heads (MHA), a divisor (GQA) or 1 (MQA)"
            )
        choices = (
            ("dtype", self.dtype, tuple(DTYPES)),
            ("position_embedding", self.position_embedding, POSITION_EMBEDDINGS),
            ("attention_impl", self.attention_impl, layers.ATTENTION_IMPLS),
            ("norm_type", self.norm_type, NORM_TYPES),
        )
        for name, value, allowed in choices:
            if value not in allowed:
                raise ValueError(
                    f"TransformerConfig.{name} {value!r} is unknown; use one of {allowed}"
                )
        if self.remat_policy not in ("none", "full") and not hasattr(
            jax.checkpoint_policies, self.remat_policy
        ):
            raise ValueError(
                f"remat_policy {self.remat_policy!r} is neither 'none', 'full' nor a "
                "jax.checkpoint_policies name (e.g. 'dots_with_no_batch_dims_saveable')"
            )
        self._check_decoder_only_options()
        if self.position_embedding == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        for name in (
            "vocab_size",
            "emb_dim",
            "num_heads",
            "head_dim",
            "mlp_dim",
            "num_decoder_layers",
        ):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"TransformerConfig.{name} must be >= 1, got {getattr(self, name)}"
                )

    def _check_decoder_only_options(self):
        used = [
            name
            for name, on in (
                ("position_embedding='learned'", self.position_embedding == "learned"),
                ("post_layer_norm", self.post_layer_norm),
                ("embed_proj_dim", self.embed_proj_dim is not None),
                ("sliding_window", self.sliding_window is not None),
            )
            if on
        ]
        if used and self.num_encoder_layers:
            raise ValueError(
                f"TransformerConfig {', '.join(used)} are decoder-only options; got "
                f"num_encoder_layers={self.num_encoder_layers} (set it to 0)"
            )
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1 or None, got {self.sliding_window}")
        if self.position_embedding == "learned" and self.max_position_embeddings < 1:
            raise ValueError(
                f"learned positions need max_position_embeddings >= 1, got "
                f"{self.max_position_embeddings}"
            )

    @property
    def model_width(self) -> int:
        """Width of the token embedding table (embed_proj_dim, defaulting to emb_dim)."""
        return self.emb_dim if self.embed_proj_dim is None else self.embed_proj_dim

    @property
    def kv_heads(self) -> int:
        """Key/value heads (num_kv_heads, defaulting to num_heads)."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def compute_dtype(self):
        """The jnp compute dtype."""
        return DTYPES[self.dtype]


def make_norm(cfg: TransformerConfig, name: str) -> nn.Module:
    """RMSNorm (scale) or LayerNorm (scale and bias), as cfg.norm_type says."""
    cls = layers.LayerNorm if cfg.norm_type == "layernorm" else layers.RMSNorm
    return cls(cfg.layer_norm_epsilon, cfg.compute_dtype, name=name)


def _attention(cfg: TransformerConfig, name: str, deterministic: bool, decode: bool = False):
    return layers.MultiHeadAttention(
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        dtype=cfg.compute_dtype,
        dropout_rate=cfg.dropout_rate,
        scale_logits=cfg.scale_attention_logits,
        rope_theta=cfg.rope_theta if cfg.position_embedding == "rope" else None,
        impl=cfg.attention_impl,
        qkv_bias=cfg.use_bias or cfg.qkv_bias,
        out_bias=cfg.use_bias,
        deterministic=deterministic,
        decode=decode,
        name=name,
    )


class _Block(nn.Module):
    """Shared pieces of encoder and decoder layers: norms, MLP, residual dropout."""

    config: TransformerConfig
    deterministic: bool = True
    decode: bool = False

    def norm(self, name: str) -> nn.Module:
        return make_norm(self.config, name)

    def relpos(self, bias: Array, q_len: int, start: Array | None, bidirectional: bool) -> Array:
        """bias plus this layer's own relative position bias (UMT5), from array slots."""
        cfg = self.config
        if not (cfg.relpos_per_layer and cfg.position_embedding == "relative"):
            return bias
        q_idx = jnp.arange(q_len) + (0 if start is None else start)
        k_idx = jnp.arange(bias.shape[-1])
        table = layers.RelativePositionBiases(
            cfg.num_heads, cfg.relpos_num_buckets, cfg.relpos_max_distance, cfg.compute_dtype,
            name="relpos_bias",
        )  # fmt: skip
        return bias + table(q_idx, k_idx, bidirectional=bidirectional)

    def dropout(self, x: Array) -> Array:
        return nn.Dropout(self.config.dropout_rate, broadcast_dims=(-2,))(
            x, deterministic=self.deterministic
        )

    def mlp(self, x: Array) -> Array:
        cfg = self.config
        return layers.MlpBlock(
            cfg.mlp_dim,
            cfg.mlp_activations,
            cfg.dropout_rate,
            cfg.compute_dtype,
            self.deterministic,
            use_bias=cfg.use_bias,
            name="mlp",
        )(x)


class EncoderLayer(_Block):
    """Pre-norm self-attention + MLP (T5X names `attention`, `pre_attention_layer_norm`)."""

    @nn.compact
    def __call__(self, x: Array, bias: Array, positions: Array | None) -> tuple[Array, None]:
        """x [batch, length, embed], bias [batch|1, heads|1, length, length]."""
        bias = self.relpos(bias, x.shape[1], None, bidirectional=True)
        y = self.norm("pre_attention_layer_norm")(x)
        y = _attention(self.config, "attention", self.deterministic)(
            y, y, bias, positions, positions
        )
        x = x + self.dropout(y)
        y = self.dropout(self.mlp(self.norm("pre_mlp_layer_norm")(x)))
        return layers.constrain(x + y, EMBED_AXES), None


class DecoderLayer(_Block):
    """Self-attention, optional cross-attention, MLP (sequential or PaLM-parallel)."""

    cross_attention: bool = False

    @nn.compact
    def __call__(
        self,
        x: Array,
        bias: Array,
        positions: Array | None,
        encoded: Array | None,
        cross_bias: Array | None,
        cache_index: Array | None,
    ) -> tuple[Array, None]:
        """x [batch, length, embed]; encoded [batch, enc_length, embed] when cross_attention."""
        cfg = self.config
        if cfg.post_layer_norm:
            return self._post_norm(x, bias, positions, cache_index), None
        bias = self.relpos(bias, x.shape[1], cache_index, bidirectional=False)
        h = self.norm("pre_self_attention_layer_norm")(x)
        attn = _attention(cfg, "self_attention", self.deterministic, self.decode)
        y = attn(h, h, bias, positions, positions, cache_index)
        if cfg.parallel_block:
            out = x + self.dropout(y) + self.dropout(self.mlp(h))
            return layers.constrain(out, EMBED_AXES), None
        x = x + self.dropout(y)
        if self.cross_attention:
            y = self.norm("pre_cross_attention_layer_norm")(x)
            y = _attention(cfg, "encoder_decoder_attention", self.deterministic)(
                y, encoded, cross_bias
            )
            x = x + self.dropout(y)
        y = self.dropout(self.mlp(self.norm("pre_mlp_layer_norm")(x)))
        return layers.constrain(x + y, EMBED_AXES), None

    def _post_norm(self, x, bias, positions, cache_index) -> Array:
        """OPT-350m's post-LN layer: norm(x + attention(x)), then norm(x + mlp(x))."""
        attn = _attention(self.config, "self_attention", self.deterministic, self.decode)
        y = attn(x, x, bias, positions, positions, cache_index)
        x = self.norm("post_self_attention_layer_norm")(x + self.dropout(y))
        y = self.dropout(self.mlp(x))
        return layers.constrain(self.norm("post_mlp_layer_norm")(x + y), EMBED_AXES)


def run_layers(
    cfg: TransformerConfig, layer_cls, num_layers: int, x: Array, args: tuple, **attrs
) -> Array:
    """Applies num_layers layers (a Python loop of `layers_{i}`, or nn.scan as `layers`)."""
    if cfg.remat_policy != "none":
        policy = (
            None
            if cfg.remat_policy == "full"
            else getattr(jax.checkpoint_policies, cfg.remat_policy)
        )
        layer_cls = nn.remat(layer_cls, policy=policy, prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        stack = nn.scan(
            layer_cls,
            variable_axes={"params": 0, "cache": 1},  # cache stays batch-major
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * len(args),
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = stack(config=cfg, name="layers", **attrs)(x, *args)
        return x
    for i in range(num_layers):
        x, _ = layer_cls(config=cfg, name=f"layers_{i}", **attrs)(x, *args)
    return x
