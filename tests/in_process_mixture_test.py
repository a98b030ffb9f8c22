"""A large mixture preprocessed in process, mixed in one pipeline (`DataConfig.mixing`): each
task yields exactly its on-the-fly examples, tasks are drawn at the mixture's rates, the
trainer's stream is a function of the seed and resumes exactly, 'auto' picks it from
`ONE_PIPELINE_MIN_TASKS` tasks, and shuffle buffers and prefetch threads do not grow with the
number of tasks (they do under seqio's per-task pipelines)."""

import collections
import dataclasses

import cache_test
import numpy as np
import pytest
import seqio
import tensorflow as tf
from cache_test import ALL_LENGTHS, MIXTURE, VARIANTS, data_config, examples
from cached_mixture_test import (
    CHI2_999,
    batch_hashes,
    chi_square,
    function_count,
    key,
    resume_after_two_batches,
)

from flan_jax.data import cached_mixture, mixtures, tasks
from flan_jax.training import input_pipeline

spec_dir = cache_test.spec_dir  # cache_test's two specs (4 variants) and their mixture


def in_process(**kwargs) -> tf.data.Dataset:
    mixture = seqio.get_mixture_or_task(MIXTURE)
    return cached_mixture.get_in_process_dataset(mixture, ALL_LENGTHS, **kwargs)


def mixed_config(mixing="one_pipeline", seed=0):
    return dataclasses.replace(data_config(None, MIXTURE, shuffle=True, seed=seed), mixing=mixing)


def test_each_task_yields_its_on_the_fly_examples_in_order(spec_dir):
    """Unshuffled, a task's draws are its seqio examples (post-cache steps run per group, not
    per task: few-shot pruning, tokenizing, EOS), in stored order, epoch after epoch."""
    fly = {name: examples(name, "train", False) for name in VARIANTS}
    owners = {key(ex): name for name, rows in fly.items() for ex in rows}
    assert len(owners) == sum(map(len, fly.values()))  # an example names its task
    per_task = collections.defaultdict(list)
    for ex in in_process(shuffle=False, seed=5).take(1200).as_numpy_iterator():
        assert sorted(ex) == ["inputs", "targets"] and ex["inputs"].dtype == np.int32
        per_task[owners[key(ex)]].append(key(ex))
    for name in VARIANTS:
        n, drawn = len(fly[name]), per_task[name]
        assert len(drawn) >= 2 * n, (name, len(drawn))
        assert drawn[:n] == [key(ex) for ex in fly[name]]
        assert drawn[n : 2 * n] == drawn[:n]


def test_two_hosts_read_disjoint_halves_of_every_task(spec_dir):
    """shard_info as the trainer passes it on 2 hosts. Unshuffled, the mixture gives each host
    a fixed half of each task. Shuffled, in each epoch of a task's stream (before its group's
    buffer) the hosts read disjoint halves (the same seeded shuffle, then dealt at the source),
    and the next epoch deals a new shuffle."""
    fly = {name: examples(name, "train", False) for name in VARIANTS}
    owners = {key(ex): name for name, rows in fly.items() for ex in rows}
    hosts = [seqio.ShardInfo(index=i, num_shards=2) for i in range(2)]
    halves = []
    for info in hosts:
        drawn = in_process(shuffle=False, seed=3, shard_info=info).take(1500)
        halves.append({key(ex) for ex in drawn.as_numpy_iterator()})
    assert not halves[0] & halves[1]
    for name in VARIANTS:
        mine = [{k for k in h if owners[k] == name} for h in halves]
        assert mine[0] | mine[1] == {key(ex) for ex in fly[name]}
        assert abs(len(mine[0]) - len(mine[1])) <= 1

    task = seqio.get_mixture_or_task(VARIANTS[0])
    n = len(fly[VARIANTS[0]])  # 60
    epochs = []
    for info in hosts:
        stream = cached_mixture.task_stream(task, "train", shuffle=True, seed=3, shard_info=info)
        inputs = [ex["inputs"] for ex in stream.take(n).as_numpy_iterator()]
        epochs.append([inputs[: n // 2], inputs[n // 2 :]])
    for e in range(2):
        assert not set(epochs[0][e]) & set(epochs[1][e])
        assert len(set(epochs[0][e]) | set(epochs[1][e])) == n
    assert epochs[0][0] != epochs[0][1]


def test_task_frequencies_match_the_mixture_rates_and_a_shuffled_epoch_is_whole(spec_dir):
    fly = {name: examples(name, "train", False) for name in VARIANTS}
    owners = {key(ex): name for name, rows in fly.items() for ex in rows}
    drawn = [key(ex) for ex in in_process(shuffle=True, seed=7).take(3000).as_numpy_iterator()]
    counts = collections.Counter(owners[k] for k in drawn)
    rates = mixtures.mixture_rates(MIXTURE)
    assert rates == {VARIANTS[0]: 60.0, VARIANTS[1]: 60.0, VARIANTS[2]: 30.0, VARIANTS[3]: 30.0}
    observed = np.array([counts[n] for n in VARIANTS], float)
    assert chi_square(observed, np.array([rates[n] for n in VARIANTS])) < CHI2_999[3]
    for name in VARIANTS:  # every example of every task is drawn, nothing else
        assert {k for k in drawn if owners[k] == name} == {key(ex) for ex in fly[name]}
    unshuffled = [key(ex) for ex in in_process(shuffle=False, seed=7).take(50).as_numpy_iterator()]
    assert drawn[:50] != unshuffled


def test_trainer_stream_is_a_function_of_the_seed_and_resumes_exactly(spec_dir):
    first = batch_hashes(mixed_config(seed=1), 4)
    assert len(set(first)) == 4
    assert batch_hashes(mixed_config(seed=1), 4) == first
    assert not set(batch_hashes(mixed_config(seed=2), 4)) & set(first)
    assert not set(batch_hashes(mixed_config("seqio", seed=1), 4)) & set(first)

    state, _ = resume_after_two_batches(mixed_config(seed=11))
    assert state["config"]["in_process_mixing"] == input_pipeline.IN_PROCESS_MIXING
    assert "cached_mixing" not in state["config"]


def test_auto_mixes_in_one_pipeline_from_the_threshold(spec_dir, monkeypatch):
    mixture = seqio.get_mixture_or_task(MIXTURE)
    task = seqio.get_mixture_or_task(VARIANTS[0])
    auto = mixed_config("auto", seed=3)
    assert input_pipeline.ONE_PIPELINE_MIN_TASKS == 100
    assert not input_pipeline.one_pipeline(auto, mixture)
    assert batch_hashes(auto, 3) == batch_hashes(mixed_config("seqio", seed=3), 3)
    monkeypatch.setattr(input_pipeline, "ONE_PIPELINE_MIN_TASKS", len(mixture.tasks))
    assert input_pipeline.one_pipeline(auto, mixture)
    assert not input_pipeline.one_pipeline(auto, task)  # a task is read by seqio
    assert batch_hashes(auto, 3) == batch_hashes(mixed_config(seed=3), 3)
    cached = dataclasses.replace(auto, use_cached=True)
    assert not input_pipeline.one_pipeline(dataclasses.replace(cached, mixing="seqio"), mixture)
    monkeypatch.setattr(input_pipeline, "ONE_PIPELINE_MIN_TASKS", 100)
    assert input_pipeline.one_pipeline(cached, mixture)  # caches: one pipeline at any size


def test_an_unknown_mixing_names_the_choices():
    with pytest.raises(ValueError, match=r"mixing 'fast' is not one of \('auto', 'seqio'"):
        input_pipeline.DataConfig(
            mixture_or_task_name="x",
            task_feature_lengths={"inputs": 8},
            batch_size=1,
            mixing="fast",
        )


# --- many tasks: what grows per task ------------------------------------------------------------


def add_tiny_tasks(count: int, *, shuffles_splits: bool = True) -> str:
    """`count` in-memory tasks `tinymix_<count>_<i>` of 3 examples each (inputs [i + 1, k + 1],
    targets [k + 1]) with the same post-cache steps, and a mixture of them at rate 1."""
    vocab = seqio.PassThroughVocabulary(size=count + 8, eos_id=1)
    features = {k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")}
    steps = [seqio.CacheDatasetPlaceholder(), seqio.preprocessors.append_eos_after_trim]
    names = []
    for i in range(count):

        def dataset_fn(split, shuffle_files=False, seed=None, i=i):
            rows = {
                "inputs": [[i + 1, k + 1] for k in range(3)],
                "targets": [[k + 1] for k in range(3)],
            }
            ds = tf.data.Dataset.from_tensor_slices(rows)
            return ds.shuffle(3, seed=seed) if shuffle_files else ds

        source = tasks.RenderedSource(dataset_fn, splits=["train"], shuffles_splits=shuffles_splits)
        name = f"tinymix_{count}_{int(shuffles_splits)}_{i}"
        seqio.TaskRegistry.add(name, source, output_features=features, preprocessors=steps)
        names.append(name)
    mixture = f"tinymix_{count}_{int(shuffles_splits)}"
    seqio.MixtureRegistry.add(mixture, names, default_rate=1.0)
    return mixture


def remove_tiny_tasks(mixture: str) -> None:
    for task in seqio.get_mixture_or_task(mixture).tasks:
        seqio.TaskRegistry.remove(task.name)
    seqio.MixtureRegistry.remove(mixture)


def op_counts(ds) -> collections.Counter:
    graph = tf.compat.v1.GraphDef.FromString(ds._as_serialized_graph().numpy())
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return collections.Counter(n.op for n in nodes)


def shuffles_and_prefetches(ds) -> tuple[int, int]:
    ops = op_counts(ds)
    shuffles = sum(n for op, n in ops.items() if op.startswith("ShuffleDataset"))
    return shuffles, ops["PrefetchDataset"]


def test_traced_functions_shuffle_buffers_and_prefetches_do_not_grow_with_the_tasks():
    """One pipeline: the same traced functions for 3 or 200 tasks, one shuffle buffer per group
    and no prefetch thread per task; the only shuffle per task is the source's own whole-split
    shuffle (3 examples here). seqio's Mixture.get_dataset adds traced preprocessing, a
    1,000-example buffer and a prefetch per task."""
    lengths = {"inputs": 4, "targets": 4}
    made = []
    try:
        one, per_task, functions = {}, {}, {}
        for count in (3, 200):
            made.append(add_tiny_tasks(count))
            mixture = seqio.get_mixture_or_task(made[-1])
            ds = cached_mixture.get_in_process_dataset(mixture, lengths, seed=0)
            one[count] = shuffles_and_prefetches(ds)
            seqio_ds = mixture.get_dataset(lengths, shuffle=True, seed=0, num_epochs=None)
            per_task[count] = shuffles_and_prefetches(seqio_ds)
            functions[count] = function_count(ds)[0], function_count(seqio_ds)[0]
            if count == 200:
                drawn = [tuple(ex["inputs"]) for ex in ds.take(3000).as_numpy_iterator()]
        assert functions[200][0] == functions[3][0]
        assert functions[200][1] - functions[3][1] >= 197
        assert one[200][0] - one[3][0] == 197 and one[200][1] == one[3][1]
        assert per_task[200][0] - per_task[3][0] == 2 * 197
        assert per_task[200][1] - per_task[3][1] >= 197
        every = {(i + 1, k + 1, 1) for i in range(200) for k in range(3)}  # 1: EOS
        assert set(drawn) <= every and len({x[0] for x in drawn}) == 200
    finally:
        for mixture in made:
            remove_tiny_tasks(mixture)


def test_a_streamed_source_keeps_its_tasks_shuffle_buffer():
    """A source that does not shuffle whole splits (a TFDS stream) keeps the task's buffer."""
    made = [add_tiny_tasks(2, shuffles_splits=flag) for flag in (True, False)]
    try:
        task = {m: seqio.get_mixture_or_task(m).tasks[0] for m in made}
        stream = lambda t, shuffle: cached_mixture.task_stream(
            t, "train", shuffle=shuffle, seed=0, shard_info=None
        )
        whole, streamed = (shuffles_and_prefetches(stream(task[m], True))[0] for m in made)
        assert streamed == whole + 1
        assert task[made[1]].shuffle_buffer_size == seqio.SHUFFLE_BUFFER_SIZE
        unshuffled = stream(task[made[1]], False)
        assert [tuple(x["inputs"]) for x in unshuffled.take(6).as_numpy_iterator()] == [
            (1, 1), (1, 2), (1, 3), (1, 1), (1, 2), (1, 3)
        ]  # fmt: skip
        assert shuffles_and_prefetches(unshuffled)[0] == 0
    finally:
        for mixture in made:
            remove_tiny_tasks(mixture)


def test_plain_seqio_tasks_are_preprocessed_per_task_and_mixed_in_one_group():
    """Tasks of other code (a seqio FunctionDataSource, no cache step): read with seqio's
    `get_dataset` and every preprocessor per task, each with its task's shuffle buffer; equal
    steps still share one group (one shuffle buffer after mixing)."""
    vocab = seqio.ByteVocabulary()
    features = {k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")}
    steps = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos]
    names = [f"plainmix_{i}" for i in range(2)]
    for i, name in enumerate(names):

        def source(split, shuffle_files=False, seed=None, i=i):
            rows = {
                "inputs": [f"t{i} q{k}" for k in range(5)],
                "targets": [f"a{k}" for k in range(5)],
            }
            return tf.data.Dataset.from_tensor_slices(rows)

        seqio.TaskRegistry.add(
            name,
            seqio.FunctionDataSource(source, splits=["train"]),
            output_features=features,
            preprocessors=steps,
        )
    seqio.MixtureRegistry.add("plainmix", [(names[0], 3.0), (names[1], 1.0)])
    try:
        mixture = seqio.get_mixture_or_task("plainmix")
        assert not any(cached_mixture.reads_raw(t) for t in mixture.tasks)
        ds = cached_mixture.get_in_process_dataset(mixture, {"inputs": 16, "targets": 4}, seed=1)
        assert shuffles_and_prefetches(ds)[0] == 2 + 1  # a buffer per task, one for the group
        drawn = [
            vocab.decode(ex["inputs"][:-1].tolist()) for ex in ds.take(2000).as_numpy_iterator()
        ]
        assert set(drawn) == {f"t{i} q{k}" for i in range(2) for k in range(5)}
        counts = np.array([sum(d.startswith(f"t{i}") for d in drawn) for i in range(2)], float)
        assert chi_square(counts, np.array([3.0, 1.0])) < 10.83  # chi-square, 1 dof, p = 0.001
    finally:
        seqio.MixtureRegistry.remove("plainmix")
        for name in names:
            seqio.TaskRegistry.remove(name)
