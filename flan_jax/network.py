"""Flax networks: EncoderDecoder (T5 v1.1 / original T5) and DecoderOnly (causal / prefix LM).

Parameter names follow T5X (`token_embedder`, `encoder/layers_0/attention/query`, ...), so
T5X checkpoints map 1:1; `TransformerConfig` is the one frozen description of a network.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from flan_jax import layers

Array = jax.Array
EMBED_AXES = ("activation_batch", "activation_length", "activation_embed")
LOGITS_AXES = ("activation_batch", "activation_length", "activation_vocab")
POSITION_EMBEDDINGS = ("relative", "rope")
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
      attention_impl: 'einsum' (reference) or 'dot_product_attention' (jax.nn).
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

    @property
    def kv_heads(self) -> int:
        """Key/value heads (num_kv_heads, defaulting to num_heads)."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def compute_dtype(self):
        """The jnp compute dtype."""
        return DTYPES[self.dtype]


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
        deterministic=deterministic,
        decode=decode,
        name=name,
    )


class _Block(nn.Module):
    """Shared pieces of encoder and decoder layers: norms, MLP, residual dropout."""

    config: TransformerConfig
    deterministic: bool = True
    decode: bool = False

    def norm(self, name: str) -> layers.RMSNorm:
        return layers.RMSNorm(self.config.layer_norm_epsilon, self.config.compute_dtype, name=name)

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
            name="mlp",
        )(x)


class EncoderLayer(_Block):
    """Pre-norm self-attention + MLP (T5X names `attention`, `pre_attention_layer_norm`)."""

    @nn.compact
    def __call__(self, x: Array, bias: Array, positions: Array | None) -> tuple[Array, None]:
        """x [batch, length, embed], bias [batch|1, heads|1, length, length]."""
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


def _pair_mask(q: Array, k: Array, op=jnp.logical_and) -> Array:
    """[batch, q] x [batch, k] -> [batch, 1, q, k]."""
    return op(q[:, None, :, None], k[:, None, None, :])


def _default_positions(tokens: Array, positions: Array | None) -> Array:
    if positions is not None:
        return positions
    return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


class Encoder(nn.Module):
    """T5 encoder stack over a shared token embedder."""

    config: TransformerConfig
    shared_embedding: nn.Module

    @nn.compact
    def __call__(
        self, tokens: Array, segment_ids: Array | None, positions: Array | None, deterministic: bool
    ) -> Array:
        """tokens [batch, length] -> encoded [batch, length, embed]."""
        cfg = self.config
        valid = tokens > 0
        mask = _pair_mask(valid, valid)
        if segment_ids is not None:
            mask &= _pair_mask(segment_ids, segment_ids, jnp.equal)
        bias = layers.mask_to_bias(mask, cfg.compute_dtype)
        if cfg.position_embedding == "relative":
            idx = jnp.arange(tokens.shape[1])
            bias = bias + _relpos(cfg, "relpos_bias")(idx, idx, bidirectional=True)
        drop = functools.partial(
            nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,)), deterministic=deterministic
        )
        x = drop(self.shared_embedding(tokens).astype(cfg.compute_dtype))
        x = layers.constrain(x, EMBED_AXES)
        positions = _default_positions(tokens, positions)
        x = run_layers(
            cfg,
            EncoderLayer,
            cfg.num_encoder_layers,
            x,
            (bias, positions),
            deterministic=deterministic,
        )
        x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="encoder_norm")(x)
        return drop(x)


def _relpos(cfg: TransformerConfig, name: str) -> layers.RelativePositionBiases:
    return layers.RelativePositionBiases(
        cfg.num_heads, cfg.relpos_num_buckets, cfg.relpos_max_distance, cfg.compute_dtype, name=name
    )


class Decoder(nn.Module):
    """Decoder stack: causal or prefix-LM self-attention, cross-attention when encoded is given.

    Decode mode keeps, in the 'cache' collection, a shared `cache_index`, per-slot `key_valid`
    [batch, cache_length], and per layer `cached_key`/`cached_value` [batch, cache_length,
    kv_heads, head_dim]. The first decode call (with cache_length tokens) only creates them.
    """

    config: TransformerConfig
    shared_embedding: nn.Module | None = None

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        *,
        target_tokens: Array | None = None,
        segment_ids: Array | None = None,
        positions: Array | None = None,
        causal_attention: Array | None = None,
        encoded: Array | None = None,
        encoder_tokens: Array | None = None,
        encoder_segment_ids: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        """Returns float32 logits [batch, length, vocab].

        Args:
          tokens: decoder input tokens [batch, length].
          target_tokens: [batch, length], > 0 on real positions (padding mask, as T5X);
            None: every position is real.
          causal_attention: [batch, length] 1 on the prefix (prefix-LM inputs) which attends
            bidirectionally (seqio `decoder_causal_attention`).
          encoded, encoder_tokens: encoder output [batch, enc_length, embed] and its tokens.
        """
        cfg = self.config
        embedder = self.shared_embedding
        if embedder is None:
            embedder = layers.Embed(
                cfg.vocab_size,
                cfg.emb_dim,
                cfg.one_hot_embed,
                cfg.compute_dtype,
                name="token_embedder",
            )
        valid = jnp.ones(tokens.shape, bool) if target_tokens is None else target_tokens > 0
        is_step = decode and self.has_variable("cache", "cache_index")
        if decode:
            cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            key_valid = self.variable("cache", "key_valid", jnp.zeros, tokens.shape, jnp.int32)
        if is_step:
            start = cache_index.value
            key_valid.value = lax.dynamic_update_slice(
                key_valid.value, valid.astype(jnp.int32), (0, start)
            )
            mask, q_idx, k_idx = self._step_mask(
                tokens, valid, key_valid.value, causal_attention, start
            )
            cache_index.value = start + tokens.shape[1]
        else:
            start = None
            mask, q_idx, k_idx = self._full_mask(tokens, valid, segment_ids, causal_attention)
        bias = layers.mask_to_bias(mask, cfg.compute_dtype)
        if cfg.position_embedding == "relative":
            bias = bias + _relpos(cfg, "relpos_bias")(q_idx, k_idx, bidirectional=False)
        if positions is None:
            positions = jnp.broadcast_to(q_idx.astype(jnp.int32), tokens.shape)
        cross_bias = None
        if encoded is not None:
            cross = _pair_mask(valid, encoder_tokens > 0)
            if segment_ids is not None and encoder_segment_ids is not None:
                cross &= _pair_mask(segment_ids, encoder_segment_ids, jnp.equal)
            cross_bias = layers.mask_to_bias(cross, cfg.compute_dtype)

        drop = functools.partial(
            nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,)), deterministic=deterministic
        )
        x = layers.constrain(drop(embedder(tokens).astype(cfg.compute_dtype)), EMBED_AXES)
        args = (bias, positions, encoded, cross_bias, start)
        attrs = dict(
            deterministic=deterministic, decode=decode, cross_attention=encoded is not None
        )
        x = run_layers(cfg, DecoderLayer, cfg.num_decoder_layers, x, args, **attrs)
        x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="decoder_norm")(x)
        x = drop(x).astype(jnp.float32)
        if cfg.logits_via_embedding:
            logits = embedder.attend(x, dtype=jnp.float32) * cfg.emb_dim**-0.5
        else:
            logits = layers.Dense(
                cfg.vocab_size, ("embed", "vocab"), dtype=jnp.float32, name="logits_dense"
            )(x)
        return layers.constrain(logits, LOGITS_AXES)

    @staticmethod
    def _full_mask(tokens, valid, segment_ids, causal_attention):
        idx = jnp.arange(tokens.shape[1])
        causal = (idx[None, :] <= idx[:, None])[None, None]
        if causal_attention is not None:
            prefix = causal_attention > 0
            causal = causal | _pair_mask(prefix, prefix)
        mask = causal & _pair_mask(valid, valid)
        if segment_ids is not None:
            mask &= _pair_mask(segment_ids, segment_ids, jnp.equal)
        return mask, idx, idx

    @staticmethod
    def _step_mask(tokens, valid, key_valid, causal_attention, start):
        """Mask [batch, 1, n, cache_length] for n new tokens written at slots start..start+n-1."""
        q_idx = start + jnp.arange(tokens.shape[1])
        k_idx = jnp.arange(key_valid.shape[1])
        mask = (k_idx[None, :] <= q_idx[:, None])[None, None]
        if causal_attention is not None:
            prefix = causal_attention > 0
            prefix_k = lax.dynamic_update_slice(
                jnp.zeros(key_valid.shape, bool), prefix, (0, start)
            )
            mask = mask | _pair_mask(prefix, prefix_k)
        mask = mask & _pair_mask(valid, key_valid > 0)
        return mask, q_idx, k_idx


class EncoderDecoder(nn.Module):
    """T5 v1.1 / original T5: shared `token_embedder`, `encoder`, `decoder`."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        if cfg.num_encoder_layers < 1:
            raise ValueError(
                f"EncoderDecoder needs num_encoder_layers >= 1, got {cfg.num_encoder_layers}"
            )
        self.token_embedder = layers.Embed(
            cfg.vocab_size, cfg.emb_dim, cfg.one_hot_embed, cfg.compute_dtype
        )
        self.encoder = Encoder(cfg, self.token_embedder)
        self.decoder = Decoder(cfg, self.token_embedder)

    def encode(
        self,
        encoder_input_tokens,
        encoder_segment_ids=None,
        encoder_positions=None,
        *,
        enable_dropout=False,
    ):
        """[batch, enc_length] tokens -> [batch, enc_length, embed]."""
        return self.encoder(
            encoder_input_tokens, encoder_segment_ids, encoder_positions, not enable_dropout
        )

    def decode(
        self,
        encoded,
        encoder_input_tokens,
        decoder_input_tokens,
        decoder_target_tokens=None,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        decoder_positions=None,
        *,
        enable_dropout=False,
        decode=False,
    ):
        """Decoder logits [batch, length, vocab] (float32) given the encoder output."""
        return self.decoder(
            decoder_input_tokens,
            target_tokens=decoder_target_tokens,
            segment_ids=decoder_segment_ids,
            positions=decoder_positions,
            encoded=encoded,
            encoder_tokens=encoder_input_tokens,
            encoder_segment_ids=encoder_segment_ids,
            deterministic=not enable_dropout,
            decode=decode,
        )

    def __call__(
        self,
        encoder_input_tokens,
        decoder_input_tokens,
        decoder_target_tokens,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        encoder_positions=None,
        decoder_positions=None,
        *,
        enable_dropout=False,
        decode=False,
    ):
        """Full forward pass: logits [batch, target_length, vocab] float32."""
        encoded = self.encode(
            encoder_input_tokens,
            encoder_segment_ids,
            encoder_positions,
            enable_dropout=enable_dropout,
        )
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            decoder_target_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            decoder_positions,
            enable_dropout=enable_dropout,
            decode=decode,
        )


class DecoderOnly(nn.Module):
    """Causal / prefix LM; params under `decoder/` (T5X's DecoderWrapper layout)."""

    config: TransformerConfig

    @nn.compact
    def __call__(
        self,
        decoder_input_tokens,
        decoder_target_tokens=None,
        decoder_segment_ids=None,
        decoder_positions=None,
        decoder_causal_attention=None,
        *,
        enable_dropout=False,
        decode=False,
    ):
        """Logits [batch, length, vocab] float32."""
        return Decoder(self.config, name="decoder")(
            decoder_input_tokens,
            target_tokens=decoder_target_tokens,
            segment_ids=decoder_segment_ids,
            positions=decoder_positions,
            causal_attention=decoder_causal_attention,
            deterministic=not enable_dropout,
            decode=decode,
        )
