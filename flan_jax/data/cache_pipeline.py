"""The Apache Beam pipeline behind `flan-jax cache`: preprocess tasks (seqio's pre-cache steps,
one unit of work per source shard) and write seqio's cache layout (TFRecords of tf.Examples,
`info.<split>.json`, `stats.<split>.json`, `COMPLETED`) in the stored order of the examples,
plus a flan_jax fingerprint per task. Needs the `beam` extra (`pip install 'flan_jax[beam]'`).

One graph for any number of tasks: (task, split, source shard) -> examples keyed by output file
-> one writer per file -> per-split info and stats. (seqio's own `cache_tasks_main` adds ~30
transforms per split, which dominates small tasks and grows with the mixture.)

Order: seqio reads an unshuffled cache by interleaving its files in blocks of 16 examples
(`_CachedDataSource`: cycle_length=16, block_length=16). Example k of a split (k-th in stored
order) goes to file (k // 16) % num_shards, each file sorted by k, so that with at most 16 files
the cache reads back in stored order, as the on-the-fly task does with shuffle off.
E.g. 40 examples in 2 files: file 0 holds 0-15 and 32-39, file 1 holds 16-31.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import seqio
import tensorflow as tf

from flan_jax.data import cache as cache_lib

READ_BLOCK = 16  # seqio's block_length and cycle_length when reading a cache
MAX_SHARDS = READ_BLOCK  # more files than the cycle and the unshuffled read order changes

Unit = tuple[str, str, int, int]  # (task, split, source shard, number of source shards)


def shard_path(prefix: str, shard: int, num_shards: int) -> str:
    """seqio's cached file name: PREFIX-00001-of-00004."""
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}"


class _Preprocess(beam.DoFn):
    """(task, split, shard i of n) -> ((task, split, output file), (position, example)).

    RenderedSource shard i of n holds rows i, i+n, ...: its row j is row j*n + i of the split.
    """

    def __init__(self, setup_fn: Callable[[], None], num_files: int):
        self._setup_fn, self._num_files = setup_fn, num_files

    def setup(self):
        self._setup_fn()

    def process(self, unit: Unit) -> Iterator[tuple[tuple[str, str, int], tuple[int, dict]]]:
        name, split, shard, num_source_shards = unit
        task = seqio.get_mixture_or_task(name)
        info = seqio.ShardInfo(index=shard, num_shards=num_source_shards)
        ds = task.source.get_dataset(split=split, shuffle=False, shard_info=info)
        ds = task.preprocess_precache(ds)
        for j, ex in enumerate(ds.as_numpy_iterator()):
            position = j * num_source_shards + shard
            file = (position // READ_BLOCK) % self._num_files
            yield (name, split, file), (position, {k: np.asarray(v) for k, v in ex.items()})


def feature_info(ex: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """seqio's `info.<split>.json` features: {"inputs": {"shape": [None], "dtype": "int32"}}."""
    info = {}
    for key, value in ex.items():
        dtype = "string" if value.dtype.kind in "SUO" else value.dtype.name
        shape = [None, *value.shape[1:]] if value.ndim else []
        info[key] = {"shape": shape, "dtype": dtype}
    return info


def token_stats(ex: Mapping[str, np.ndarray], features: Mapping[str, seqio.Feature]) -> dict:
    """seqio's stats of one example: tokens other than EOS and padding, per integer feature."""
    stats = {"examples": 1}
    for key, feature in features.items():
        value = ex.get(key)
        if value is None or value.dtype.kind not in "iu":
            continue
        keep = np.ones(value.shape, bool)
        for special in (feature.vocabulary.eos_id, feature.vocabulary.pad_id):
            if special is not None:
                keep &= value != special
        stats[f"{key}_tokens"] = int(keep.sum())
        stats[f"{key}_max_tokens"] = int(keep.sum())
    return stats


def merge_stats(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    """Sums counts, keeps the larger `*_max_tokens`."""
    out = dict(a)
    for key, value in b.items():
        if key.endswith("_max_tokens"):
            out[key] = max(out.get(key, 0), value)
        else:
            out[key] = out.get(key, 0) + value
    return out


class _WriteFile(beam.DoFn):
    """Writes one output file (its examples sorted by position); yields the split's key with
    the file's stats and the features of its first example."""

    def __init__(self, output_dir: str, num_files: int, setup_fn: Callable[[], None]):
        self._output_dir, self._num_files, self._setup_fn = output_dir, num_files, setup_fn

    def setup(self):
        self._setup_fn()

    def process(self, element):
        (name, split, file), keyed = element
        features = seqio.get_mixture_or_task(name).output_features
        task_dir = cache_lib.task_cache_dir(self._output_dir, name)
        prefix = seqio.get_cached_tfrecord_prefix(task_dir, split)
        stats, info = {"examples": 0}, None
        with tf.io.TFRecordWriter(shard_path(prefix, file, self._num_files)) as writer:
            for _, ex in sorted(keyed, key=lambda kv: kv[0]):
                writer.write(seqio.dict_to_tfexample(ex).SerializeToString())
                stats = merge_stats(stats, token_stats(ex, features))
                info = info or feature_info(ex)
        yield (name, split), (stats, info)


def _merge_files(parts):
    stats, info = {"examples": 0}, None
    for part_stats, part_info in parts:
        stats, info = merge_stats(stats, part_stats), info or part_info
    return stats, info


def _write_split(element, *, output_dir: str, num_files: int) -> str:
    (name, split), (stats, info) = element
    task_dir = cache_lib.task_cache_dir(output_dir, name)
    record = {"num_shards": num_files, "features": info, "seqio_version": seqio.__version__}
    with tf.io.gfile.GFile(seqio.get_cached_info_path(task_dir, split), "w") as f:
        f.write(json.dumps(record, indent=2, sort_keys=True))
    with tf.io.gfile.GFile(seqio.get_cached_stats_path(task_dir, split), "w") as f:
        f.write(json.dumps(stats, indent=2, sort_keys=True))
    return task_dir


def finish_task(task: seqio.Task, task_dir: str, num_files: int) -> None:
    """After the pipeline ran: empty files for output files that got no example (so that every
    file seqio expects exists), the fingerprint, then COMPLETED (what seqio looks for)."""
    for split in task.splits:
        prefix = seqio.get_cached_tfrecord_prefix(task_dir, split)
        for shard in range(num_files):
            path = shard_path(prefix, shard, num_files)
            if not tf.io.gfile.exists(path):
                with tf.io.TFRecordWriter(path):
                    pass
        if not tf.io.gfile.exists(seqio.get_cached_info_path(task_dir, split)):
            raise ValueError(
                f"split {split!r} of task {task.name!r} has no examples; a cache cannot be read "
                "back without one (drop the split from the spec)"
            )
    cache_lib.write_fingerprint(task_dir, task)
    with tf.io.gfile.GFile(os.path.join(task_dir, "COMPLETED"), "w") as f:
        f.write("")


def run(
    tasks: Sequence[seqio.Task],
    output_dir: str,
    *,
    pipeline_args: Sequence[str],
    num_shards: int,
    setup_fn: Callable[[], None] = lambda: None,
) -> list[str]:
    """Caches `tasks` (every split) into `output_dir` on Beam; returns the task folders.

    `num_shards` is the number of TFRecord files per split (1..16); `pipeline_args` are Beam's
    (`--runner=DirectRunner`, Dataflow's --project, ...); `setup_fn` runs once per worker before
    it looks tasks up (the caller's registration; picklable: a module-level function).
    """
    if not 1 <= num_shards <= MAX_SHARDS:
        raise ValueError(f"num_shards ({num_shards}) must be in 1..{MAX_SHARDS}")
    units: list[Unit] = []
    task_dirs = [cache_lib.task_cache_dir(output_dir, t.name) for t in tasks]
    for task, task_dir in zip(tasks, task_dirs):
        tf.io.gfile.makedirs(task_dir)
        for split in task.splits:
            n = len(task.source.list_shards(split))
            units += [(task.name, split, i, n) for i in range(n)]
    options = beam.options.pipeline_options.PipelineOptions(list(pipeline_args))
    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | "units" >> beam.Create(units)
            | "reshuffle_units" >> beam.Reshuffle()  # spread the source shards over workers
            | "preprocess" >> beam.ParDo(_Preprocess(setup_fn, num_shards))
            | "by_file" >> beam.GroupByKey()
            | "write_files" >> beam.ParDo(_WriteFile(output_dir, num_shards, setup_fn))
            | "by_split" >> beam.GroupByKey()
            | "merge" >> beam.MapTuple(lambda key, parts: (key, _merge_files(parts)))
            | "write_split"
            >> beam.Map(
                functools.partial(_write_split, output_dir=output_dir, num_files=num_shards)
            )
        )
    for task, task_dir in zip(tasks, task_dirs):
        finish_task(task, task_dir, num_shards)
    return task_dirs
