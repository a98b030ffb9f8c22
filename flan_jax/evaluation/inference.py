"""Batched scoring, rank classification and decoding of token rows; a model's parameters.

The layer under flan_jax.evaluation.evaluate, flan_jax.evaluation.infer and
flan_jax.cli.generate: rows of token ids in, one jitted forward pass or decode per batch.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import jax
import numpy as np
import seqio
import tensorflow as tf
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from flan_jax import convert, partitioning
from flan_jax.checkpoints import manager as checkpoints
from flan_jax.data import cache
from flan_jax.model.decoding import DecodeConfig
from flan_jax.partitioning import logical_to_mesh_spec
from flan_jax.types import HostBatch


class Model(Protocol):
    """What evaluation needs of flan_jax.model.models.EncoderDecoderModel / DecoderOnlyModel."""

    feature_converter_cls: type[seqio.FeatureConverter]

    def score_batch(self, params: Any, batch: HostBatch) -> jax.Array: ...

    def predict_batch(
        self, params: Any, batch: HostBatch, rng=None, *, decode: DecodeConfig
    ) -> jax.Array: ...


# ----------------------------------------------------------------------------- batching


EVAL_SPLITS = ("validation", "test")  # a task's own eval split: the first of these it has


def task_split(task: seqio.Task, split: str | None) -> str:
    """The split to evaluate `task` on: `split` if given, else its own (validation, else test).

    Benchmarks have only a test split (MMLU, BBH, GSM8K) and FLAN tasks a validation split,
    so a mixture of both is evaluated without naming a split.

    Raises:
      ValueError naming the task's splits when it lacks `split` (or has no eval split).
    """
    splits = list(task.splits)
    if split is None:
        own = [s for s in EVAL_SPLITS if s in splits]
        if own or not splits:  # a source that declares no splits takes any name
            return own[0] if own else EVAL_SPLITS[0]
        raise ValueError(
            f"task {task.name!r} has no validation or test split (it has {splits}); name one "
            "with --gin.EVAL_SPLIT (eval) or --gin.INFER_SPLIT (infer)"
        )
    if splits and split not in splits:
        raise ValueError(
            f"task {task.name!r} has no split {split!r}; it has {splits}. Leave EVAL_SPLIT / "
            "INFER_SPLIT unset (None) to use each task's own eval split"
        )
    return split


def load_examples(
    task: seqio.Task,
    split: str | None,
    feature_lengths: dict[str, int],
    max_examples: int | None,
    *,
    use_cached: bool = False,
    cache_dir: str | None = None,
) -> list[dict]:
    """The task's examples (tokenized, trimmed to `feature_lengths`) as numpy dicts, in order.

    `split` None: the task's own eval split (`task_split`). `use_cached`: read the task's
    `flan-jax cache` folder (`cache_dir`); a missing or stale cache is a ValueError.
    """
    split = task_split(task, split)
    if use_cached:
        cache.use_caches(task.name, cache_dir, [split])
    ds = task.get_dataset(
        feature_lengths,
        split=split,
        shuffle=False,
        num_epochs=1,
        use_cached=use_cached,
    )
    if max_examples is not None:
        ds = ds.take(max_examples)
    return list(ds.as_numpy_iterator())


def as_text(value: Any) -> str:
    """A tf.string value (bytes) as str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def model_batches(
    model: Model, rows: Sequence[dict], feature_lengths: dict[str, int], batch_size: int
) -> Iterator[tuple[HostBatch, int]]:
    """Converts {inputs, targets} token rows with the model's feature converter (no packing).

    Yields:
      (batch of exactly `batch_size` rows, number of real rows); the last batch is padded
      with all-zero rows, which score 0 and are dropped by the caller.
    """
    lengths = {k: feature_lengths[k] for k in ("inputs", "targets")}
    spec = tf.TensorSpec([None], tf.int32)
    ds = tf.data.Dataset.from_generator(
        lambda: (
            {
                "inputs": np.asarray(r["inputs"], np.int32),
                "targets": np.asarray(r["targets"], np.int32),
            }
            for r in rows
        ),
        output_signature={"inputs": spec, "targets": spec},
    )
    converted = model.feature_converter_cls(pack=False)(ds, lengths)
    for batch in converted.batch(batch_size).as_numpy_iterator():
        n = len(next(iter(batch.values())))
        if n < batch_size:
            batch = {
                k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)])
                for k, v in batch.items()
            }
        yield batch, n


def _check_batch_size(batch_size: int, mesh: Mesh | None) -> None:
    if mesh is None:
        return
    ways = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    if batch_size % ways:
        raise ValueError(
            f"eval batch_size ({batch_size}) must be divisible by data*fsdp ({ways}) of mesh "
            f"{dict(mesh.shape)}; pick a multiple of {ways}"
        )


def _place(batch: HostBatch, mesh: Mesh | None) -> HostBatch:
    if mesh is None:
        return batch
    sharding = NamedSharding(mesh, logical_to_mesh_spec(("activation_batch",)))
    return {k: jax.device_put(v, sharding) for k, v in batch.items()}


def place_params(params: Any, mesh: Mesh | None) -> Any:
    """Replicates params that live on one device onto `mesh` (sharded params stay as they are)."""
    if mesh is None:
        return params
    replicated = NamedSharding(mesh, PartitionSpec())

    def put(x):
        on_one = not isinstance(x, jax.Array) or len(x.sharding.device_set) == 1
        return jax.device_put(x, replicated) if on_one else x

    return jax.tree.map(put, params)


# ----------------------------------------------------------------------------- modes


@functools.lru_cache(maxsize=32)
def jitted_score(model: Model):
    """`jax.jit(model.score_batch)`, compiled once per model (a bound method is new each time)."""
    return jax.jit(model.score_batch)


@functools.lru_cache(maxsize=32)
def jitted_predict(model: Model, decode: DecodeConfig):
    """`predict(params, batch, rng)` jitted once per (model, decode config)."""
    return jax.jit(lambda p, b, r: model.predict_batch(p, b, r, decode=decode))


def score_rows(
    model: Model,
    params: Any,
    rows: Sequence[dict],
    feature_lengths: dict[str, int],
    *,
    batch_size: int,
    mesh: Mesh | None = None,
    length_normalize: bool = False,
    score_fn=None,
) -> np.ndarray:
    """Summed (or, with `length_normalize`, mean) target log-likelihood per {inputs, targets} row.

    Returns:
      [len(rows)] float32 scores, one forward pass per batch of `batch_size` rows.
    """
    _check_batch_size(batch_size, mesh)
    score_fn = score_fn or jitted_score(model)
    out = []
    for batch, n in model_batches(model, rows, feature_lengths, batch_size):
        scores = np.asarray(jax.device_get(score_fn(params, _place(batch, mesh))), np.float32)
        if length_normalize:
            scores = scores / np.maximum(batch["decoder_loss_weights"].sum(axis=1), 1)
        out.append(scores[:n])
    return np.concatenate(out) if out else np.zeros([0], np.float32)


def rank_classify(
    model: Model,
    params: Any,
    examples: Sequence[dict],
    vocab: seqio.Vocabulary,
    feature_lengths: dict[str, int],
    *,
    batch_size: int,
    length_normalize: bool = False,
    mesh: Mesh | None = None,
) -> list[tuple[str, list[float]]]:
    """FLAN's classification protocol: score every option given the input, pick the best.

    Returns:
      per example (chosen option string, [score of each option]).

    Raises:
      ValueError: an example has an empty `options` list (an inverted template's example).
    """
    rows, owners = [], []
    max_target = feature_lengths["targets"]
    for i, ex in enumerate(examples):
        if len(ex["options"]) == 0:
            raise ValueError(
                f"example {i} has an empty `options` list (input: "
                f"{as_text(ex.get('inputs_pretokenized', ''))[:80]!r}); rank classification "
                "needs at least one option. Inverted templates carry none: score such examples "
                "by generation (flan_jax.evaluation.evaluate.evaluate_task does)"
            )
        for option in ex["options"]:
            ids = list(vocab.encode(as_text(option)))[: max_target - 1] + [vocab.eos_id]
            rows.append({"inputs": ex["inputs"], "targets": ids})
            owners.append(i)
    scores = score_rows(
        model,
        params,
        rows,
        feature_lengths,
        batch_size=batch_size,
        mesh=mesh,
        length_normalize=length_normalize,
    )
    per_example: list[list[float]] = [[] for _ in examples]
    for owner, score in zip(owners, scores):
        per_example[owner].append(float(score))
    out = []
    for ex, option_scores in zip(examples, per_example):
        best = int(np.argmax(option_scores))
        out.append((as_text(ex["options"][best]), option_scores))
    return out


def decode_tokens(tokens: np.ndarray, vocab: seqio.Vocabulary) -> str:
    """Text of one decoded row, cut at the first EOS (pad 0 dropped)."""
    ids = [int(t) for t in tokens]
    if vocab.eos_id in ids:
        ids = ids[: ids.index(vocab.eos_id)]
    return vocab.decode([t for t in ids if t != 0])


def generate(
    model: Model,
    params: Any,
    examples: Sequence[dict],
    vocab: seqio.Vocabulary,
    feature_lengths: dict[str, int],
    decode: DecodeConfig,
    *,
    batch_size: int,
    mesh: Mesh | None = None,
    rng: jax.Array | None = None,
) -> list[str]:
    """Decoded text per example (`decode.num_samples` must be 1; sample k times for more)."""
    _check_batch_size(batch_size, mesh)
    predict = jitted_predict(model, decode)
    rng = jax.random.key(0) if rng is None else rng
    rows = [{"inputs": ex["inputs"], "targets": ex["targets"]} for ex in examples]
    texts = []
    for i, (batch, n) in enumerate(model_batches(model, rows, feature_lengths, batch_size)):
        tokens = np.asarray(
            jax.device_get(predict(params, _place(batch, mesh), jax.random.fold_in(rng, i)))
        )
        if tokens.ndim == 3:  # [batch, num_decodes, length]: the best (first) decode
            tokens = tokens[:, 0]
        texts.extend(decode_tokens(row, vocab) for row in tokens[:n])
    return texts


# ----------------------------------------------------------------------------- parameters


def restore_params(model: Any, path: str, mesh: Mesh | None = None) -> tuple[Any, int]:
    """Parameters of `model` from a checkpoint, and its step.

    Args:
      model: an EncoderDecoderModel / DecoderOnlyModel (its config must match the checkpoint).
      path: a flan_jax MODEL_DIR, checkpoints dir or step dir (the latest step is used), or a
        converted / Hugging Face / T5X checkpoint (`flan_jax.convert.load_params`).
      mesh: place parameters with the model's logical shardings on it (None: one device).

    Returns:
      (params, step): unboxed params on `mesh` (or the first device) and `checkpoint_step`.
    """
    shapes = {"encoder_input_tokens": (1, 1), "decoder_input_tokens": (1, 1)}
    if mesh is None:
        device = SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, model.param_shapes(shapes))
    else:
        boxed = jax.eval_shape(lambda r: model.get_initial_variables(r, shapes), jax.random.key(0))[
            "params"
        ]
        shardings = partitioning.params_shardings(boxed, mesh)
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        model.param_shapes(shapes),
        shardings,
    )
    params = checkpoints.load_initial_params(
        os.path.expanduser(path), abstract, read_other=convert.load_params
    )
    return nn.unbox(params), checkpoints.checkpoint_step(path)
