"""Best-fit-decreasing packing of tokenized examples, with seqio's packed feature layout.

seqio's `trim_and_pack_dataset` packs greedily (next fit, in arrival order, over windows of
`max(feature_lengths)` examples); `trim_and_pack` here sorts a buffer of examples by size and
puts each into the fullest row it still fits, so rows carry fewer pad tokens. The output keys,
shapes and dtypes are seqio's, so the feature converters below are drop-in replacements.

Worked example (byte vocabulary: id = byte + 3, EOS = 1; lengths inputs 8, targets 4), a
task counting letters: "hi" -> "2", "hello" -> "5", "abcd" -> "4", "a" -> "1":

    {"inputs": [107, 108, 1],                "targets": [53, 1]}
    {"inputs": [107, 104, 111, 111, 114, 1], "targets": [56, 1]}
    {"inputs": [100, 101, 102, 103, 1],      "targets": [55, 1]}
    {"inputs": [100, 1],                     "targets": [52, 1]}

seqio (greedy, in order) needs three rows: [hi], [hello], [abcd, a]. Best fit places the
largest first (hello, abcd, hi, a) into the fullest row that still fits, giving two full rows:

    encoder_input_tokens  [107, 108, 1, 100, 101, 102, 103, 1] [107, 104, 111, 111, 114, 1, 100, 1]
    encoder_segment_ids   [1, 1, 1, 2, 2, 2, 2, 2]             [1, 1, 1, 1, 1, 1, 2, 2]
    encoder_positions     [0, 1, 2, 0, 1, 2, 3, 4]             [0, 1, 2, 3, 4, 5, 0, 1]
    decoder_target_tokens [53, 1, 55, 1]                       [56, 1, 52, 1]
    decoder_input_tokens  [0, 53, 0, 55]                       [0, 56, 0, 52]
    decoder_segment_ids   [1, 1, 2, 2]                         [1, 1, 2, 2]
    decoder_positions     [0, 1, 0, 1]                         [0, 1, 0, 1]
    decoder_loss_weights  [1, 1, 1, 1]                         [1, 1, 1, 1]

Rows come out in the order of their first example and segments in arrival order, so when
best fit groups examples as greedy does, every array equals seqio's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import seqio
import tensorflow as tf

DEFAULT_BUFFER_SIZE = 1000
KINDS = ("enc_dec", "decoder", "prefix_lm", "lm")


def _validate(ds: tf.data.Dataset, feature_lengths: Mapping[str, int], buffer_size: int) -> None:
    if buffer_size < 1:
        raise ValueError(
            f"buffer_size ({buffer_size}) must be >= 1; use e.g. {DEFAULT_BUFFER_SIZE}"
        )
    if not feature_lengths:
        raise ValueError("feature_lengths is empty; pass e.g. {'inputs': 256, 'targets': 64}")
    for k, n in feature_lengths.items():
        if k not in ds.element_spec:
            raise ValueError(
                f"feature {k!r} of feature_lengths {dict(feature_lengths)} is not in the dataset; "
                f"its keys are {sorted(ds.element_spec)}"
            )
        if ds.element_spec[k].shape.rank != 1:
            raise ValueError(
                f"feature {k!r} has shape {ds.element_spec[k].shape}; "
                "packing needs 1-D token sequences"
            )
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"feature_lengths[{k!r}] = {n!r}; expected a positive int")


def _assign_rows(lengths: tf.Tensor, capacity: tf.Tensor) -> tf.Tensor:
    """Best-fit decreasing: row index per example.

    Args:
      lengths: [n, features] int32 lengths, each already <= capacity.
      capacity: [features] int32 row capacities.

    Returns:
      [n] int32 row of each example; rows are numbered 0..num_rows-1 in the order opened.
    """
    n = tf.shape(lengths)[0]
    cap_f = tf.cast(capacity, tf.float32)
    size = tf.reduce_sum(tf.cast(lengths, tf.float32) / cap_f, axis=1)
    # Stable sort: ties keep arrival order, so the assignment is deterministic.
    order = tf.argsort(size, direction="DESCENDING", stable=True)
    remaining0 = tf.tile(capacity[tf.newaxis, :], [n, 1])

    def body(i, remaining, rows):
        ex = order[i]
        slack = remaining - lengths[ex][tf.newaxis, :]
        fits = tf.reduce_all(slack >= 0, axis=1)
        # Unopened rows have full capacity, so they lose to any open row that fits, and the
        # first of them (argmin takes the lowest index) is the next row to open.
        score = tf.reduce_sum(tf.cast(slack, tf.float32) / cap_f, axis=1)
        row = tf.cast(tf.argmin(tf.where(fits, score, float("inf"))), tf.int32)
        remaining = tf.tensor_scatter_nd_update(remaining, [[row]], slack[row][tf.newaxis, :])
        rows = tf.tensor_scatter_nd_update(rows, [[ex]], [row])
        return i + 1, remaining, rows

    _, _, rows = tf.while_loop(
        lambda i, *_: i < n, body, (tf.constant(0), remaining0, tf.zeros([n], tf.int32))
    )
    return rows


def _pack_buffer(batch: Mapping[str, tf.RaggedTensor], feature_lengths: Mapping[str, int]) -> dict:
    """Packs one ragged buffer of examples into [num_rows, length] seqio-layout tensors."""
    keys = list(feature_lengths)
    ragged = {k: batch[k][:, : feature_lengths[k]] for k in keys}  # trim as seqio does
    lengths = tf.stack([tf.cast(ragged[k].row_lengths(), tf.int32) for k in keys], axis=1)
    capacity = tf.constant([feature_lengths[k] for k in keys], tf.int32)
    rows = _assign_rows(lengths, capacity)
    n = tf.shape(rows)[0]
    num_rows = tf.reduce_max(rows) + 1
    index = tf.range(n)
    # Rows are emitted in order of their first example, and segments in arrival order, so a
    # grouping that equals greedy's gives seqio's arrays exactly.
    first = tf.math.unsorted_segment_min(index, rows, num_rows)
    row_rank = tf.math.invert_permutation(tf.argsort(first, stable=True))
    out_row = tf.gather(row_rank, rows)
    order = tf.argsort(out_row * n + index, stable=True)
    sorted_row = tf.gather(out_row, order)
    slot = _rank_within_group(tf.ones_like(sorted_row), sorted_row, num_rows)
    packed = {}
    for k in keys:
        tokens = tf.gather(ragged[k], order)
        seq_len = tf.cast(tokens.row_lengths(), tf.int32)
        offset = _rank_within_group(seq_len, sorted_row, num_rows)
        seg = tf.cast(tokens.value_rowids(), tf.int32)
        pos = tf.range(tf.size(seg), dtype=tf.int32) - tf.gather(
            tf.cast(tokens.row_starts(), tf.int32), seg
        )
        where = tf.stack([tf.gather(sorted_row, seg), tf.gather(offset, seg) + pos], axis=1)
        shape = tf.stack([num_rows, feature_lengths[k]])
        packed[k] = tf.scatter_nd(where, tf.cast(tokens.flat_values, tf.int32), shape)
        packed[f"{k}_segment_ids"] = tf.scatter_nd(where, tf.gather(slot, seg) + 1, shape)
        packed[f"{k}_positions"] = tf.scatter_nd(where, pos, shape)
    return packed


def _rank_within_group(sizes: tf.Tensor, group: tf.Tensor, num_groups: tf.Tensor) -> tf.Tensor:
    """Exclusive cumulative sum of `sizes` restarting at each group ([n], groups contiguous)."""
    cum = tf.cumsum(sizes, exclusive=True)
    return cum - tf.gather(tf.math.unsorted_segment_min(cum, group, num_groups), group)


def trim_and_pack(
    ds: tf.data.Dataset,
    feature_lengths: Mapping[str, int],
    *,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
) -> tf.data.Dataset:
    """Drop-in for `seqio.utils.trim_and_pack_dataset`, packing by best fit decreasing.

    Features are packed jointly: an example goes into a row only if every feature fits. Each
    window of `buffer_size` examples is packed on its own (the last may be shorter), so the
    transformation streams, is deterministic and is a plain tf.data graph (checkpointable).

    Example (lengths {"inputs": 4, "targets": 3}): the inputs of the first two examples
    would share a row (2 + 2 <= 4) but their targets would not (2 + 2 > 3):

        {"inputs": [7, 1], "targets": [9, 1]}, {"inputs": [3, 1], "targets": [6, 1]}
      ->
        {"inputs": [7, 1, 0, 0], "inputs_segment_ids": [1, 1, 0, 0],
         "inputs_positions": [0, 1, 0, 0], "targets": [9, 1, 0],
         "targets_segment_ids": [1, 1, 0], "targets_positions": [0, 1, 0]}
        {"inputs": [3, 1, 0, 0], ..., "targets": [6, 1, 0], ...}

    Args:
      ds: examples with 1-D integer features named in `feature_lengths` (others are dropped).
      feature_lengths: packed length of each feature; longer sequences are truncated.
      buffer_size: examples considered together (more: fuller rows, more latency and memory).

    Returns:
      rows with `<k>`, `<k>_segment_ids`, `<k>_positions` ([length] int32) for each feature.
    """
    _validate(ds, feature_lengths, buffer_size)
    keys = list(feature_lengths)
    ds = ds.map(lambda ex: {k: ex[k] for k in keys}, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ragged_batch(buffer_size)
    ds = ds.map(
        lambda b: _pack_buffer(b, feature_lengths),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.unbatch()

    def set_shapes(row):
        for k, v in row.items():
            v.set_shape(
                [feature_lengths[k.removesuffix("_segment_ids").removesuffix("_positions")]]
            )
        return row

    return ds.map(set_shapes, num_parallel_calls=tf.data.AUTOTUNE)


class _BestFitPacking:
    """Replaces seqio's greedy `_pack_or_pad` of a FeatureConverter with `trim_and_pack`."""

    def __init__(self, *args, buffer_size: int = DEFAULT_BUFFER_SIZE, **kwargs) -> None:
        if buffer_size < 1:
            raise ValueError(
                f"buffer_size ({buffer_size}) must be >= 1; use e.g. {DEFAULT_BUFFER_SIZE}"
            )
        self._buffer_size = buffer_size
        super().__init__(*args, **kwargs)

    @property
    def buffer_size(self) -> int:
        return self._buffer_size

    def _pack_or_pad(
        self, ds: tf.data.Dataset, packed_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        if not self.pack:
            return super()._pack_or_pad(ds, packed_lengths)
        if self._passthrough_features:
            raise ValueError(
                f"passthrough_features {sorted(self._passthrough_features)} are not supported by "
                "best-fit packing; drop them or use the seqio converter"
            )
        return trim_and_pack(ds, packed_lengths, buffer_size=self._buffer_size)


class BestFitEncDecFeatureConverter(_BestFitPacking, seqio.EncDecFeatureConverter):
    """`seqio.EncDecFeatureConverter` with best-fit packing (`buffer_size=` examples at a time)."""


class BestFitLMFeatureConverter(_BestFitPacking, seqio.LMFeatureConverter):
    """`seqio.LMFeatureConverter` (targets only) with best-fit packing."""


class BestFitPrefixLMFeatureConverter(_BestFitPacking, seqio.PrefixLMFeatureConverter):
    """`seqio.PrefixLMFeatureConverter` (inputs + targets in one row) with best-fit packing."""


class BestFitDecoderFeatureConverter(seqio.DecoderFeatureConverter):
    """`seqio.DecoderFeatureConverter` (LM or prefix LM by task features) with best-fit packing."""

    def __init__(self, *, buffer_size: int = DEFAULT_BUFFER_SIZE, **kwargs) -> None:
        super().__init__(**kwargs)
        shared = dict(
            pack=self.pack,
            use_custom_packing_ops=self._use_custom_packing_ops,
            apply_length_check=self._apply_length_check,
            bos_id=self.bos_id,
            buffer_size=buffer_size,
        )
        self.prefixlm_feature_converter = BestFitPrefixLMFeatureConverter(
            loss_on_targets_only=self._loss_on_targets_only,
            passthrough_features=self._passthrough_features or None,
            **shared,
        )
        self.strictlm_feature_converter = BestFitLMFeatureConverter(**shared)
        self._buffer_size = buffer_size

    @property
    def buffer_size(self) -> int:
        return self._buffer_size


_BEST_FIT = {
    seqio.EncDecFeatureConverter: BestFitEncDecFeatureConverter,
    seqio.DecoderFeatureConverter: BestFitDecoderFeatureConverter,
    seqio.LMFeatureConverter: BestFitLMFeatureConverter,
    seqio.PrefixLMFeatureConverter: BestFitPrefixLMFeatureConverter,
}
_BY_KIND = {
    "enc_dec": BestFitEncDecFeatureConverter,
    "decoder": BestFitDecoderFeatureConverter,
    "prefix_lm": BestFitPrefixLMFeatureConverter,
    "lm": BestFitLMFeatureConverter,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackingConfig:
    """How the trainer packs rows.

    Attributes:
      method: "best_fit" (this module) or "greedy" (seqio's trim-and-pack).
      buffer_size: examples packed together by best fit.
    """

    method: str = "best_fit"
    buffer_size: int = DEFAULT_BUFFER_SIZE

    def __post_init__(self):
        if self.method not in ("best_fit", "greedy"):
            raise ValueError(f"PackingConfig.method {self.method!r} must be 'best_fit' or 'greedy'")
        if self.buffer_size < 1:
            raise ValueError(f"PackingConfig.buffer_size ({self.buffer_size}) must be >= 1")


def make_feature_converter(
    base_cls: type[seqio.FeatureConverter],
    *,
    pack: bool = True,
    config: PackingConfig = PackingConfig(),
    **kwargs,
) -> seqio.FeatureConverter:
    """The model's converter (`model.feature_converter_cls`), packed as `config` says.

    `make_feature_converter(seqio.EncDecFeatureConverter, pack=True)` is a
    `BestFitEncDecFeatureConverter(pack=True, buffer_size=1000)`; unpacked converters and
    `method="greedy"` give `base_cls(pack=pack)` unchanged. `kwargs` go to the converter
    (e.g. `apply_length_check=False`, `bos_id=0`).
    """
    if config.method == "greedy" or not pack:
        return base_cls(pack=pack, **kwargs)
    if issubclass(base_cls, (_BestFitPacking, BestFitDecoderFeatureConverter)):
        return base_cls(pack=pack, buffer_size=config.buffer_size, **kwargs)
    if base_cls not in _BEST_FIT:
        raise ValueError(
            f"no best-fit version of {base_cls.__name__}; supported: "
            f"{sorted(c.__name__ for c in _BEST_FIT)}; or use PackingConfig(method='greedy')"
        )
    return _BEST_FIT[base_cls](pack=pack, buffer_size=config.buffer_size, **kwargs)


def pack_dataset(
    ds: tf.data.Dataset,
    feature_lengths: Mapping[str, int],
    *,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    kind: str = "enc_dec",
) -> tf.data.Dataset:
    """Packs tokenized task examples into model rows: best fit, then seqio's conversion.

    Sequences longer than `feature_lengths` are truncated (seqio's converters would reject
    them: they expect the task to have trimmed them already).

    Args:
      ds: tokenized examples (`inputs`, `targets`), e.g. `mixture.get_dataset(...)`.
      feature_lengths: task feature lengths, e.g. {"inputs": 256, "targets": 64}.
      buffer_size: examples packed together.
      kind: "enc_dec" (EncDecFeatureConverter keys), "decoder" (DecoderFeatureConverter: prefix
        LM when `inputs` is in feature_lengths, else LM), "prefix_lm" or "lm".

    Returns:
      batches-to-be with exactly the keys, shapes and dtypes of the seqio converter of `kind`
      with `pack=True`, e.g. `encoder_input_tokens`, ..., `decoder_positions` for "enc_dec".
    """
    if kind not in _BY_KIND:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    converter = _BY_KIND[kind](pack=True, buffer_size=buffer_size, apply_length_check=False)
    return converter(ds, feature_lengths)


def count_tokens(rows, keys: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(non-pad tokens, slots) per feature over an iterable of numpy rows or batches.

    Efficiency is `tokens / slots`; a pad slot holds token 0 (seqio's padding), so rows of
    [7, 1, 0, 0] and [3, 1, 8, 1] give (6, 8).
    """
    totals = {k: [0, 0] for k in keys}
    for row in rows:
        for k in keys:
            totals[k][0] += int((row[k] != 0).sum())
            totals[k][1] += int(row[k].size)
    return {k: (a, b) for k, (a, b) in totals.items()}
