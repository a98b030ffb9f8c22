"""The trainer end to end: gin entry point, exact resume after SIGKILL, SIGTERM, NaN, eval."""

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile

import numpy as np
import seqio
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "trainer_test_reverse"


def _examples(split, shuffle_files=False, seed=None):
    """Deterministic 'reverse: <word>' -> '<drow>' examples, 256 train / 16 validation."""
    n, offset = (256, 0) if split == "train" else (16, 10_000)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = []
    for i in range(offset, offset + n):
        rng = np.random.default_rng(i)
        words.append("".join(letters[rng.integers(0, 26, size=rng.integers(3, 9))]))
    return tf.data.Dataset.from_tensor_slices(
        {"inputs": [f"reverse: {w}" for w in words], "targets": [w[::-1] for w in words]}
    )


def register_test_task(poison: bool = False) -> None:
    """Registers TASK (ByteVocabulary). `poison` makes one train example's target a NaN trigger."""
    if TASK in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(TASK)
    vocab = seqio.ByteVocabulary()
    features = {k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")}
    seqio.TaskRegistry.add(
        TASK,
        source=seqio.FunctionDataSource(_examples, splits=["train", "validation"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=features,
    )


POISON = 511  # a token id outside ByteVocabulary: the patched loss turns it into NaN


def install_nan_injection(at_step: int) -> None:
    """Makes the batch of step `at_step` carry POISON, and the model's loss NaN on it."""
    import jax.numpy as jnp

    from flan_jax.model import models
    from flan_jax.training import input_pipeline

    loss_fn, next_batch, count = (
        models.BaseModel.loss_fn,
        input_pipeline.TrainIterator.__next__,
        [0],
    )

    def poisoned_loss(self, params, batch, rng):
        loss, metrics = loss_fn(self, params, batch, rng)
        bad = jnp.any(batch["decoder_target_tokens"] == POISON)
        return jnp.where(bad, jnp.nan, loss), dict(
            metrics, loss=jnp.where(bad, jnp.nan, metrics["loss"])
        )

    def poisoned_next(self):
        count[0] += 1
        batch, local = next_batch(self)
        if count[0] == at_step:
            local = dict(
                local, decoder_target_tokens=np.full_like(local["decoder_target_tokens"], POISON)
            )
            batch = input_pipeline.make_global_batch(local, self.mesh, self.global_batch_size)
        return batch, local

    models.BaseModel.loss_fn, input_pipeline.TrainIterator.__next__ = poisoned_loss, poisoned_next


def run_trainer(
    model_dir, *bindings, model_gin="test/tiny_t5.gin", wait=True, env_extra=None, steps=40
):
    """`python -m flan_jax.cli.train`-equivalent in a subprocess with 4 fake devices."""
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import train_test; "
        "train_test.register_test_task(); "
        "import os; n = os.environ.get('FLAN_JAX_TEST_NAN_AT_STEP'); "
        "n and train_test.install_nan_injection(int(n)); "
        "k = os.environ.get('FLAN_JAX_TEST_KILL_AT'); "
        "k and __import__('faults_worker').install_kill(k); "
        "from flan_jax.cli import train; sys.exit(train.main(sys.argv[1:]))"
    )
    argv = [
        sys.executable, "-c", code,
        f"--gin_file={model_gin}", "--gin_file=runs/finetune.gin", "--gin_file=test/train_fast.gin",
        f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
        f"--gin.TRAIN_STEPS={steps}",
        *bindings,
    ]  # fmt: skip
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        # runs share compiled steps through the persistent cache (compile dominates here)
        JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "flan_jax_train_test_jit"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    env.update(env_extra or {})
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def final_params(model_dir):
    import orbax.checkpoint as ocp

    mngr = ocp.CheckpointManager(os.path.join(model_dir, "checkpoints"))
    restored = mngr.restore(mngr.latest_step())
    return mngr.latest_step(), restored["params"]


@functools.cache
def uninterrupted(tmp_root):
    d = os.path.join(tmp_root, "full")
    rc, out = run_trainer(d, "--gin.EVAL_PERIOD=20")  # eval reads no training data
    assert rc == 0, out
    return d, out


def test_train_writes_model_dir_and_loss_falls(tmp_path_factory):
    d, out = uninterrupted(str(tmp_path_factory.getbasetemp()))
    assert "step 40/40 loss" in out and "tok/s" in out and "ETA" in out
    records = read_jsonl(os.path.join(d, "metrics.jsonl"))
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 41))
    assert train[-1]["cross_ent_per_token"] < 0.9 * train[0]["cross_ent_per_token"]
    assert {"accuracy", "learning_rate", "tokens_per_s_per_device", "step_time_s"} <= set(train[0])
    config = open(os.path.join(d, "config.gin")).read()
    assert "train_steps = %TRAIN_STEPS" in config or "TRAIN_STEPS = 12" in config
    assert os.listdir(os.path.join(d, "tensorboard"))
    steps = sorted(int(s) for s in os.listdir(os.path.join(d, "checkpoints")) if s.isdigit())
    assert steps == [36, 40]  # every CHECKPOINT_PERIOD=4 steps, keep 2


def test_eval_every_eval_period(tmp_path_factory):
    d, out = uninterrupted(str(tmp_path_factory.getbasetemp()))
    evals = [r for r in read_jsonl(os.path.join(d, "metrics.jsonl")) if r["kind"] == "eval"]
    assert [(r["step"], r["task"]) for r in evals] == [(20, TASK), (40, TASK)]
    # all 16 validation examples, each target's bytes + EOS, unpadded and counted once
    want = sum(len(ex["targets"]) + 1 for ex in _examples("validation").as_numpy_iterator())
    assert [r["weight_sum"] for r in evals] == [want, want]
    assert 0.0 <= evals[0]["accuracy"] <= 1.0
    assert evals[1]["cross_ent_per_token"] < evals[0]["cross_ent_per_token"]
    assert f"eval step 40 {TASK}: loss/token" in out


def test_sigterm_saves_current_step_and_exits_cleanly(tmp_path):
    d = str(tmp_path / "term")
    proc = run_trainer(d, "--gin.CHECKPOINT_PERIOD=1000", wait=False, steps=1000)
    for line in proc.stdout:
        if line.startswith("step 5/1000"):
            proc.send_signal(signal.SIGTERM)
            break
    out = proc.stdout.read()
    proc.wait(timeout=60)
    assert proc.returncode == 0, out
    step = int(out.split("saved checkpoint at step ")[1].split(";")[0])
    assert 5 <= step < 1000
    assert final_params(d)[0] == step


def test_nan_stops_run_and_keeps_last_good_checkpoint(tmp_path):
    d = str(tmp_path / "nan")
    rc, out = run_trainer(d, env_extra={"FLAN_JAX_TEST_NAN_AT_STEP": "6"})
    assert rc == 1, out
    assert "loss is nan at step 6" in out and "last good checkpoint is step 4" in out
    assert final_params(d)[0] == 4
