"""Fault drills: kills in every phase of a save, damaged files of each kind, a second trainer,
NaN, disk full. Each ends in an exact resume or a clear refusal, never a silent bad state."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from faults_worker import CountingIterator, abstract_state, init_state, reference, update
from train_test import (
    TASK,
    final_params,
    read_jsonl,
    register_test_task,
    run_trainer,
    uninterrupted,
)

import gin
from flan_jax.checkpoints import files as checkpoint_files
from flan_jax.checkpoints import manager as checkpoints
from flan_jax.checkpoints import run_lock
from flan_jax.cli import gin_flags
from flan_jax.cli import train as train_cli

HERE = os.path.dirname(os.path.abspath(__file__))


def _worker(model_dir, steps, kill=None):
    """faults_worker.py in a subprocess: (exit code, stdout, stdout + stderr)."""
    argv = [sys.executable, os.path.join(HERE, "faults_worker.py"), str(model_dir), str(steps)]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run(
        argv + ([kill] if kill else []), capture_output=True, text=True, env=env, timeout=300
    )
    return proc.returncode, proc.stdout, proc.stdout + proc.stderr


# kill phase, step -> the step the restart resumes from (keep=1, a save every 2 steps)
KILLS = {
    "data_state:4": 2,  # before the step's data state is written
    "orbax_writing:4": 2,  # orbax writing in the background
    "orbax_committed:4": 2,  # orbax committed, no manifest yet: step 4 is not complete
    "manifest_written:4": 4,  # step 4 complete, step 2 not yet removed
    "removing:2": 4,  # step 2's manifest removed, its files not yet
}  # (also "train_state" after the data state, and "pruned" after retention: same outcomes)


@pytest.mark.parametrize("kill", KILLS)
def test_kill_in_each_phase_of_a_save_resumes_exactly(tmp_path, kill):
    d = tmp_path / "run"
    rc, _, out = _worker(d, 6, kill)
    assert rc == -signal.SIGKILL, out
    rc, stdout, out = _worker(d, 6)
    assert rc == 0, out
    assert f"restored {KILLS[kill]}" in stdout, out
    final = json.loads(stdout.strip().splitlines()[-1])["w"]
    np.testing.assert_array_equal(final, np.asarray(reference(6)["params"]["w"]))
    seen = read_jsonl(d / "batches.jsonl")
    restart = len(seen) - (6 - KILLS[kill])
    # the restart saw exactly the positions after the restored step, none twice or skipped
    assert seen[restart:] == [{"step": s, "position": s} for s in range(KILLS[kill] + 1, 7)]
    # only the newest step is left (keep=1), complete and verified
    assert checkpoint_files.list_steps(d) == [6]
    assert checkpoint_files.verify(d, 6) is None
    assert sorted(os.listdir(d / "data_iterators")) == ["step_6"]


def _save_steps(model_dir, steps, keep=3):
    """Saves the worker's state after each of `steps` (synchronously); returns the states."""
    ckpt = checkpoints.Checkpointer(
        str(model_dir), checkpoints.CheckpointConfig(period=1, keep=keep, async_save=False)
    )
    state, it, saved = init_state(), CountingIterator(), {}
    for step in range(1, max(steps) + 1):
        state = update(state, next(it))
        if step in steps:
            ckpt.save(step, state, it)
            saved[step] = state
    ckpt.close()
    return saved


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A model dir with complete steps 1 and 2, copied by each test that damages it."""
    d = tmp_path_factory.mktemp("two_steps")
    return d, _save_steps(d, (1, 2))


def _largest_data_file(d):
    files = [p for p in (d / "checkpoints" / "2").rglob("*") if p.is_file() and "/d/" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


def _flip_bit(d):
    path = _largest_data_file(d)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))
    return f"{path.relative_to(d)} does not match its sha256 in the manifest (damaged)"


def _truncate(d):
    path = _largest_data_file(d)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    return f"{path.relative_to(d)} has {size // 2} bytes, the manifest says {size}"


def _delete(d):
    path = _largest_data_file(d)
    path.unlink()
    return f"{path.relative_to(d)} is missing"


def _no_metadata(d):
    (d / "checkpoints" / "2" / "default" / "_METADATA").unlink()
    return "checkpoints/2/default/_METADATA is missing"


def _no_data_state(d):
    (d / "data_iterators" / "step_2" / "process_0.json").unlink()
    return "data_iterators/step_2/process_0.json is missing"


def _empty_step(d):
    shutil.rmtree(d / "checkpoints" / "2")
    (d / "checkpoints" / "2").mkdir()
    return "empty folder (a save that did not finish)"


def _bad_manifest(d):
    (d / "checkpoints" / "2" / "manifest.json").write_text('{"files": [')
    return "manifest.json unreadable"


DAMAGE = {
    f.__name__[1:]: f
    for f in (_flip_bit, _truncate, _delete, _no_metadata, _no_data_state, _empty_step)
}
DAMAGE["bad_manifest"] = _bad_manifest


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_step_is_skipped_with_one_line_and_restore_walks_back(two_steps, tmp_path, kind):
    src, saved = two_steps
    d = tmp_path / "run"
    shutil.copytree(src, d)
    reason = DAMAGE[kind](d)
    lines = []
    ckpt = checkpoints.Checkpointer(str(d), checkpoints.CheckpointConfig(async_save=False))
    it = CountingIterator()
    state, step = ckpt.restore_latest(abstract_state(), it, log=lines.append)
    assert step == 1 and it.position == 1
    jax.tree.map(np.testing.assert_array_equal, state, saved[1])
    assert lines[0].startswith("checkpoint step 2 skipped: ") and reason in lines[0], lines
    assert all("\n" not in line for line in lines) and len(lines) <= 2, lines
    # the damaged step is out of the way (renamed for inspection, or an empty one removed):
    # step 2 can be saved again, and is then the newest good step
    assert checkpoint_files.list_steps(d) == [1]
    if kind != "empty_step":
        assert any(n.startswith("2.skipped-") for n in os.listdir(d / "checkpoints")), lines
    ckpt.save(2, saved[2], CountingIterator())
    ckpt.close()
    restored = checkpoints.Checkpointer(str(d), checkpoints.CheckpointConfig())
    state, step = restored.restore_latest(abstract_state())
    assert step == 2
    jax.tree.map(np.testing.assert_array_equal, state, saved[2])
    restored.close()


def test_non_finite_state_is_never_saved_and_never_restored(two_steps, tmp_path):
    src, saved = two_steps
    d = tmp_path / "run"
    shutil.copytree(src, d)
    ckpt = checkpoints.Checkpointer(str(d), checkpoints.CheckpointConfig(async_save=False))
    bad = dict(saved[2], params={"w": saved[2]["params"]["w"].at[0, 1].set(np.nan)})
    with pytest.raises(FloatingPointError, match=r"^1 of 16 parameter and optimizer values are "):
        ckpt.save(3, bad, CountingIterator())
    with pytest.raises(FloatingPointError, match="The last good checkpoint is step 2;"):
        ckpt.save(3, bad, CountingIterator())
    assert checkpoint_files.list_steps(d) == [1, 2]
    assert not (d / "data_iterators" / "step_3").exists()
    # a non-finite step written without the guard (an older flan_jax) is skipped on restore
    guard = checkpoints.nonfinite_count
    checkpoints.nonfinite_count = lambda tree: (0, 1)
    try:
        ckpt.save(3, bad, CountingIterator())
    finally:
        checkpoints.nonfinite_count = guard
    lines = []
    _, step = ckpt.restore_latest(abstract_state(), log=lines.append)
    assert step == 2
    assert lines[0] == "checkpoint step 3 skipped: 1 of 16 values are nan or inf", lines
    ckpt.close()


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_says_path_and_bytes_and_keeps_previous_step(two_steps, tmp_path, monkeypatch):
    src, saved = two_steps
    d = tmp_path / "run"
    shutil.copytree(src, d)
    ckpt = checkpoints.Checkpointer(str(d), checkpoints.CheckpointConfig(keep=1))
    # the train state's writer (orbax) fails: state of 2x4 + 2x4 float32 and an int32 = 68 B
    monkeypatch.setattr(ocp.CheckpointManager, "save", _enospc)
    with pytest.raises(checkpoints.StorageError) as e:
        ckpt.save(3, saved[2], CountingIterator())
    assert str(e.value) == (
        f"cannot write {d}/checkpoints: No space left on device; 68 bytes (0.0 MiB) needed. "
        "Free space, or point MODEL_DIR at a writable disk, and restart (it resumes from the "
        "last complete checkpoint)"
    )
    monkeypatch.undo()
    # the background commit fails: raised by the next poll (the next step), not a period late
    ckpt.save(3, saved[2], CountingIterator())
    ckpt.wait()
    monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", lambda self: _enospc_text())
    ckpt.save(4, saved[2], CountingIterator())
    ckpt._thread.join()
    with pytest.raises(checkpoints.StorageError, match=r"No space left on device; 68 bytes"):
        ckpt.poll()
    monkeypatch.undo()
    # the data state's writer fails
    monkeypatch.setattr(checkpoint_files.os, "replace", _enospc)
    with pytest.raises(checkpoints.StorageError, match=r"data_iterators/step_5: No space left"):
        ckpt.save(5, saved[2], CountingIterator())
    monkeypatch.undo()
    ckpt.close()
    # step 3 (the last committed one) is intact and restores
    state, step = checkpoints.Checkpointer(str(d), checkpoints.CheckpointConfig()).restore_latest(
        abstract_state()
    )
    assert step == 3
    jax.tree.map(np.testing.assert_array_equal, state, saved[2])


def _enospc_text():
    raise ValueError("Error writing local file: [OS error: No space left on device]")


def _dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_lock_refuses_a_live_holder_and_breaks_a_stale_one(tmp_path):
    with run_lock.RunLock(str(tmp_path)) as lock:
        with pytest.raises(run_lock.LockHeldError) as e:
            run_lock.RunLock(str(tmp_path)).acquire()
        assert f"host {socket.gethostname()} pid {os.getpid()} (started " in str(e.value)
        assert f"if it is gone, delete {tmp_path}/trainer.lock" in str(e.value)
        assert lock.messages == []
    path = tmp_path / run_lock.LOCK_NAME
    assert path.read_text() == ""  # released
    pid = _dead_pid()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "start_time": 0}))
    with run_lock.RunLock(str(tmp_path)) as lock:
        assert lock.messages == [
            f"broke the stale lock {path} of host {socket.gethostname()} pid {pid} "
            "(started 1970-01-01 00:00:00 UTC): that process is gone"
        ]
        assert json.loads(path.read_text())["pid"] == os.getpid()
    path.write_text(json.dumps({"host": "elsewhere", "pid": pid, "start_time": 0}))
    with pytest.raises(run_lock.LockHeldError, match="on another host"):
        run_lock.RunLock(str(tmp_path)).acquire()


def _main(model_dir, *bindings):
    """flan_jax.training.train.main in this process (8 devices): exit code; gin is cleared after."""
    register_test_task()
    argv = [
        "--gin_file=test/tiny_t5.gin", "--gin_file=runs/finetune.gin",
        "--gin_file=test/train_fast.gin", f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", "--gin.TRAIN_STEPS=4",
        "--gin.partitioning.make_mesh.shape=(-1, 1, 1)", *bindings,
    ]  # fmt: skip
    try:
        return train_cli.main(argv)
    finally:
        gin.clear_config()


def test_second_trainer_on_a_model_dir_is_refused(tmp_path, capsys):
    d = tmp_path / "run"
    with run_lock.RunLock(str(d)):
        assert _main(d) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"flan-jax train: MODEL_DIR {d} is in use by another trainer: host ")
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(os.listdir(d)) == ["trainer.lock"]  # no config.gin, metrics or checkpoints


def test_sigterm_before_training_starts_exits_cleanly(tmp_path, capsys, monkeypatch):
    parse = gin_flags.parse

    def parse_then_sigterm(*args, **kwargs):  # main's handler is installed by now
        os.kill(os.getpid(), signal.SIGTERM)
        return parse(*args, **kwargs)

    monkeypatch.setattr(gin_flags, "parse", parse_then_sigterm)
    previous = signal.getsignal(signal.SIGTERM)
    assert _main(tmp_path / "run") == 0
    assert "SIGTERM before training started; nothing to save" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is previous  # main puts the old handler back
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_nan_learning_rate_keeps_no_bad_checkpoint_and_sane_restart_finishes(tmp_path):
    """A run that blows up (LEARNING_RATE=1000 after a good checkpoint) saves nothing more."""
    d = str(tmp_path / "nan")
    rc, out = run_trainer(d, steps=4)  # a sane checkpoint at step 4
    assert rc == 0, out
    rc, out = run_trainer(d, "--gin.LEARNING_RATE=1000.0", steps=12)
    assert rc == 1, out
    line = next(x for x in out.splitlines() if "flan-jax train: " in x)
    # the non-finite state (or the loss it gives) is caught before step 8's save
    assert ("values are nan or inf after step" in line) or ("loss is nan at step" in line), line
    assert "stopped without saving. The last good checkpoint is step 4; lower LEARNING_RATE" in line
    assert "Traceback" not in out
    assert checkpoint_files.list_steps(d) == [4]
    rc, out = run_trainer(d, steps=12)  # a sane rate resumes from step 4 and finishes
    assert rc == 0, out
    assert "restoring checkpoint step 4 " in out
    step, params = final_params(d)
    assert step == 12
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_trainer_keep_1_killed_after_orbax_commit_resumes_exactly(tmp_path_factory, tmp_path):
    """The demo's keep=1: a kill between orbax's commit and the manifest keeps step 4.

    Before manifests, this kill deleted step 4's data iterator: no restart could resume.
    """
    ref, _ = uninterrupted(str(tmp_path_factory.getbasetemp()))  # shared with train_test
    d = str(tmp_path / "killed")
    keep1 = "--gin.checkpoints.CheckpointConfig.keep=1"
    kill = {"FLAN_JAX_TEST_KILL_AT": "orbax_committed:8"}
    rc, out = run_trainer(d, keep1, env_extra=kill)
    assert rc == -signal.SIGKILL, out
    rc, out = run_trainer(d, keep1)
    assert rc == 0, out
    assert "checkpoint step 8 skipped: no manifest.json" in out
    assert "restoring checkpoint step 4 " in out
    # the same final state as the uninterrupted run (tolerance as in train_test: its eval
    # compiles another program, which may change XLA's CPU fusion of the train step)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        final_params(d)[1],
        final_params(ref)[1],
    )
    want = read_jsonl(os.path.join(ref, "batches", "process_0.jsonl"))
    seen = read_jsonl(os.path.join(d, "batches", "process_0.jsonl"))
    assert seen[-36:] == want[4:]  # steps 5..40 after the restart: the same batches
    assert checkpoint_files.list_steps(d) == [40]
