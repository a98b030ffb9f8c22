"""The Apache Beam pipeline behind `flan-jax cache`: preprocess tasks with seqio's
`beam_utils.PreprocessTask` (one unit of work per source shard) and write seqio's cache layout,
in the stored order of the examples, plus a flan_jax fingerprint per task.

Needs the `beam` extra (`pip install 'flan_jax[beam]'`).

Order: seqio reads an unshuffled cache by interleaving its files in blocks of 16 examples
(`_CachedDataSource`: cycle_length=16, block_length=16). Example k of a split (k-th in stored
order) goes to file (k // 16) % num_shards, files sorted by k, so that with at most 16 files the
cache reads back in stored order, exactly as the on-the-fly task does with shuffle off.
E.g. 40 examples in 2 files: file 0 holds 0-15 and 32-39, file 1 holds 16-31.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import seqio
import tensorflow as tf
from seqio import beam_utils

from flan_jax.data import cache as cache_lib

READ_BLOCK = 16  # seqio's block_length and cycle_length when reading a cache
MAX_SHARDS = READ_BLOCK  # more files than the cycle and the unshuffled read order changes


def register_specs(spec_dirs: Sequence[str]) -> None:
    """Registers flan_jax's tasks and the spec folders `spec_dirs` (on every Beam worker)."""
    import flan_jax.registry as registry  # noqa: PLC0415  (only workers that get here)

    for folder in spec_dirs:
        registry.register_dir(folder)


def _keyed(ex: Mapping[str, Any], num_source_shards: int) -> tuple[int, dict[str, Any]]:
    """(position in stored order, example as numpy without provenance).

    RenderedSource shard i of n holds rows i, i+n, ...: row j of shard i is row j*n + i.
    """
    shard = int(ex[beam_utils.SOURCE_SHARD_ID_PROVENANCE_KEY])
    index = int(ex[beam_utils.ID_WITHIN_SHARD_PROVENANCE_KEY])
    features = {
        k: np.asarray(v.numpy() if hasattr(v, "numpy") else v)
        for k, v in ex.items()
        if not k.startswith(beam_utils.PROVENANCE_PREFIX)
    }
    return index * num_source_shards + shard, features


class _WriteShard(beam.DoFn):
    """Writes one output file: its examples sorted by stored position, as tf.Examples."""

    def __init__(self, prefix: str, num_shards: int):
        self._prefix, self._num_shards = prefix, num_shards

    def process(self, element):
        shard, keyed = element
        path = shard_path(self._prefix, shard, self._num_shards)
        with tf.io.TFRecordWriter(path) as writer:
            for _, ex in sorted(keyed, key=lambda kv: kv[0]):
                writer.write(seqio.dict_to_tfexample(ex).SerializeToString())
        yield path


def shard_path(prefix: str, shard: int, num_shards: int) -> str:
    """seqio's cached file name: PREFIX-00001-of-00004."""
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}"


def add_split(
    pipeline: beam.Pipeline,
    task: seqio.Task,
    split: str,
    task_dir: str,
    *,
    num_shards: int,
    setup_fn=lambda: None,
) -> None:
    """Adds the steps that cache one split of `task` into `task_dir`."""
    label = f"{task.name}_{split}"
    preprocess = beam_utils.PreprocessTask(task, split, add_provenance=True, setup_fn=setup_fn)
    num_source_shards = len(preprocess.shards)
    prefix = seqio.get_cached_tfrecord_prefix(task_dir, split)
    examples = (
        pipeline
        | f"{label}_preprocess" >> preprocess
        | f"{label}_key" >> beam.Map(_keyed, num_source_shards=num_source_shards)
    )
    _ = (
        examples
        | f"{label}_by_file" >> beam.Map(lambda kv: ((kv[0] // READ_BLOCK) % num_shards, kv))
        | f"{label}_group" >> beam.GroupByKey()
        | f"{label}_write" >> beam.ParDo(_WriteShard(prefix, num_shards))
    )
    features = examples | f"{label}_values" >> beam.Values()
    _ = (
        features
        | f"{label}_info" >> beam_utils.GetInfo(num_shards)
        | f"{label}_write_info" >> beam_utils.WriteJson(seqio.get_cached_info_path(task_dir, split))
    )
    _ = (
        features
        | f"{label}_stats" >> beam_utils.GetStats(task.output_features)
        | f"{label}_write_stats"
        >> beam_utils.WriteJson(seqio.get_cached_stats_path(task_dir, split))
    )


def finish_task(task: seqio.Task, task_dir: str, num_shards: int) -> None:
    """After the pipeline ran: empty files for output shards that got no example (so that every
    file seqio expects exists), the fingerprint, then COMPLETED (what seqio looks for)."""
    for split in task.splits:
        prefix = seqio.get_cached_tfrecord_prefix(task_dir, split)
        for shard in range(num_shards):
            path = shard_path(prefix, shard, num_shards)
            if not tf.io.gfile.exists(path):
                with tf.io.TFRecordWriter(path):
                    pass
    cache_lib.write_fingerprint(task_dir, task)
    with tf.io.gfile.GFile(os.path.join(task_dir, "COMPLETED"), "w") as f:
        f.write("")


def run(
    tasks: Sequence[seqio.Task],
    output_dir: str,
    *,
    pipeline_args: Sequence[str],
    num_shards: int,
    spec_dirs: Sequence[str] = (),
) -> list[str]:
    """Caches `tasks` (every split) into `output_dir` on Beam; returns the task folders.

    `pipeline_args` are Beam's (`--runner=DirectRunner`, Dataflow's --project, ...).
    """
    options = beam.options.pipeline_options.PipelineOptions(list(pipeline_args))
    setup_fn = functools.partial(register_specs, tuple(spec_dirs))
    task_dirs = [cache_lib.task_cache_dir(output_dir, t.name) for t in tasks]
    with beam.Pipeline(options=options) as pipeline:
        for task, task_dir in zip(tasks, task_dirs):
            tf.io.gfile.makedirs(task_dir)
            for split in task.splits:
                add_split(pipeline, task, split, task_dir, num_shards=num_shards, setup_fn=setup_fn)
    for task, task_dir in zip(tasks, task_dirs):
        finish_task(task, task_dir, num_shards)
    return task_dirs
