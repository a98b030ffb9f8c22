"""`flan-jax cache` on Beam's DirectRunner: cached examples equal the on-the-fly ones, a run
trained from the cache sees the same batches and ends with the same params, and a missing or
stale cache (or bad command-line input) is a clear error."""

import json
import pathlib

import numpy as np
import pytest
import seqio
import yaml

import flan_jax.cli
from flan_jax.data import cache as cache_lib
from flan_jax.data import tasks

REPO = pathlib.Path(__file__).resolve().parents[1]
MIXTURE = "cachetest_mix"
TINY = "cachetest_arithmetic"  # the shipped flan_tiny arithmetic spec, 60 examples a split
FILE = "cachetest_reviews"  # a JSONL classification task (options: a list feature)
VARIANTS = [f"{TINY}_fs_noopt", f"{TINY}_zs_noopt", f"{FILE}_fs_opt", f"{FILE}_zs_opt"]
ALL_LENGTHS = {"inputs": 2048, "targets": 512}  # nothing is trimmed
REVIEWS = [
    {"review": f"film {i} was {['dull', 'fun', 'long'][i % 3]}", "label": int(i % 3 == 1)}
    for i in range(30)
]


def write_specs(folder: pathlib.Path) -> None:
    """A copy of tasks/flan_tiny/arithmetic.yaml (fewer examples), a JSONL task, a mixture."""
    tiny = yaml.safe_load((REPO / "tasks/flan_tiny/arithmetic.yaml").read_text())
    tiny |= {"name": TINY, "num_examples": {"train": 60, "validation": 60}}
    tiny["source"] = dict(tiny["source"], splits=["train", "validation"])
    tiny["source"]["args"] = {"task": "arithmetic", "num_examples": 60}
    (folder / "data").mkdir(parents=True)
    for split in ("train", "dev"):
        rows = REVIEWS if split == "train" else REVIEWS[:12]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (folder / "data" / f"{split}.jsonl").write_text(text)
    reviews = {
        "name": FILE,
        "cluster": "sentiment",
        "source": {
            "type": "jsonl",
            "splits": {"train": "data/train.jsonl", "validation": "data/dev.jsonl"},
        },
        "fields": {"text": "review", "answer": "label"},
        "options": ["bad", "good"],
        "label_map": {0: "bad", 1: "good"},
        "templates": [
            {"inputs": "Is '{text}' good or bad?\n{options_}", "targets": "{answer}"},
            {"inputs": "Review: {text}", "targets": "{answer}"},
        ],
        "formats": ["zs_opt", "fs_opt"],
        "vocabulary": "byte",
    }
    mixture = {"name": MIXTURE, "members": [TINY, FILE]}
    for name, spec in ((TINY, tiny), (FILE, reviews), (MIXTURE, mixture)):
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory):
    import flan_jax.registry as registry
    from flan_jax.data import mixtures

    folder = tmp_path_factory.mktemp("specs")
    write_specs(folder)
    registry.register_dir(folder)
    yield folder
    mixtures.unregister_mixture(MIXTURE)  # later tests in this process see the shipped specs
    for name in (TINY, FILE):
        tasks.unregister_task_spec(name)


@pytest.fixture(scope="module")
def built(spec_dir, tmp_path_factory):
    """(cache folder, stdout lines) of `flan-jax cache cachetest_mix` on the DirectRunner."""
    pytest.importorskip("apache_beam", reason="needs the beam extra: pip install '.[beam]'")
    out = tmp_path_factory.mktemp("cache")
    argv = ["cache", MIXTURE, "--output_dir", str(out), "--specs", str(spec_dir)]
    assert flan_jax.cli.main([*argv, "--num_shards", "3"]) == 0
    return out


@pytest.fixture
def fresh_lookup():
    """seqio's global cache dirs and each task's found cache dir are process state: reset."""
    saved = list(seqio.get_global_cache_dirs())
    yield
    seqio.set_global_cache_dirs(saved)
    for name in VARIANTS:
        if name in seqio.TaskRegistry.names():
            seqio.get_mixture_or_task(name)._cache_dir = None
    cache_lib._CHECKED.clear()


def examples(name, split, use_cached):
    ds = seqio.get_mixture_or_task(name).get_dataset(
        ALL_LENGTHS, split=split, shuffle=False, use_cached=use_cached, try_in_mem_cache=False
    )
    return list(ds.as_numpy_iterator())


def test_mixture_caches_every_member_in_seqio_layout(built):
    for name in VARIANTS:
        folder = built / name
        assert (folder / "COMPLETED").exists()
        files = sorted(p.name for p in folder.glob("train.tfrecord-*"))
        assert files == [f"train.tfrecord-0000{i}-of-00003" for i in range(3)]
        stats = json.loads((folder / "stats.train.json").read_text())
        assert stats["examples"] == (60 if name.startswith(TINY) else 30)
        assert json.loads((folder / cache_lib.FINGERPRINT_FILE).read_text())["task"] == name


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_examples_equal_on_the_fly(built, fresh_lookup, name):
    fly = {s: examples(name, s, False) for s in ("train", "validation")}
    seqio.add_global_cache_dirs([str(built)])
    cached = {s: examples(name, s, True) for s in ("train", "validation")}
    assert seqio.get_mixture_or_task(name).cache_dir == str(built / name)
    for split in ("train", "validation"):
        counts = (
            {"train": 60, "validation": 60} if TINY in name else {"train": 30, "validation": 12}
        )
        assert len(cached[split]) == len(fly[split]) == counts[split]
        for a, b in zip(fly[split], cached[split]):
            assert sorted(a) == sorted(b)
            for key in a:
                assert np.array_equal(a[key], b[key]), (name, split, key)
    if name.endswith("_opt"):  # options survive the cache as a list of strings
        assert [x.decode() for x in cached["train"][0]["options"]] == ["bad", "good"]


def test_eval_reads_the_cache(built, fresh_lookup):
    """`flan-jax eval` with USE_CACHED=True (EvalConfig.use_cached) loads the same examples."""
    from flan_jax.evaluation import inference

    task = seqio.get_mixture_or_task(VARIANTS[3])
    fly = inference.load_examples(task, None, ALL_LENGTHS, None)
    cached = inference.load_examples(
        task, None, ALL_LENGTHS, None, use_cached=True, cache_dir=str(built)
    )
    assert task.cache_dir == str(built / VARIANTS[3]) and len(cached) == len(fly) == 12
    for a, b in zip(fly, cached):
        assert all(np.array_equal(a[k], b[k]) for k in a) and sorted(a) == sorted(b)


def tiny_model():
    from flan_jax.model import models, network

    config = network.TransformerConfig(
        vocab_size=264,
        emb_dim=32,
        num_heads=2,
        head_dim=8,
        mlp_dim=64,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dropout_rate=0.0,
    )
    return models.EncoderDecoderModel(config)


def data_config(cache_dir=None, name=VARIANTS[1], *, shuffle=False, seed=0):
    from flan_jax.training import input_pipeline

    return input_pipeline.DataConfig(
        mixture_or_task_name=name,
        task_feature_lengths={"inputs": 96, "targets": 16},
        batch_size=8,
        shuffle=shuffle,
        seed=seed,
        use_cached=cache_dir is not None,
        cache_dir=None if cache_dir is None else str(cache_dir),
    )


def test_training_from_cache_sees_the_same_batches(built, fresh_lookup, tmp_path):
    """A 3-step run on a task's cache trains on the batches the on-the-fly pipeline makes.
    (A mixture's cache is mixed by cached_mixture: a stream of its own, tested below.)"""
    from flan_jax import partitioning
    from flan_jax.checkpoints import manager as checkpoints
    from flan_jax.training import input_pipeline, optimizer, train

    model = tiny_model()
    converter = input_pipeline.make_converter(model.feature_converter_cls, data_config())
    fly = input_pipeline.get_train_dataset(data_config(), converter).take(3)
    fly_hashes = [input_pipeline.fingerprint(b) for b in fly.as_numpy_iterator()]
    train.train(
        model=model,
        data=data_config(built),
        mesh=partitioning.make_mesh((8, 1, 1)),
        optimizer_config=optimizer.OptimizerConfig(learning_rate=1e-2),
        checkpoint=checkpoints.CheckpointConfig(period=100),
        run=train.RunConfig(
            model_dir=str(tmp_path), train_steps=3, log_period=3, record_batch_fingerprints=True
        ),
    )
    lines = (tmp_path / "batches" / "process_0.jsonl").read_text().splitlines()
    assert len(set(fly_hashes)) == 3
    assert [json.loads(x)["hash"] for x in lines] == fly_hashes
    assert seqio.get_mixture_or_task(VARIANTS[1]).cache_dir == str(built / VARIANTS[1])


def test_missing_cache_names_the_task_and_the_command(built, fresh_lookup, tmp_path):
    empty = tmp_path / "empty"
    with pytest.raises(ValueError) as e:
        cache_lib.use_caches(MIXTURE, str(empty), ["train"])
    assert str(e.value) == (
        f"no cache of task {VARIANTS[0]!r} (of {MIXTURE!r}) in {[str(empty)]}; build it with "
        f"`flan-jax cache {MIXTURE} --output_dir {empty}`"
    )


def test_changed_data_file_makes_the_cache_stale(built, spec_dir, fresh_lookup):
    data = spec_dir / "data" / "train.jsonl"
    original = data.read_text()
    cache_lib.use_caches(FILE + "_zs_opt", str(built), ["train"])  # current: no error
    try:
        data.write_text(original + json.dumps({"review": "one more", "label": 0}) + "\n")
        with pytest.raises(ValueError) as e:
            cache_lib.check_cached(MIXTURE, ["train"], cache_dir=str(built))
    finally:
        data.write_text(original)
    assert str(e.value) == (
        f"the cache of task {VARIANTS[2]!r} at {built / VARIANTS[2]} is stale (the task differs "
        f"in ['data:train'] since it was cached); rebuild it with `flan-jax cache {MIXTURE} "
        f"--output_dir {built} --overwrite`"
    )


def test_changed_spec_is_stale_and_recaching_a_current_cache_keeps_it(built, spec_dir, capsys):
    task = seqio.get_mixture_or_task(VARIANTS[0])
    saved = cache_lib.read_fingerprint(str(built / VARIANTS[0]))
    assert cache_lib.changed_parts(saved, cache_lib.task_fingerprint(task)) == []
    spec = tasks.get_task_spec(TINY)
    other = cache_lib._spec_components(__import__("dataclasses").replace(spec, seed=1))
    assert other["spec"] != saved["spec"] and other["source_fn"] == saved["source_fn"]
    argv = ["cache", MIXTURE, "--output_dir", str(built), "--specs", str(spec_dir)]
    assert flan_jax.cli.main(argv) == 0
    kept = [line for line in capsys.readouterr().out.splitlines() if "kept" in line]
    assert kept == [f"{n}: cache is current, kept (--overwrite rebuilds it)" for n in VARIANTS]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["no_such_task_x", "--output_dir", "/tmp/c"],
            "unknown task or mixture 'no_such_task_x'",
        ),
        (
            ["tiny_arithmetic", "--output_dir", "gs://b/c", "--runner", "DataflowRunner"],
            "--runner DataflowRunner needs --project, --region, --temp_location; add e.g. "
            "--project=my-project --region=us-central1 --temp_location=gs://my-bucket/tmp",
        ),
        (
            ["tiny_arithmetic", "other", "--output_dir", "/tmp/c"],
            "unexpected argument 'other': give one task or mixture name (got 'tiny_arithmetic' "
            "already); Beam options are --flags (--project=P)",
        ),
        (["tiny_arithmetic", "--output_dir", "/tmp/c", "--num_shards", "40"], "--num_shards 40"),
    ],
)
def test_bad_input_is_two_lines_and_exit_code_2(argv, message, capsys):
    assert flan_jax.cli.main(["cache", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith(f"flan-jax cache: error: {message}"), err
    assert err[1] == "(set FLAN_JAX_TRACEBACK=1 for the traceback)"


def test_dry_run_prints_the_exact_dataflow_command(monkeypatch, capsys):
    monkeypatch.setenv("DRY_RUN", "1")
    argv = "tiny_arithmetic --output_dir gs://b/cache --runner DataflowRunner --project p "
    argv += "--region=us-central1 --temp_location=gs://b/tmp --setup_file=./setup.py"
    assert flan_jax.cli.main(["cache", *argv.split()]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "flan-jax cache tiny_arithmetic --output_dir gs://b/cache --num_shards 4 "
        "--runner=DataflowRunner --project p --region=us-central1 "
        "--temp_location=gs://b/tmp --setup_file=./setup.py",
        "# 2 task(s): tiny_arithmetic_fs_noopt tiny_arithmetic_zs_noopt",
    ]
