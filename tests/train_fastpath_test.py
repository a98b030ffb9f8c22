"""Trainer fast path: persistent compilation cache, `--precompile` (AOT) report, packing option."""

import collections
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import seqio
from train_test import REPO, TASK, register_test_task

import gin
from flan_jax.cli import gin_flags
from flan_jax.cli import train as train_cli
from flan_jax.data import packing
from flan_jax.training import input_pipeline, train

LENGTHS = {"inputs": 32, "targets": 32}
TRAIN_GINS = ["--gin_file=test/tiny_t5.gin", "--gin_file=runs/finetune.gin"]
TRAIN_GINS += ["--gin_file=test/train_fast.gin", "--gin.TRAIN_STEPS=1"]


# --- persistent compilation cache -------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, env, jax_default, want",
    [
        (None, {}, None, os.path.expanduser("~/.cache/flan_jax/jax")),  # on by default
        (None, {}, "/jax/env", "/jax/env"),  # $JAX_COMPILATION_CACHE_DIR is kept
        (None, {"FLAN_JAX_COMPILATION_CACHE": "/fj"}, "/jax/env", "/fj"),
        ("/flag", {"FLAN_JAX_COMPILATION_CACHE": "/fj"}, "/jax/env", "/flag"),
        ("none", {}, "/jax/env", None),  # disabled by the flag
        (None, {"FLAN_JAX_COMPILATION_CACHE": ""}, None, None),  # or by the variable
    ],
)
def test_compilation_cache_dir_precedence(flag, env, jax_default, want):
    assert gin_flags.compilation_cache_dir(flag, env, jax_default) == want


def test_train_writes_the_persistent_cache_by_default(tmp_path):
    """No cache flag or variable: `flan-jax train` caches compiled steps under ~/.cache."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("JAX_COMPILATION_CACHE_DIR", gin_flags.CACHE_ENV)
    }
    env.update(
        HOME=str(tmp_path),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",  # tiny steps compile in < 1 s
    )
    argv = [sys.executable, "-m", "flan_jax.cli.train", *TRAIN_GINS, "--precompile"]
    argv += [f"--gin.MODEL_DIR='{tmp_path / 'run'}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'"]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cache = tmp_path / ".cache" / "flan_jax" / "jax"
    assert any(n.startswith("jit_train_step") for n in os.listdir(cache)), os.listdir(cache)


# --- --precompile -----------------------------------------------------------------------------


def _shard_bytes(abstract_tree) -> int:
    """Bytes one device holds of ShapeDtypeStructs with shardings (replicated = whole array)."""
    return sum(
        int(np.prod(x.sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(abstract_tree)
    )


def test_precompile_prints_memory_per_device_without_training(tmp_path, capsys, monkeypatch):
    captured = {}

    def compile_and_keep(model, tx, schedule, step_config, mesh, shapes):
        out = real_compile(model, tx, schedule, step_config, mesh, shapes)
        captured.update(compiled=out[0], abstract=out[1], mesh=mesh, shapes=shapes, model=model)
        return out

    real_compile = train.compile_train_step
    monkeypatch.setattr(train, "compile_train_step", compile_and_keep)
    monkeypatch.setattr(train.input_pipeline, "get_train_dataset", None)  # must not read data
    argv = [
        *TRAIN_GINS,
        "--precompile",
        "--gin_bindings=partitioning.make_mesh.shape = (4, 1, 2)",  # 8 test devices
        "--compilation_cache_dir=none",  # leave this process's JAX config as it was
        f"--gin.MODEL_DIR='{tmp_path}'",
        f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
    ]
    try:
        assert train_cli.main(argv) == 0
    finally:
        gin.clear_config()
    out = capsys.readouterr().out
    printed = {
        name.strip(): int(b)
        for name, b in re.findall(r"^  ([a-z ()]+?)\s+[\d.]+ MiB\s+(\d+) bytes$", out, re.M)
    }
    stats = captured["compiled"].memory_analysis()
    assert printed["arguments"] == stats.argument_size_in_bytes
    assert printed["outputs"] == stats.output_size_in_bytes
    assert printed["aliased (donated)"] == stats.alias_size_in_bytes
    assert printed["temporaries"] == stats.temp_size_in_bytes
    assert printed["generated code"] == stats.generated_code_size_in_bytes
    # arguments = this device's shards of the state and of the [8, 32] int32 batch
    mesh, shapes = captured["mesh"], captured["shapes"]
    batch_sh = train.partitioning.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(v, np.int32, sharding=batch_sh) for k, v in shapes.items()}
    want = _shard_bytes(captured["abstract"]) + _shard_bytes(batch)
    assert printed["arguments"] == want
    assert printed["aliased (donated)"] == _shard_bytes(captured["abstract"])  # state donated
    flops = float(re.search(r"FLOPs per device per step ([\d.e+]+)", out).group(1))
    assert flops == pytest.approx(captured["compiled"].cost_analysis()["flops"], rel=1e-3)
    # the analytic model FLOPs (flan_jax.model.flops) come first; XLA's count is a second opinion
    analytic = re.search(r"\(analytic, 6N/token \+ attention\) per step ([\d.e+]+)", out)
    want = train.flops.train_flops_per_step(captured["model"].config, shapes)
    assert float(analytic.group(1)) == pytest.approx(want, rel=1e-3)
    assert not os.path.exists(tmp_path / "checkpoints")


# --- packing option ---------------------------------------------------------------------------


def _config(method: str, **kw) -> input_pipeline.DataConfig:
    return input_pipeline.DataConfig(
        mixture_or_task_name=TASK,
        task_feature_lengths=LENGTHS,
        batch_size=8,
        packing=packing.PackingConfig(method=method),
        **kw,
    )


def test_greedy_pipeline_equals_seqio_exactly():
    register_test_task()
    config = _config("greedy")
    converter = input_pipeline.make_converter(seqio.EncDecFeatureConverter, config)
    assert type(converter) is seqio.EncDecFeatureConverter
    ours = input_pipeline.get_train_dataset(config, converter).as_numpy_iterator()
    ref = seqio.get_dataset(
        TASK,
        LENGTHS,
        seqio.EncDecFeatureConverter(pack=True),
        shuffle=True,
        seed=0,
        num_epochs=None,
        shard_info=input_pipeline.shard_info(),
    ).batch(8, drop_remainder=True)
    for got, want in zip(ours, ref.take(40).as_numpy_iterator(), strict=False):
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _unpack(rows) -> collections.Counter:
    """Multiset of examples: per segment, every feature's values at that segment's slots."""
    examples = collections.Counter()
    for row in rows:
        prefixes = sorted({k.split("_")[0] for k in row if k.endswith("_segment_ids")})
        for s in range(1, int(max(row[f"{p}_segment_ids"].max() for p in prefixes)) + 1):
            ex = tuple(
                (k, tuple(v[row[f"{k.split('_')[0]}_segment_ids"] == s].tolist()))
                for k, v in sorted(row.items())
                if not k.endswith("_segment_ids")  # a slot number in the row, not the example
            )
            examples[ex] += 1
    return examples


@pytest.mark.parametrize(
    "converter_cls", [seqio.EncDecFeatureConverter, seqio.DecoderFeatureConverter]
)
def test_best_fit_is_the_default_and_packs_the_same_examples(converter_cls):
    register_test_task()
    assert input_pipeline.DataConfig(
        mixture_or_task_name=TASK, task_feature_lengths=LENGTHS, batch_size=8
    ).packing == packing.PackingConfig(method="best_fit")
    rows = {}
    for method in ("greedy", "best_fit"):
        converter = input_pipeline.make_converter(converter_cls, _config(method))
        ds = seqio.get_dataset(TASK, LENGTHS, converter, shuffle=False, num_epochs=1)
        rows[method] = list(ds.as_numpy_iterator())
    assert _unpack(rows["best_fit"]) == _unpack(rows["greedy"])
    assert sum(_unpack(rows["greedy"]).values()) == 256  # every train example, once
    assert len(rows["best_fit"]) < len(rows["greedy"])
