"""Fused attention for packed rows, chosen per backend; layers._attend's einsum is the reference.

Masks arrive as segment ids (0 = padding), a causal flag, an optional prefix-LM prefix and an
optional T5 relative-position bias [1, heads, q, k], never as a dense [batch, heads, q, k] bias:

- GPU, bfloat16/float16: cuDNN flash attention. Segments go in as cuDNN's packed layout
  (per-row segment offsets and lengths, mask type PADDING or PADDING_CAUSAL), the relative
  bias as its bias. Prefix LMs (no cuDNN mask type) pass a boolean [batch, 1, q, k] mask,
  which cuDNN reads as a [batch, 1, q, k] bias in the compute dtype (not per head).
- TPU, causal without prefix or relative bias (Llama / PaLM-style LMs), rows a multiple of
  128 tokens: the Pallas splash attention kernel with SegmentIds and a causal mask.
- Elsewhere (CPU, float32 on GPU, prefix LMs and T5 on TPU): jax.nn.dot_product_attention's
  XLA implementation with a boolean [batch, 1, q, k] mask.

Queries arrive already scaled (T5 folds 1/sqrt(d) into the query kernel), so scale is 1.
Parity with the einsum reference: tests/attention_test.py.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.types import Array

try:  # cuDNN's packed (segment offsets) layout; a private module that moved between versions
    from jax._src.cudnn.fused_attention_stablehlo import MaskType as _CudnnMask
    from jax._src.cudnn.fused_attention_stablehlo import (
        dot_product_attention as _cudnn_attention,
    )
except ImportError:  # pragma: no cover - the jax.nn path below still runs
    _CudnnMask = _cudnn_attention = None


def dense_mask(q_seg: Array, kv_seg: Array, prefix: Array | None, causal: bool) -> Array:
    """Boolean [batch, 1, q, k] mask (True: attend), the einsum reference's semantics."""
    mask = (q_seg[:, None, :, None] == kv_seg[:, None, None, :]) & (q_seg > 0)[:, None, :, None]
    mask &= (kv_seg > 0)[:, None, None, :]
    if causal:
        q_idx, k_idx = np.arange(q_seg.shape[1]), np.arange(kv_seg.shape[1])
        allowed = jnp.asarray(k_idx[None, :] <= q_idx[:, None])[None, None]
        if prefix is not None:
            allowed = allowed | (prefix[:, None, :, None] & prefix[:, None, None, :])
        mask &= allowed
    return mask


def segment_offsets(segments: Array) -> tuple[Array, Array]:
    """cuDNN's packed layout of rows whose segments are contiguous runs (seqio packing).

    Args:
      segments: [batch, length] int ids, 1..n per row in order, 0 for padding.

    Returns:
      (offsets [batch, length + 1], lengths [batch, length]): segment i starts at offsets[:, i]
      and has lengths[:, i] tokens; offsets[:, n] is the end of the last segment; entries past
      the row's segments are -1 (cuDNN's filler).
    """
    length = segments.shape[1]
    idx = jnp.arange(length)

    def row(seg):
        counts = jax.ops.segment_sum(jnp.ones_like(seg), seg, num_segments=length + 1)[1:]
        starts = jax.ops.segment_min(idx, seg, num_segments=length + 1)[1:]
        n = jnp.sum(counts > 0)
        last_end = jnp.max(jnp.where(seg > 0, idx + 1, 0))
        slots = jnp.arange(length)
        lengths = jnp.where(slots < n, counts, -1)
        offsets = jnp.where(slots < n, starts, -1)
        offsets = jnp.concatenate([offsets, jnp.array([-1], offsets.dtype)])
        return offsets.at[n].set(last_end), lengths

    return jax.vmap(row)(segments.astype(jnp.int32))


def xla(query, key, value, q_seg, kv_seg, prefix, relpos, causal) -> Array:
    """jax.nn.dot_product_attention (XLA) with a boolean mask: the portable fused path."""
    mask = dense_mask(q_seg, kv_seg, prefix, causal)
    bias = None if relpos is None else relpos.astype(query.dtype)
    return jax.nn.dot_product_attention(
        query, key, value, bias=bias, mask=mask, scale=1.0, implementation="xla"
    )


def cudnn(query, key, value, q_seg, kv_seg, prefix, relpos, causal) -> Array:
    """cuDNN flash attention: packed-layout segments, or a boolean mask for prefix LMs."""
    bias = None if relpos is None else relpos.astype(query.dtype)
    if prefix is not None or _cudnn_attention is None:
        mask = dense_mask(q_seg, kv_seg, prefix, causal)
        return jax.nn.dot_product_attention(
            query, key, value, bias=bias, mask=mask, scale=1.0, implementation="cudnn"
        )
    q_off, q_len = segment_offsets(q_seg)
    kv_off, kv_len = segment_offsets(kv_seg)
    mask_type = _CudnnMask.PADDING_CAUSAL if causal else _CudnnMask.PADDING
    return _cudnn_attention(
        query,
        key,
        value,
        bias,
        None,
        q_len,
        kv_len,
        q_off,
        kv_off,
        scale=1.0,
        mask_type=mask_type,
    )


def _block(length: int) -> int | None:
    """The largest splash block size (512, 256 or 128) dividing length (None: none does)."""
    for size in (512, 256, 128):
        if length % size == 0:
            return size
    return None


def splash(query, key, value, segments, *, interpret: bool = False) -> Array:
    """Causal self-attention by Pallas splash attention with segment ids (TPU; CPU interpret).

    query [b, L, H, d], key/value [b, L, K, d] (GQA / MQA repeat the kv heads).
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as sm,
    )

    b, length, heads, _ = query.shape
    groups = heads // key.shape[2]
    if groups > 1:
        key, value = (jnp.repeat(t, groups, axis=2) for t in (key, value))
    mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(heads)])
    bq = _block(length)
    sizes = sk.BlockSizes(
        block_q=bq, block_kv=bq, block_kv_compute=bq,
        block_q_dkv=bq, block_kv_dkv=bq, block_kv_dkv_compute=bq,
        block_q_dq=bq, block_kv_dq=bq,
    )  # fmt: skip
    kernel = sk.make_splash_mha(
        mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret
    )

    def one(q, k, v, seg):  # [L, H, d] -> the kernel's [H, L, d]
        t = functools.partial(jnp.swapaxes, axis1=0, axis2=1)
        out = kernel(t(q), t(k), t(v), segment_ids=sk.SegmentIds(q=seg, kv=seg))
        return t(out)

    return jax.vmap(one)(query, key, value, segments.astype(jnp.int32))


def worth_it(backend: str | None = None) -> bool:
    """Whether the fused path beats the einsum reference on this backend: on GPU and TPU (flash
    kernels); not on CPU, where XLA's dot_product_attention made a t5_1_1/small train step 25%
    slower than the einsum (0.48 vs 0.64 steps/s), so CPU runs take the reference."""
    return (backend or jax.default_backend()) != "cpu"


def attend(query, key, value, q_seg, kv_seg, prefix, relpos, causal, backend: str | None = None):
    """Attention of q [b,q,H,d] over k/v [b,k,K,d] with the backend's fused kernel."""
    backend = backend or jax.default_backend()
    splash_ok = causal and prefix is None and relpos is None and _block(query.shape[1])
    if backend == "tpu" and splash_ok:  # causal masks come with self-attention only
        return splash(query, key, value, q_seg)
    if backend in ("gpu", "cuda") and query.dtype in (jnp.bfloat16, jnp.float16):
        try:
            return cudnn(query, key, value, q_seg, kv_seg, prefix, relpos, causal)
        except (ValueError, NotImplementedError, TypeError, RuntimeError) as e:
            # jax checks cuDNN's shape / version / feature limits while tracing; outside them
            # the XLA path computes the same attention (with materialised scores)
            warnings.warn(f"cuDNN attention unavailable ({e}); using the XLA path", stacklevel=2)
    return xla(query, key, value, q_seg, kv_seg, prefix, relpos, causal)
