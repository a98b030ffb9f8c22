"""Data positions: exact resume of the training stream from a few integers, in process and
after a SIGKILL of a real trainer, on FLAN 2021 TFDS tasks (mocked), file tasks and flan_tiny."""

import json
import os
import signal
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest
import seqio
from conftest import needs_data

from flan_jax.data import packing
from flan_jax.training import input_pipeline
from flan_jax.training.input_pipeline import DataConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data_resume_worker.py")
LENGTHS = {"inputs": 64, "targets": 32}
SMALL_MIXTURE = "data_resume_tiny"


@pytest.fixture(scope="module")
def mesh():
    import flan_jax.registry  # noqa: F401
    from flan_jax.data import mixtures

    # two embedded tasks keep pipeline builds quick; flan_tiny itself is
    # covered by the SIGKILL test below
    mixtures.register_mixture_spec(
        {"name": SMALL_MIXTURE, "members": ["tiny_reverse_word_zs_noopt", "tiny_height_nli_zs_opt"]}
    )
    devices = np.array(jax.devices()[:8]).reshape(8, 1, 1)
    return jax.sharding.Mesh(devices, ("data", "fsdp", "model"))


def _iterator(mesh, **overrides):
    config = DataConfig(
        **{
            "mixture_or_task_name": SMALL_MIXTURE,
            "task_feature_lengths": LENGTHS,
            "batch_size": 8,
            "packing": packing.PackingConfig(buffer_size=64),  # fast first batch
            **overrides,
        }
    )
    converter = input_pipeline.make_converter(seqio.EncDecFeatureConverter, config)
    return input_pipeline.TrainIterator(
        None, mesh, config.batch_size, config=config, converter=converter
    )


def _hashes(iterator, n):
    return [input_pipeline.fingerprint(next(iterator)[1]) for _ in range(n)]


def test_position_is_small_json_and_resumes_exactly(mesh):
    first = _iterator(mesh)
    _hashes(first, 5)
    state = json.loads(json.dumps(first.get_state()))
    tail = _hashes(first, 3)
    assert state["batches_consumed"] == 5 and state["seed"] == 0
    assert len(json.dumps(state)) < 4096  # vs ~100 MB of tf.data shuffle buffers
    resumed = _iterator(mesh)
    resumed.set_state(state)
    assert _hashes(resumed, 3) == tail
    assert resumed.get_state()["batches_consumed"] == 8


def test_unseeded_stream_saves_the_seed_it_drew(mesh):
    first = _iterator(mesh, seed=None)
    _hashes(first, 2)
    state = first.get_state()
    assert isinstance(state["seed"], int)
    want = _hashes(first, 2)
    resumed = _iterator(mesh, seed=None)  # draws another seed; set_state replaces it
    resumed.set_state(state)
    assert _hashes(resumed, 2) == want


def test_set_state_refuses_another_pipeline(mesh):
    state = _iterator(mesh).get_state()
    with pytest.raises(ValueError, match=r"batch_size: saved 8, now 16"):
        _iterator(mesh, batch_size=16).set_state(state)
    with pytest.raises(ValueError, match=rf"mixture_or_task_name: saved '{SMALL_MIXTURE}', now"):
        _iterator(mesh, mixture_or_task_name="tiny_uppercase_zs_noopt").set_state(state)
    with pytest.raises(ValueError, match="is not a flan_jax.data_position/1 position"):
        _iterator(mesh).set_state({"iterator": "..."})


@needs_data
def test_tasks_show_tfds_task_under_mock_data(capsys):
    import importlib_resources  # noqa: F401  (TFDS's lazy import that used to be missing)
    import tensorflow_datasets as tfds

    from flan_jax import cli

    assert '"importlib_resources' in open(os.path.join(REPO, "setup.py")).read()
    with tfds.testing.mock_data(num_examples=3):
        want = next(iter(tfds.load("super_glue/rte:1.0.2", split="validation")))
        assert cli.main(["tasks", "show", "rte", "--format", "zs_opt", "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("== rte_zs_opt (cluster nli, split validation)")
    assert want["premise"].numpy().decode() in out and "OPTIONS:\n- yes\n- no" in out


# ------------------------------------------------------------------ SIGKILL and exact resume

SCENARIOS = {
    # FLAN 2021 rte (TFDS, mocked) + GLUE TSV + T0 JSONL + CoT TSV, T5 vocabulary
    "tfds_files": (
        "--gin.MIXTURE_OR_TASK_NAME='data_resume_mix'",
        "--gin_bindings=network.TransformerConfig.vocab_size = 32128",
    ),
    "flan_tiny": ("--gin.MIXTURE_OR_TASK_NAME='flan_tiny'",),
}
KILL_AFTER, STEPS = 4, 8


def _worker(scenario, model_dir, *, stdout, env_extra=None):
    argv = [
        sys.executable, WORKER, scenario,
        "--gin_file=test/tiny_t5.gin", "--gin_file=runs/finetune.gin",
        "--gin_file=test/train_fast.gin",
        f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={STEPS}",
        "--gin.CHECKPOINT_PERIOD=2", *SCENARIOS[scenario],
    ]  # fmt: skip
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "flan_jax_train_test_jit"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        TFDS_DATA_DIR=os.path.join(os.path.dirname(model_dir), "tfds"),  # mocked builders' dirs
        **(env_extra or {}),
    )
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=stdout, stderr=subprocess.STDOUT, text=True
    )


def _fingerprints(model_dir):
    with open(os.path.join(model_dir, "batches", "process_0.jsonl")) as f:
        return [(r["step"], r["hash"]) for r in map(json.loads, f)]


def _final_params(model_dir):
    import orbax.checkpoint as ocp

    mngr = ocp.CheckpointManager(os.path.join(model_dir, "checkpoints"))
    return mngr.latest_step(), mngr.restore(mngr.latest_step())["params"]


@needs_data
@pytest.mark.parametrize(
    "scenario",
    [
        "flan_tiny",
        "tfds_files",
    ],
)
def test_sigkill_then_exact_resume(scenario, tmp_path):
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    with open(tmp_path / "full.log", "w") as log:
        uninterrupted = _worker(scenario, full, stdout=log)
        victim = _worker(
            scenario,
            killed,
            stdout=subprocess.PIPE,
            env_extra={"FLAN_JAX_TEST_HANG_AFTER": str(KILL_AFTER)},
        )
        lines = []
        for line in victim.stdout:
            lines.append(line)
            if line.startswith(f"CHECKPOINT {KILL_AFTER} DONE"):
                victim.send_signal(signal.SIGKILL)
                break
        victim.wait(timeout=120)
        assert victim.returncode == -signal.SIGKILL, "".join(lines)
        assert uninterrupted.wait(timeout=300) == 0, open(tmp_path / "full.log").read()
    position = os.path.join(killed, "data_iterators", f"step_{KILL_AFTER}", "process_0.json")
    assert os.path.getsize(position) < 4096
    with open(position) as f:
        assert json.load(f)["batches_consumed"] == KILL_AFTER
    resumed = _worker(scenario, killed, stdout=subprocess.PIPE)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"restoring checkpoint step {KILL_AFTER}" in out
    reference = _fingerprints(full)
    assert [s for s, _ in reference] == list(range(1, STEPS + 1))
    # killed run (steps 1-4) + resumed run (5-8) saw exactly the uninterrupted run's batches
    assert _fingerprints(killed) == reference
    (step_a, params_a), (step_b, params_b) = _final_params(full), _final_params(killed)
    assert step_a == step_b == STEPS
    jax.tree.map(np.testing.assert_array_equal, params_b, params_a)


class _Position:
    """A stand-in TrainIterator: only the position interface the Checkpointer uses."""

    def __init__(self, n=0):
        self.state = {"format": input_pipeline.POSITION_FORMAT, "batches_consumed": n}

    def get_state(self):
        return dict(self.state)

    def set_state(self, state):
        self.state = state


def test_checkpointer_saves_positions_per_step_and_prunes_them(tmp_path):
    from flan_jax.checkpoints import manager as checkpoints

    state = {"w": jax.numpy.arange(4.0)}
    config = checkpoints.CheckpointConfig(period=1, keep=2, async_save=False)
    ckpt = checkpoints.Checkpointer(str(tmp_path), config)
    for step in (1, 2, 3):
        ckpt.save(step, state, _Position(step * 10))
    root = tmp_path / "data_iterators"
    assert sorted(os.listdir(root)) == ["step_2", "step_3"]
    assert os.listdir(root / "step_3") == ["process_0.json"]  # no temporary file left
    restored = _Position()
    ckpt.restore(3, state, restored)
    assert restored.state == {"batches_consumed": 30, "format": input_pipeline.POSITION_FORMAT}
    ckpt.close()
