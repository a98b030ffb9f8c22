"""The cached-mixture reader (USE_CACHED on a mixture): each task yields exactly its cached
(= on-the-fly) examples, tasks are drawn at the mixture's rates, the stream is a function of
the seed and resumes exactly, and its graph does not grow traced functions with the tasks."""

import collections
import json

import cache_test
import numpy as np
import pytest
import seqio
import tensorflow as tf
from cache_test import ALL_LENGTHS, MIXTURE, VARIANTS, data_config, examples, tiny_model

from flan_jax.data import cache as cache_lib
from flan_jax.data import cached_mixture, mixtures

# cache_test's fixtures: its specs and their cache, built by `flan-jax cache` on Beam
spec_dir, built, fresh_lookup = cache_test.spec_dir, cache_test.built, cache_test.fresh_lookup

# chi-square critical values at p = 0.001 (the streams are seeded: each check is fixed, and
# would fail for a correct sampler with probability 0.001 at a new seed)
CHI2_999 = {3: 16.27, 39: 72.05}


def chi_square(counts: np.ndarray, weights: np.ndarray) -> float:
    expected = counts.sum() * weights / weights.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def key(ex) -> tuple[bytes, bytes]:
    return ex["inputs"].tobytes(), ex["targets"].tobytes()


@pytest.fixture
def owner(built, fresh_lookup):
    """(example key -> the one task that has it, {task: its on-the-fly train examples})."""
    fly = {name: examples(name, "train", False) for name in VARIANTS}
    owners = {}
    for name, rows in fly.items():
        for ex in rows:
            assert owners.setdefault(key(ex), name) == name  # keys identify the task
    cache_lib.use_caches(MIXTURE, str(built), ["train"])
    return owners, fly


def test_each_task_yields_its_cached_examples_in_epochs(owner):
    """Unshuffled: a task's draws cycle through its cache (its files read one after another),
    and one epoch of them is the multiset of its on-the-fly examples."""
    owners, fly = owner
    ds = cached_mixture.get_dataset(
        seqio.get_mixture_or_task(MIXTURE), ALL_LENGTHS, shuffle=False, seed=5
    )
    per_task = collections.defaultdict(list)
    for ex in ds.take(1200).as_numpy_iterator():
        assert sorted(ex) == ["inputs", "targets"] and ex["inputs"].dtype == np.int32
        per_task[owners[key(ex)]].append(key(ex))
    for name in VARIANTS:
        n, drawn = len(fly[name]), per_task[name]
        assert len(drawn) >= 2 * n, (name, len(drawn))
        assert collections.Counter(drawn[:n]) == collections.Counter(map(key, fly[name]))
        assert drawn[n : 2 * n] == drawn[:n]  # the next epoch repeats the order


def test_task_frequencies_match_the_mixture_rates(owner):
    owners, _ = owner
    ds = cached_mixture.get_dataset(
        seqio.get_mixture_or_task(MIXTURE), ALL_LENGTHS, shuffle=True, seed=7
    )
    drawn = collections.Counter(owners[key(ex)] for ex in ds.take(3000).as_numpy_iterator())
    rates = mixtures.mixture_rates(MIXTURE)
    assert rates == {VARIANTS[0]: 60.0, VARIANTS[1]: 60.0, VARIANTS[2]: 30.0, VARIANTS[3]: 30.0}
    counts = np.array([drawn[n] for n in VARIANTS], float)
    assert counts.sum() == 3000
    assert chi_square(counts, np.array([rates[n] for n in VARIANTS])) < CHI2_999[3]


def test_choose_draws_each_dataset_at_its_weight():
    weights = np.arange(1, 41, dtype=float)
    datasets = [tf.data.Dataset.from_tensors(np.int64(i)).repeat() for i in range(40)]
    ds = cached_mixture.choose(datasets, weights, seed=3).take(40_000).batch(40_000)
    counts = np.bincount(next(ds.as_numpy_iterator()), minlength=40).astype(float)
    assert chi_square(counts, weights) < CHI2_999[39]
    again = cached_mixture.choose(datasets, weights, seed=3).take(50)
    other = cached_mixture.choose(datasets, weights, seed=4).take(50)
    first = list(ds.unbatch().take(50).as_numpy_iterator())
    assert list(again.as_numpy_iterator()) == first != list(other.as_numpy_iterator())


def batch_hashes(config, n):
    from flan_jax.training import input_pipeline

    converter = input_pipeline.make_converter(tiny_model().feature_converter_cls, config)
    ds = input_pipeline.get_train_dataset(config, converter).take(n)
    return [input_pipeline.fingerprint(b) for b in ds.as_numpy_iterator()]


def test_trainer_stream_is_a_function_of_the_seed(built, fresh_lookup):
    config = lambda seed: data_config(built, MIXTURE, shuffle=True, seed=seed)
    first = batch_hashes(config(1), 4)
    assert len(set(first)) == 4
    assert batch_hashes(config(1), 4) == first
    assert not set(batch_hashes(config(2), 4)) & set(first)


def resume_after_two_batches(config):
    """Reads 5 batches of `config`'s train stream on an 8-device mesh, saving the position
    (through JSON) after 2; a fresh iterator set to it must give batches 3-5 again.
    Returns (the saved state, the resumed iterator)."""
    from flan_jax import partitioning
    from flan_jax.training import input_pipeline

    converter = input_pipeline.make_converter(tiny_model().feature_converter_cls, config)
    mesh = partitioning.make_mesh((8, 1, 1))
    make = lambda: input_pipeline.TrainIterator(None, mesh, 8, config=config, converter=converter)
    it = make()
    hashes = [input_pipeline.fingerprint(next(it)[1]) for _ in range(2)]
    state = json.loads(json.dumps(it.get_state()))
    hashes += [input_pipeline.fingerprint(next(it)[1]) for _ in range(3)]
    resumed = make()
    resumed.set_state(state)
    assert [input_pipeline.fingerprint(next(resumed)[1]) for _ in range(3)] == hashes[2:]
    return state, resumed


def test_resume_from_a_saved_position_continues_exactly(built, fresh_lookup):
    from flan_jax.training import input_pipeline

    config = data_config(built, MIXTURE, shuffle=True, seed=11)
    state, resumed = resume_after_two_batches(config)
    assert state["config"]["cached_mixing"] == input_pipeline.CACHED_MIXING
    assert resumed.batches_consumed == 5


def write_tiny_caches(folder, count):
    """`count` plain seqio tasks `tinycache_<i>` whose caches hold 3 examples each
    (inputs [i + 1, k + 1], targets [k + 1]) and a mixture of them at rate 1."""
    vocab = seqio.PassThroughVocabulary(size=count + 8)
    features = {k: seqio.Feature(vocab, add_eos=False) for k in ("inputs", "targets")}
    info = {
        "num_shards": 1,
        "seqio_version": seqio.__version__,
        "features": {k: {"shape": [None], "dtype": "int32"} for k in ("inputs", "targets")},
    }
    names = []
    for i in range(count):
        name = f"tinycache_{count}_{i}"
        task_dir = folder / name
        task_dir.mkdir(parents=True)
        prefix = seqio.utils.get_cached_tfrecord_prefix(str(task_dir), "train")
        with tf.io.TFRecordWriter(f"{prefix}-00000-of-00001") as writer:
            for k in range(3):
                ex = {"inputs": np.array([i + 1, k + 1]), "targets": np.array([k + 1])}
                writer.write(seqio.dict_to_tfexample(ex).SerializeToString())
        (task_dir / "info.train.json").write_text(json.dumps(info))
        (task_dir / "stats.train.json").write_text(json.dumps({"examples": 3}))
        (task_dir / "COMPLETED").write_text("")
        source = seqio.FunctionDataSource(lambda split, shuffle_files: None, splits=["train"])
        steps = [seqio.CacheDatasetPlaceholder()]
        seqio.TaskRegistry.add(name, source, output_features=features, preprocessors=steps)
        names.append(name)
    seqio.MixtureRegistry.add(f"tinycache_{count}", names, default_rate=1.0)
    return names


def function_count(ds) -> tuple[int, int]:
    """(traced functions, TFRecordDataset ops) in the dataset's serialized graph."""
    graph = tf.compat.v1.GraphDef.FromString(ds._as_serialized_graph().numpy())
    readers = sum(n.op == "TFRecordDataset" for n in graph.node)
    return len(graph.library.function), readers


def test_many_tasks_add_readers_but_no_traced_functions(tmp_path, fresh_lookup):
    seqio.add_global_cache_dirs([str(tmp_path)])
    built_names = []
    try:
        counts = {}
        for count in (3, 200):
            built_names += write_tiny_caches(tmp_path, count)
            mixture = seqio.get_mixture_or_task(f"tinycache_{count}")
            ds = cached_mixture.get_dataset(mixture, {"inputs": 4, "targets": 4}, seed=0)
            counts[count] = function_count(ds)
            if count == 200:
                drawn = [tuple(ex["inputs"]) for ex in ds.take(3000).as_numpy_iterator()]
        assert counts[3][1] == 3 and counts[200][1] == 200
        assert counts[200][0] == counts[3][0]  # the same traced functions for 3 or 200 tasks
        cached = {(i + 1, k + 1) for i in range(200) for k in range(3)}
        assert set(drawn) <= cached and len({x[0] for x in drawn}) == 200
    finally:
        for count in (3, 200):
            seqio.MixtureRegistry.remove(f"tinycache_{count}")
        for name in built_names:
            seqio.TaskRegistry.remove(name)
