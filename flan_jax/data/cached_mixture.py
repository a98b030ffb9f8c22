"""One tf.data pipeline for a mixture read from seqio caches (USE_CACHED): the tasks' raw cached
records are mixed by the mixture's rates first, then parsed, preprocessed and trimmed once per
group of tasks that share their post-cache steps, so that start-up does not grow with the
number of traced functions per task (BENCHMARKS.md, "Mixture scale").

Per task the pipeline holds only a TFRecord reader over the task's cache files and a repeat
(no traced function, no shuffle buffer). E.g. a mixture of 2,000 zero-shot and few-shot
variants whose caches hold `inputs`/`targets` token ids (zero-shot) or rendered text (few-shot)
makes two groups, each mixed by rate, shuffled, parsed and preprocessed once, and mixed again:

    1,000 zero-shot readers -> mix -> shuffle -> parse -> EOS, trim ----------------+-> mix
    1,000 few-shot readers  -> mix -> shuffle -> parse -> prune, tokenize, EOS, trim -+

The stream is its own (seqio's `Mixture.get_dataset` mixes per-task pipelines with
`sample_from_datasets`): each task's records repeat file by file, each group's mixed
records go through a seeded shuffle buffer of `SHUFFLE_BUFFER` records, and task i is drawn
with probability rate_i / sum(rates). Given the seed it is deterministic, which is what the
trainer's data positions rely on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from flan_jax.data import cache

SHUFFLE_BUFFER = 10_000  # raw records per group; seqio shuffles 1,000 examples per task
READ_BUFFER_BYTES = 32 * 1024  # per task reader: 2,000 open readers hold 64 MiB
_UNIFORM_BITS = 32  # tf.data.Dataset.random yields uniform ints in [0, 2**32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Member:
    """A task of the mixture as the cache holds it.

    Attributes:
      task: the seqio task.
      rate: its mixing rate (the mixture's, unnormalised).
      files: its cache's TFRecord files of the split, in stored order.
      features: the cached features, as seqio's `info.<split>.json` lists them.
      examples: the number of cached examples of the split (all hosts).
    """

    task: seqio.Task
    rate: float
    files: tuple[str, ...]
    features: Mapping[str, Any]
    examples: int


def read_members(mixture: seqio.Mixture, split: str) -> list[Member]:
    """The mixture's tasks that have `split` and a positive rate, with their cache files.

    Raises:
      ValueError: a task has no cache of `split` (run `cache.check_cached` first for the message
        that names the command which builds it).
    """
    members = []
    for task in mixture.tasks:
        rate = float(mixture.get_rate(task))
        if split not in task.splits or rate <= 0:
            continue
        task_dir = task.cache_dir
        if task_dir is None:
            raise ValueError(
                f"task {task.name!r} of mixture {mixture.name!r} has no cache; build it with "
                f"`{cache.cache_command(mixture.name, None)}`"
            )
        with tf.io.gfile.GFile(seqio.utils.get_cached_info_path(task_dir, split)) as f:
            info = json.load(f)
        with tf.io.gfile.GFile(seqio.utils.get_cached_stats_path(task_dir, split)) as f:
            examples = int(json.load(f)["examples"])
        prefix = seqio.utils.get_cached_tfrecord_prefix(task_dir, split)
        n = int(info["num_shards"])
        files = tuple(f"{prefix}-{i:05d}-of-{n:05d}" for i in range(n))  # seqio's file names
        features = info["features"]
        if "seqio_version" not in info:  # caches older than seqio 0.0.0 stored int32 as int64
            features = {
                k: dict(v, dtype="int32" if v["dtype"] == "int64" else v["dtype"])
                for k, v in features.items()
            }
        if examples:
            members.append(
                Member(task=task, rate=rate, files=files, features=features, examples=examples)
            )
    if not members:
        raise ValueError(
            f"no task of mixture {mixture.name!r} has cached examples of split {split!r} with a "
            "positive rate; check the split name and the mixture's members"
        )
    return members


def _step_key(step: Any) -> Any:
    """A hashable stand-in for a preprocessing step, equal for steps that behave alike: a
    `functools.partial` by its function and arguments, anything else by identity."""
    key = step
    if isinstance(step, functools.partial):
        key = (step.func, step.args, tuple(sorted(step.keywords.items())))
    try:
        hash(key)
    except TypeError:
        return ("id", id(step))
    return key


def postcache_steps(task: seqio.Task) -> list[Any]:
    """The task's preprocessors after its `seqio.CacheDatasetPlaceholder`."""
    steps = list(task.preprocessors)
    marks = [i for i, s in enumerate(steps) if isinstance(s, seqio.CacheDatasetPlaceholder)]
    return steps[marks[0] + 1 :] if marks else steps


def group_key(member: Member) -> tuple:
    """Tasks with equal keys can share one parse + post-cache pipeline: the same cached
    features, post-cache steps and output features (vocabularies compared by their ids)."""
    features = tuple(
        (k, cache.vocabulary_fingerprint(f.vocabulary), f.add_eos, f.dtype.name, f.rank)
        for k, f in sorted(member.task.output_features.items())
    )
    steps = tuple(_step_key(s) for s in postcache_steps(member.task))
    return (json.dumps(member.features, sort_keys=True), steps, features)


def group_members(members: Sequence[Member]) -> list[list[Member]]:
    """`members` grouped by `group_key`, groups in order of their first member."""
    groups: dict[tuple, list[Member]] = {}
    for m in members:
        groups.setdefault(group_key(m), []).append(m)
    return list(groups.values())


def feature_description(features: Mapping[str, Any]) -> dict[str, Any]:
    """tf.io parsing specs for seqio's cached features (`info.<split>.json`).

    E.g. {"inputs": {"shape": [None], "dtype": "int32"}, "text": {"shape": [], "dtype":
    "string"}} -> {"inputs": FixedLenSequenceFeature([], int64, allow_missing=True), "text":
    FixedLenFeature([], string)}: integers and bools are stored as int64 in a tf.train.Example.
    """
    out = {}
    for key, desc in features.items():
        shape, dtype = list(desc["shape"]), desc["dtype"]
        dtype = "int64" if dtype in ("int32", "bool") else dtype
        if any(d is None for d in shape[1:]):
            raise ValueError(
                f"cached feature {key!r} has shape {shape} (ragged inner dimensions); the "
                "cached-mixture reader reads [None, ...] and fixed shapes only"
            )
        if shape and shape[0] is None:
            out[key] = tf.io.FixedLenSequenceFeature(shape[1:], dtype, allow_missing=True)
        else:
            out[key] = tf.io.FixedLenFeature(shape, dtype)
    return out


def records(member: Member, shard_info: seqio.ShardInfo | None) -> tf.data.Dataset:
    """A task's serialized cached examples, this host's share, repeated forever.

    Whole files per host when there are at least as many files as hosts, else every n-th
    record (as seqio shards a cache). One TFRecordDataset op over the file list: no traced
    function (`tf.data.TFRecordDataset` traces a flat_map per call).
    """
    files = list(member.files)
    shard_records = False
    if shard_info and shard_info.num_shards > 1:
        if len(files) >= shard_info.num_shards:
            files = files[shard_info.index :: shard_info.num_shards]
        else:
            shard_records = True
    variant = tf.raw_ops.TFRecordDataset(
        filenames=tf.constant(files, tf.string),
        compression_type="",
        buffer_size=tf.constant(READ_BUFFER_BYTES, tf.int64),
    )
    ds = tf.data.experimental.from_variant(variant, tf.TensorSpec([], tf.string))
    if shard_records:
        ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds.repeat()


def choose(datasets: Sequence[tf.data.Dataset], weights: Sequence[float], seed: int | None):
    """Each element from dataset i with probability weights[i] / sum(weights) (seeded).

    One traced function for any number of datasets: a uniform draw in [0, 1) looked up in the
    cumulative weights (O(log n) per element; tf.data's `sample_from_datasets` is O(n)).
    """
    if len(datasets) == 1:
        return datasets[0]
    w = np.asarray(weights, np.float64)
    cdf = np.cumsum(w) / w.sum()
    cdf[-1] = 1.0
    cdf_t = tf.constant(cdf, tf.float64)
    last = len(datasets) - 1

    def pick(r):
        u = tf.cast(r % (1 << _UNIFORM_BITS), tf.float64) / float(1 << _UNIFORM_BITS)  # [0, 1)
        i = tf.searchsorted(cdf_t, tf.reshape(u, [1]), side="right", out_type=tf.int64)[0]
        return tf.minimum(i, last)

    selector = tf.data.Dataset.random(seed=seed).map(pick)
    return tf.data.Dataset.choose_from_datasets(datasets, selector, stop_on_empty_dataset=False)


def _group_dataset(
    group: Sequence[Member],
    sequence_length: Mapping[str, int],
    keys: Sequence[str],
    *,
    shuffle: bool,
    seed: int | None,
    shard_info: seqio.ShardInfo | None,
) -> tf.data.Dataset:
    """A group's records mixed by rate, then parsed, preprocessed and trimmed once."""
    raw = choose([records(m, shard_info) for m in group], [m.rate for m in group], seed)
    if shuffle:
        raw = raw.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    task, features = group[0].task, group[0].features
    description = feature_description(features)

    def parse(record):
        ex = tf.io.parse_single_example(record, description)
        return {k: tf.cast(v, features[k]["dtype"]) for k, v in ex.items()}

    ds = raw.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = task.preprocess_postcache(ds, sequence_length=dict(sequence_length), seed=seed)
    ds = seqio.utils.trim_dataset(ds, dict(sequence_length), task.output_features)
    return ds.map(lambda ex: {k: ex[k] for k in keys if k in ex})


def get_dataset(
    mixture: seqio.Mixture,
    sequence_length: Mapping[str, int],
    *,
    split: str = "train",
    shuffle: bool = True,
    seed: int | None = None,
    shard_info: seqio.ShardInfo | None = None,
) -> tf.data.Dataset:
    """The mixture's examples from its caches, repeated forever (what `Mixture.get_dataset`
    gives with use_cached=True and num_epochs=None, as a different stream).

    Args:
      mixture: a seqio mixture whose tasks all have current caches (`cache.use_caches`).
      sequence_length: e.g. {"inputs": 512, "targets": 114}; features are trimmed to it.
      split: the cached split to read.
      shuffle: shuffle each group's mixed records (a buffer of `SHUFFLE_BUFFER`).
      seed: seeds task sampling and shuffling; None draws a fresh stream. Unshuffled streams
        default to seed 42, as seqio's mixtures do.
      shard_info: this host's share (whole files when a task has enough, else every n-th).

    Returns:
      Examples with the mixture's output features (e.g. `inputs`, `targets`: int32 [length]).
    """
    if seed is None and not shuffle:
        seed = 42
    members = read_members(mixture, split)
    groups = group_members(members)
    keys = sorted(mixture.output_features)
    datasets = [
        _group_dataset(
            group,
            sequence_length,
            keys,
            shuffle=shuffle,
            seed=None if seed is None else seed + 1 + i,
            shard_info=shard_info,
        )
        for i, group in enumerate(groups)
    ]
    return choose(datasets, [sum(m.rate for m in g) for g in groups], seed)
