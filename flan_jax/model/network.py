"""Flax networks: EncoderDecoder (T5 v1.1 / original T5) and DecoderOnly (causal / prefix LM).

Parameter names follow T5X (`token_embedder`, `encoder/layers_0/attention/query`, ...), so
T5X checkpoints map 1:1. The networks stack flan_jax.model.transformer's layers, configured by its
`TransformerConfig` (re-exported here, as gin files name it `network.TransformerConfig`).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from flan_jax.model import layers
from flan_jax.model.transformer import (
    DTYPES,
    EMBED_AXES,
    LOGITS_AXES,
    POSITION_EMBEDDINGS,
    Array,
    DecoderLayer,
    EncoderLayer,
    TransformerConfig,
    make_norm,
    run_layers,
)

__all__ = [
    "DTYPES",
    "EMBED_AXES",
    "LOGITS_AXES",
    "POSITION_EMBEDDINGS",
    "Array",
    "Decoder",
    "DecoderLayer",
    "DecoderOnly",
    "Encoder",
    "EncoderDecoder",
    "EncoderLayer",
    "TransformerConfig",
    "run_layers",
]


def _pair_mask(q: Array, k: Array, op=jnp.logical_and) -> Array:
    """[batch, q] x [batch, k] -> [batch, 1, q, k]."""
    return op(q[:, None, :, None], k[:, None, None, :])


def _segments(valid: Array, segment_ids: Array | None) -> Array:
    """Segment ids with 0 on padding (1 everywhere valid when rows are not packed)."""
    seg = jnp.ones(valid.shape, jnp.int32) if segment_ids is None else segment_ids
    return jnp.where(valid, seg, 0).astype(jnp.int32)


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
        idx = jnp.arange(tokens.shape[1])
        relpos = None
        if cfg.position_embedding == "relative" and not cfg.relpos_per_layer:
            relpos = _relpos(cfg, "relpos_bias")(idx, idx, bidirectional=True)
        if _fused(cfg):  # segment ids, no dense [b, h, q, k] bias
            seg = _segments(valid, segment_ids)
            bias = layers.AttentionMask(q_segments=seg, kv_segments=seg, relpos=relpos)
        else:
            mask = _pair_mask(valid, valid)
            if segment_ids is not None:
                mask &= _pair_mask(segment_ids, segment_ids, jnp.equal)
            bias = layers.mask_to_bias(mask, cfg.compute_dtype)
            if relpos is not None:
                bias = bias + relpos
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
        x = make_norm(cfg, "encoder_norm")(x)
        return drop(x)


def _relpos(cfg: TransformerConfig, name: str) -> layers.RelativePositionBiases:
    return layers.RelativePositionBiases(
        cfg.num_heads, cfg.relpos_num_buckets, cfg.relpos_max_distance, cfg.compute_dtype, name=name
    )


def _add_absolute_positions(cfg: TransformerConfig, x: Array, positions: Array) -> Array:
    """OPT's input side: project_in (embed_proj_dim -> emb_dim), then learned positions.

    Positions restart per packed example; row `position + position_offset` of the table is
    read (OPT's offset of 2).
    """
    if cfg.embed_proj_dim is not None:
        x = layers.Dense(cfg.emb_dim, (None, "embed"), dtype=cfg.compute_dtype,
                         name="project_in")(x)  # fmt: skip
    if cfg.position_embedding != "learned":
        return x
    table = layers.Embed(
        cfg.max_position_embeddings + cfg.position_offset,
        cfg.emb_dim,
        cfg.one_hot_embed,
        cfg.compute_dtype,
        name="position_embedder",
    )
    return x + table(positions + cfg.position_offset).astype(x.dtype)


def _fused(cfg: TransformerConfig) -> bool:
    """The fused kernels take segment ids and one relative bias: per-layer relative biases
    (UMT5) and sliding windows (Mistral) keep the dense-bias path."""
    return cfg.attention_impl == "fused" and not cfg.relpos_per_layer and cfg.sliding_window is None


def _window(mask: Array, q_idx: Array, k_idx: Array, window: int | None) -> Array:
    """Keeps keys fewer than `window` slots behind the query (Mistral's sliding window)."""
    if window is None:
        return mask
    return mask & ((q_idx[:, None] - k_idx[None, :]) < window)[None, None]


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
            init = {}
            if cfg.logits_via_embedding and not cfg.scale_tied_logits:
                # an unscaled tied head (OPT) on T5's unit-variance init gives logits of
                # std sqrt(width): start near uniform instead
                init["embedding_init"] = nn.initializers.normal(stddev=cfg.model_width**-0.5)
            embedder = layers.Embed(
                cfg.vocab_size,
                cfg.model_width,
                cfg.one_hot_embed,
                cfg.compute_dtype,
                name="token_embedder",
                **init,
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
            mask = _window(mask, q_idx, k_idx, cfg.sliding_window)
            cache_index.value = start + tokens.shape[1]
        else:
            start = None
            mask, q_idx, k_idx = self._full_mask(tokens, valid, segment_ids, causal_attention)
            mask = _window(mask, q_idx, k_idx, cfg.sliding_window)
        relpos = None
        if cfg.position_embedding == "relative" and not cfg.relpos_per_layer:
            relpos = _relpos(cfg, "relpos_bias")(q_idx, k_idx, bidirectional=False)
        fused = _fused(cfg) and not decode  # decoding keeps its dense masks
        if fused:
            seg = _segments(valid, segment_ids)
            prefix = None if causal_attention is None else causal_attention > 0
            bias = layers.AttentionMask(
                q_segments=seg, kv_segments=seg, prefix=prefix, relpos=relpos, causal=True
            )
        else:
            bias = layers.mask_to_bias(mask, cfg.compute_dtype)
            bias = bias if relpos is None else bias + relpos
        if positions is None:
            positions = jnp.broadcast_to(q_idx.astype(jnp.int32), tokens.shape)
        cross_bias = None
        if encoded is not None:
            packed = segment_ids is not None and encoder_segment_ids is not None
            if fused:
                cross_bias = layers.AttentionMask(
                    q_segments=_segments(valid, segment_ids if packed else None),
                    kv_segments=_segments(
                        encoder_tokens > 0, encoder_segment_ids if packed else None
                    ),
                )
            else:
                cross = _pair_mask(valid, encoder_tokens > 0)
                if packed:
                    cross &= _pair_mask(segment_ids, encoder_segment_ids, jnp.equal)
                cross_bias = layers.mask_to_bias(cross, cfg.compute_dtype)

        drop = functools.partial(
            nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,)), deterministic=deterministic
        )
        x = embedder(tokens).astype(cfg.compute_dtype)
        x = layers.constrain(drop(_add_absolute_positions(cfg, x, positions)), EMBED_AXES)
        args = (bias, positions, encoded, cross_bias, start)
        attrs = dict(
            deterministic=deterministic, decode=decode, cross_attention=encoded is not None
        )
        x = run_layers(cfg, DecoderLayer, cfg.num_decoder_layers, x, args, **attrs)
        if not cfg.post_layer_norm:
            x = make_norm(cfg, "decoder_norm")(x)
        if cfg.embed_proj_dim is not None:
            x = layers.Dense(cfg.embed_proj_dim, ("embed", None), dtype=cfg.compute_dtype,
                             name="project_out")(x)  # fmt: skip
        x = drop(x).astype(jnp.float32)
        if cfg.logits_via_embedding:
            logits = embedder.attend(x, dtype=jnp.float32)
            if cfg.scale_tied_logits:
                logits = logits * cfg.emb_dim**-0.5
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
