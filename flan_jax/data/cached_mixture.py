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
    `functools.partial` by its function and arguments, the cache placeholder by its settings,
    anything else by identity."""
    key = step
    if isinstance(step, seqio.CacheDatasetPlaceholder):
        key = ("cache", step.required, step.file_shuffle_buffer_size)
    elif isinstance(step, functools.partial):
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


def pipeline_key(task: seqio.Task, stored: Any, steps: Sequence[Any] | None = None) -> tuple:
    """Tasks with equal keys can share one pipeline: the same stored features (`stored`: a
    cache's feature listing, or an in-process element spec), the same `steps` (default: the
    post-cache steps) and output features (vocabularies compared by their ids)."""
    features = tuple(
        (k, cache.vocabulary_fingerprint(f.vocabulary), f.add_eos, f.dtype.name, f.rank)
        for k, f in sorted(task.output_features.items())
    )
    steps = postcache_steps(task) if steps is None else steps
    return (stored, tuple(_step_key(s) for s in steps), features)


def group_key(member: Member) -> tuple:
    """`pipeline_key` of a cached member: tasks with equal keys share one parse + post-cache
    pipeline."""
    return pipeline_key(member.task, json.dumps(member.features, sort_keys=True))


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


def _finish_group(
    raw: tf.data.Dataset,
    task: seqio.Task,
    sequence_length: Mapping[str, int],
    keys: Sequence[str],
    *,
    shuffle: bool,
    seed: int | None,
    parse=None,
    precache: bool = False,
) -> tf.data.Dataset:
    """A group's mixed examples (or records, with `parse`) shuffled once, then preprocessed
    after the cache step (and before it, with `precache`: raw source examples, finished by the
    source) and trimmed once, with `task`'s steps (every member's are equal)."""
    if shuffle:
        raw = raw.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    ds = raw
    if parse is not None:
        ds = raw.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if precache:
        ds = task.preprocess_precache(task.source.finish(ds), seed=seed)
    ds = task.preprocess_postcache(ds, sequence_length=dict(sequence_length), seed=seed)
    ds = seqio.utils.trim_dataset(ds, dict(sequence_length), task.output_features)
    return ds.map(lambda ex: {k: ex[k] for k in keys if k in ex})


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
    features = group[0].features
    description = feature_description(features)

    def parse(record):
        ex = tf.io.parse_single_example(record, description)
        return {k: tf.cast(v, features[k]["dtype"]) for k, v in ex.items()}

    return _finish_group(
        raw, group[0].task, sequence_length, keys, shuffle=shuffle, seed=seed, parse=parse
    )


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


# --- in process: the same one-pipeline design without caches ---------------------------------


def reads_raw(task: seqio.Task) -> bool:
    """Whether the task's source is read raw in process (a flan_jax `RenderedSource`: examples
    rendered in memory, `raw_dataset` + `finish`), leaving all preprocessing to its group."""
    return callable(getattr(task.source, "raw_dataset", None))


def task_stream(
    task: seqio.Task,
    split: str,
    *,
    shuffle: bool,
    seed: int | None,
    shard_info: seqio.ShardInfo | None,
) -> tf.data.Dataset:
    """A task's examples, this host's share, repeated forever, as its group mixes them.

    A flan_jax source (`reads_raw`) gives its raw examples: no traced function per task, as
    the source's `finish` and the task's preprocessors run once per group. Any other source
    gives what seqio's `Task.get_dataset` reads before the post-cache steps. Sources are read
    and sharded as seqio reads them (`shuffle` and `seed` passed on; at the source when it lists
    enough shards, else every n-th example). No per-task shuffle buffer or prefetch thread,
    except for a source that streams (a TFDS split: `RenderedSource.shuffles_splits` False, or
    any other seqio source): it keeps the task's own buffer after the repeat, as seqio's.
    """
    source = task.source
    raw = reads_raw(task)
    read = source.raw_dataset if raw else source.get_dataset
    hosts = shard_info.num_shards if shard_info else 1
    at_source = source.supports_arbitrary_sharding or (
        hosts > 1 and len(source.list_shards(split=split)) >= hosts
    )
    if at_source and hosts > 1:
        ds = read(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info)
    else:
        ds = read(split=split, shuffle=shuffle, seed=seed)
        if hosts > 1:
            ds = ds.shard(hosts, shard_info.index)
    if not raw:
        ds = task.preprocess_precache(ds, seed=seed)
    ds = ds.repeat()
    buffer = task.shuffle_buffer_size
    if shuffle and buffer and not getattr(source, "shuffles_splits", False):
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return ds


def get_in_process_dataset(
    mixture: seqio.Mixture,
    sequence_length: Mapping[str, int],
    *,
    split: str = "train",
    shuffle: bool = True,
    seed: int | None = None,
    shard_info: seqio.ShardInfo | None = None,
) -> tf.data.Dataset:
    """The mixture's examples preprocessed in process, repeated forever, as one pipeline: each
    task's `task_stream`, mixed by rate within groups of tasks that share their steps and
    element spec, each group shuffled (a buffer of `SHUFFLE_BUFFER`), preprocessed and trimmed
    once, and the groups mixed again (the design of `get_dataset`, with examples in place of
    cached records). E.g. 2,000 zero-shot and few-shot variants of flan_jax specs:

        1,000 zero-shot sources -> mix -> shuffle -> densify, tokenize, EOS, trim ---------+-> mix
        1,000 few-shot sources  -> mix -> shuffle -> densify, prune, tokenize, EOS, trim --+

    seqio's `Mixture.get_dataset` gives each task a full pipeline: its traced preprocessing, a
    1,000-example shuffle buffer after the repeat and a prefetch thread, which a 500-task mixture
    fills with 500,000 examples before it settles (BENCHMARKS.md, "Mixture scale"). Here traced
    functions and shuffle buffers are per group (a few), not per task, and tf.data's default
    graph rewrites are off (their cost grows with the examples held in the graph). The stream
    is its own; given the seed it is deterministic. Arguments as `get_dataset`.
    """
    if seed is None and not shuffle:
        seed = 42
    members = [
        (task, float(mixture.get_rate(task)))
        for task in mixture.tasks
        if split in task.splits and mixture.get_rate(task) > 0
    ]
    if not members:
        raise ValueError(
            f"no task of mixture {mixture.name!r} has split {split!r} with a positive rate; "
            "check the split name and the mixture's members"
        )
    groups: dict[tuple, list[tuple[seqio.Task, float, tf.data.Dataset]]] = {}
    for task, rate in members:
        ds = task_stream(task, split, shuffle=shuffle, seed=seed, shard_info=shard_info)
        if reads_raw(task):  # every step runs in the group, after the source's finish
            key = pipeline_key(
                task, (repr(ds.element_spec), task.source.finish), task.preprocessors
            )
        else:
            key = pipeline_key(task, repr(ds.element_spec))
        groups.setdefault(key, []).append((task, rate, ds))
    keys = sorted(mixture.output_features)
    datasets = []
    for i, group in enumerate(groups.values()):
        group_seed = None if seed is None else seed + 1 + i
        task = group[0][0]
        raw = choose([ds for _, _, ds in group], [r for _, r, _ in group], group_seed)
        datasets.append(
            _finish_group(
                raw,
                task,
                sequence_length,
                keys,
                shuffle=shuffle,
                seed=group_seed,
                precache=reads_raw(task),
            )
        )
    ds = choose(datasets, [sum(r for _, r, _ in g) for g in groups.values()], seed)
    # tf.data's default graph rewrites run over the whole pipeline's graph when its iterator is
    # made, and in process that graph holds every task's rendered examples as constants: at
    # 2,000 tasks they took 26 of the 65 CPU-s to the first batch, for no gain in the steady
    # rate (BENCHMARKS.md, "Mixture scale"). Options apply to the whole pipeline.
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    return ds.with_options(options)
