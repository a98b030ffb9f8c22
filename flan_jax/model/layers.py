"""Transformer building blocks shared by the encoder-decoder and decoder-only networks.

RMSNorm, LayerNorm, dense (optional bias), embeddings, T5 relative position biases, RoPE,
multi-head attention (MHA / GQA / MQA, with a KV cache) and gated MLPs; every parameter
carries logical axes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct
from jax import lax

from flan_jax.model import fused_attention
from flan_jax.types import Array

DType = jnp.dtype | type
Initializer = Callable[..., Array]
Axes = tuple[str | None, ...]

MASK_BIAS = -1e10  # T5X's additive bias for masked attention logits.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": nn.gelu,  # tanh approximation, flax default (T5X / HF "gelu_new")
    "gelu_exact": lambda x: nn.gelu(x, approximate=False),
    "relu": nn.relu,
    "silu": nn.silu,
    "linear": lambda x: x,
}
ATTENTION_IMPLS = ("einsum", "dot_product_attention", "fused")

default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def constrain(x: Array, axes: Axes) -> Array:
    """Annotates an activation with logical axes (a no-op outside a mesh / rules context)."""
    return nn.with_logical_constraint(x, axes)


def check_activations(activations: Sequence[str]) -> tuple[str, ...]:
    """Validates MLP activation names; returns them as a tuple."""
    for name in activations:
        if name not in ACTIVATIONS:
            raise ValueError(
                f"unknown MLP activation {name!r} in {tuple(activations)}; "
                f"use names from {sorted(ACTIVATIONS)}"
            )
    return tuple(activations)


class RMSNorm(nn.Module):
    """T5 layer norm: x * rsqrt(mean(x^2) + eps) * scale; no mean, no bias."""

    epsilon: float = 1e-6
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Normalizes x [..., embed] over its last axis (statistics in float32)."""
        x32 = jnp.asarray(x, jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = jnp.asarray(x32 * lax.rsqrt(var + self.epsilon), self.dtype)
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],)
        )
        return y * jnp.asarray(scale, self.dtype)


class LayerNorm(nn.Module):
    """Layer norm with scale and bias (OPT): (x - mean) * rsqrt(var + eps) * scale + bias."""

    epsilon: float = 1e-5
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Normalizes x [..., embed] over its last axis (statistics in float32)."""
        x32 = jnp.asarray(x, jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = jnp.asarray((x32 - mean) * lax.rsqrt(var + self.epsilon), self.dtype)
        features = (x.shape[-1],)
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), features
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), features
        )
        return y * jnp.asarray(scale, self.dtype) + jnp.asarray(bias, self.dtype)


class Dense(nn.Module):
    """Dense layer with a 2-D kernel [in, out], logical kernel axes and an optional bias [out].

    `in_axes` (number of trailing input axes contracted) and `out_shape` let attention
    keep T5X's flat `[embed, heads * head_dim]` kernels while computing per head.
    """

    features: int | tuple[int, ...]
    kernel_axes: Axes
    in_axes: int = 1
    kernel_init: Initializer = default_kernel_init
    dtype: DType = jnp.float32
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x [..., *in] -> [..., *features]."""
        out_shape = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        in_shape = x.shape[x.ndim - self.in_axes :]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
            (int(np.prod(in_shape)), int(np.prod(out_shape))),
        )
        kernel = jnp.asarray(kernel, self.dtype).reshape(in_shape + out_shape)
        x = jnp.asarray(x, self.dtype)
        contract = tuple(range(x.ndim - self.in_axes, x.ndim))
        dims = ((contract, tuple(range(self.in_axes))), ((), ()))
        y = lax.dot_general(x, kernel, dims)
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes[-1:]),
                (int(np.prod(out_shape)),),
            )
            y = y + jnp.asarray(bias, self.dtype).reshape(out_shape)
        return y


class Embed(nn.Module):
    """Token embedding [vocab, embed]; lookup by one-hot matmul (T5X default) or take."""

    num_embeddings: int
    features: int
    one_hot: bool = True
    dtype: DType = jnp.float32
    embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed")),
            (self.num_embeddings, self.features),
        )

    def __call__(self, tokens: Array) -> Array:
        """tokens [batch, length] int -> [batch, length, embed]."""
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"Embed expects integer token ids, got dtype {tokens.dtype}")
        table = jnp.asarray(self.embedding, self.dtype)
        if self.one_hot:
            one_hot = jax.nn.one_hot(tokens, self.num_embeddings, dtype=self.dtype)
            return one_hot @ table
        return jnp.take(table, tokens, axis=0)

    def attend(self, x: Array, dtype: DType | None = None) -> Array:
        """Tied output projection: x [..., embed] -> logits [..., vocab] (in dtype)."""
        dtype = self.dtype if dtype is None else dtype
        return jnp.asarray(x, dtype) @ jnp.asarray(self.embedding, dtype).T


def relative_position_bucket(
    relative_position: Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """T5's bucketing of (key - query) distances: exact below num_buckets/4 (or /2), log above."""
    ret = jnp.zeros_like(relative_position)
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    val_if_large = max_exact + (
        jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
        / np.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).astype(jnp.int32)
    val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
    return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBiases(nn.Module):
    """T5 relative position bias: one `rel_embedding` [heads, buckets] table per stack."""

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, q_index: Array, k_index: Array, *, bidirectional: bool) -> Array:
        """Bias [1, heads, q, k] from query [q] and key [k] indices (array slots, as T5X)."""
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                ("heads", "relpos_buckets"),
            ),
            (self.num_heads, self.num_buckets),
        )
        bucket = relative_position_bucket(
            k_index[None, :] - q_index[:, None],
            bidirectional=bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        one_hot = jax.nn.one_hot(bucket, self.num_buckets, dtype=self.dtype)  # [q, k, buckets]
        values = jnp.einsum("hn,qkn->hqk", jnp.asarray(table, self.dtype), one_hot)
        return values[None]


def apply_rope(x: Array, positions: Array, theta: float) -> Array:
    """Rotary embedding, HF Llama rotate-half convention.

    Args:
      x: [batch, length, heads, head_dim].
      positions: [batch, length] int positions (restart per packed example).
      theta: RoPE base frequency.
    """
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, l, d/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def mask_to_bias(mask: Array, dtype: DType = jnp.float32) -> Array:
    """Boolean/0-1 mask -> additive bias (0 where allowed, MASK_BIAS where masked)."""
    return lax.select(
        mask > 0, jnp.zeros(mask.shape, dtype), jnp.full(mask.shape, MASK_BIAS, dtype)
    )


@struct.dataclass
class AttentionMask:
    """Masks as segment ids, for the fused kernels: no dense [batch, heads, q, k] bias.

    Query i may attend key j iff q_segments[i] == kv_segments[j] != 0 (0 marks padding) and,
    when `causal`, j <= i or both lie in the bidirectional `prefix` (prefix LM). `relpos`
    is T5's relative position bias [1, heads, q, k] (None: RoPE models).
    """

    q_segments: Array  # [batch, q] int32
    kv_segments: Array  # [batch, k] int32
    prefix: Array | None = None  # [batch, q] bool, self-attention only
    relpos: Array | None = None
    causal: bool = struct.field(pytree_node=False, default=False)

    def dense(self) -> Array:
        """The boolean mask [batch, 1, q, k] (True: attend), as the einsum reference builds it."""
        return fused_attention.dense_mask(
            self.q_segments, self.kv_segments, self.prefix, self.causal
        )

    def dense_bias(self, dtype: DType) -> Array:
        """mask_to_bias(dense()) + relpos: the einsum path's additive bias."""
        bias = mask_to_bias(self.dense(), dtype)
        return bias if self.relpos is None else bias + self.relpos.astype(dtype)


def _attend(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | AttentionMask | None,
    impl: str,
    dropout: Callable[[Array], Array] | None = None,
) -> Array:
    """Softmax attention; q [b,q,H,d], k/v [b,k,K,d] (H = K * groups), bias [b|1, H|1, q, k].

    An AttentionMask `bias` (impl 'fused') goes to the backend's fused kernel
    (flan_jax.model.fused_attention) where one beats the einsum (`fused_attention.worth_it`: GPU,
    TPU); `dropout` (applied to the attention probabilities, as T5X) forces the einsum path.
    """
    if isinstance(bias, AttentionMask):
        if dropout is None and fused_attention.worth_it():
            m = bias
            return fused_attention.attend(
                query, key, value, m.q_segments, m.kv_segments, m.prefix, m.relpos, m.causal
            )
        bias = bias.dense_bias(jnp.float32)
    if impl == "dot_product_attention" and dropout is None:
        return jax.nn.dot_product_attention(
            query, key, value, bias=None if bias is None else bias.astype(query.dtype), scale=1.0
        )
    b, q_len, heads, d = query.shape
    kv_heads = key.shape[2]
    q = query.reshape(b, q_len, kv_heads, heads // kv_heads, d)
    logits = jnp.einsum("bqkgd,bskd->bkgqs", q, key, preferred_element_type=jnp.float32)
    logits = logits.reshape(b, heads, q_len, key.shape[1])
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    if dropout is not None:
        weights = dropout(weights)
    weights = weights.reshape(b, kv_heads, heads // kv_heads, q_len, key.shape[1])
    out = jnp.einsum("bkgqs,bskd->bqkgd", weights, value)
    return out.reshape(b, q_len, heads, d)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with num_kv_heads (MHA / GQA / MQA), optional RoPE and KV cache.

    Kernels are T5X's flat layout: query/key/value [embed, heads * head_dim] with axes
    ('embed', 'joined_kv'), out [heads * head_dim, embed]. With `scale_logits=False` (T5)
    1/sqrt(head_dim) is folded into the query initializer instead of the forward pass.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: DType = jnp.float32
    dropout_rate: float = 0.0
    scale_logits: bool = False
    rope_theta: float | None = None
    impl: str = "einsum"
    qkv_bias: bool = False
    out_bias: bool = False
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        bias: Array | None = None,
        q_positions: Array | None = None,
        kv_positions: Array | None = None,
        cache_index: Array | None = None,
    ) -> Array:
        """Attends inputs_q [batch, q, embed] to inputs_kv [batch, k, embed].

        Args:
          bias: additive bias [batch|1, heads|1, q, k] (masks and relative positions),
            or an AttentionMask (impl 'fused'); in decode mode k is the cache length.
          q_positions, kv_positions: [batch, q] / [batch, k] positions for RoPE.
          cache_index: decode mode only: scalar slot where inputs_kv's first token goes.

        Returns:
          [batch, q, embed].
        """
        embed = inputs_q.shape[-1]
        fan_in = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        depth_scale = 1.0 if self.scale_logits else self.head_dim**-0.5

        def query_init(*args):
            return fan_in(*args) * depth_scale

        kv_axes = ("embed", "kv") if self.num_kv_heads == 1 else ("embed", "joined_kv")
        proj = dict(dtype=self.dtype, use_bias=self.qkv_bias)
        query = Dense(
            (self.num_heads, self.head_dim),
            ("embed", "joined_kv"),
            kernel_init=query_init,
            name="query",
            **proj,
        )(inputs_q)
        key = Dense(
            (self.num_kv_heads, self.head_dim), kv_axes, kernel_init=fan_in, name="key", **proj
        )(inputs_kv)
        value = Dense(
            (self.num_kv_heads, self.head_dim), kv_axes, kernel_init=fan_in, name="value", **proj
        )(inputs_kv)
        axes = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
        query, key, value = (constrain(t, axes) for t in (query, key, value))
        if self.rope_theta is not None:
            query = apply_rope(query, q_positions, self.rope_theta)
            key = apply_rope(key, kv_positions, self.rope_theta)
        if self.scale_logits:
            query = query * jnp.asarray(self.head_dim**-0.5, query.dtype)
        if self.decode:
            key, value = self._update_cache(key, value, cache_index)

        dropout = None
        if self.dropout_rate > 0.0 and not self.deterministic:
            dropout = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,), deterministic=False)
        out = _attend(query, key, value, bias, self.impl, dropout)
        out = constrain(out, axes)
        proj["use_bias"] = self.out_bias
        return Dense(
            embed, ("joined_kv", "embed"), in_axes=2, kernel_init=fan_in, name="out", **proj
        )(out)

    def _update_cache(self, key: Array, value: Array, cache_index: Array | None):
        """Writes key/value [b, n, K, d] at cache_index; returns the whole cache [b, L, K, d].

        The first (initializing) call sees the full cache length and only creates zeros.
        """
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        if not initialized:
            return key, value
        if cache_index is None:
            raise ValueError("MultiHeadAttention in decode mode needs cache_index (a scalar slot)")
        start = (0, cache_index, 0, 0)
        cached_key.value = lax.dynamic_update_slice(
            cached_key.value, key.astype(cached_key.value.dtype), start
        )
        cached_value.value = lax.dynamic_update_slice(
            cached_value.value, value.astype(cached_value.value.dtype), start
        )
        return cached_key.value, cached_value.value


class MlpBlock(nn.Module):
    """T5 MLP: gated when several activations (('gelu','linear'), ('silu','linear')), else plain.

    Kernels are `wi_{i}` (or `wi` for one activation) [embed, mlp] and `wo` [mlp, embed].
    """

    mlp_dim: int
    activations: tuple[str, ...] = ("gelu", "linear")
    dropout_rate: float = 0.0
    dtype: DType = jnp.float32
    deterministic: bool = True
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x [batch, length, embed] -> [batch, length, embed]."""
        acts = check_activations(self.activations)
        hidden = None
        for i, act in enumerate(acts):
            name = "wi" if len(acts) == 1 else f"wi_{i}"
            h = Dense(
                self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, use_bias=self.use_bias, name=name
            )(x)
            h = ACTIVATIONS[act](h)
            hidden = h if hidden is None else hidden * h
        hidden = constrain(hidden, ("activation_batch", "activation_length", "activation_mlp"))
        hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
            hidden, deterministic=self.deterministic
        )
        return Dense(
            x.shape[-1], ("mlp", "embed"), dtype=self.dtype, use_bias=self.use_bias, name="wo"
        )(hidden)
