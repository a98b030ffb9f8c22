"""Multi-host training on one machine: two JAX processes x 2 fake CPU devices (gloo).

Each process runs tests/multihost_worker.py, which joins the job with
`jax.distributed.initialize` and runs `flan_jax.training.train.train` on a global (1, 2, 2) mesh,
exactly as the hosts of a TPU slice do. Checked against a single process with the same
4-device mesh and global batch: losses, final parameters, and which examples each process
read; then a lost process fails the job within a timeout, the restart resumes from the
last checkpoint bit for bit; and a checkpoint written on a (2, 4) mesh restores onto
(4, 2) and (1, 8).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import multihost_worker as worker
import numpy as np
import pytest

from flan_jax import partitioning
from flan_jax.checkpoints import manager as checkpoints
from flan_jax.training import input_pipeline, optimizer, train_state

WORKER = Path(__file__).with_name("multihost_worker.py")
STEPS = 6
CRASH_AT = 5  # process 1 dies fetching step 5's batch; checkpoints every 3 steps
TIMEOUT_S = 600  # generous: on a quiet 2-core machine a run takes ~30 s
FAIL_WITHIN_S = 60  # heartbeat timeout 5 s, plus slack for a busy machine
LAUNCHED: list[Job] = []  # every job of this module, killed at teardown if still running


@dataclasses.dataclass
class Job:
    """A launched run: its processes, their log files and its MODEL_DIR."""

    model_dir: Path
    procs: list[subprocess.Popen]
    logs: list[Path]

    def wait(self, timeout: float = TIMEOUT_S) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired as e:
                self.kill()
                message = (
                    f"job in {self.model_dir} still running after {timeout}s:\n{self.output()}"
                )
                raise AssertionError(message) from e
        return codes

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def output(self, i: int | None = None) -> str:
        paths = self.logs if i is None else [self.logs[i]]
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in paths)


def _free_port() -> int:
    """A TCP port nobody listens on now (for the coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    model_dir: Path,
    num_processes: int,
    crash_process: int | None = None,
    attempt: int = 0,
    extra: tuple[str, ...] = (),
) -> Job:
    """Starts the run's processes (2 devices each; a single process gets all 4); their
    output goes to <model_dir>.<attempt>.process_<i>.log."""
    port = _free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)
    model_dir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    for i in range(num_processes):
        cmd = [
            sys.executable, str(WORKER), f"--model_dir={model_dir}", f"--steps={STEPS}",
            f"--local_devices={4 // num_processes}", f"--num_processes={num_processes}",
            f"--process_id={i}", f"--port={port}",
            *extra,
        ]  # fmt: skip
        if i == crash_process:
            cmd.append(f"--crash_at_step={CRASH_AT}")
        log = model_dir.parent / f"{model_dir.name}.{attempt}.process_{i}.log"
        logs.append(log)
        with open(log, "w") as f:
            procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env))
    LAUNCHED.append(Job(model_dir, procs, logs))
    return LAUNCHED[-1]


def losses(model_dir: Path) -> dict[int, float]:
    """{step: loss} from process 0's metrics.jsonl (later records win: a resumed run's)."""
    out = {}
    for line in (model_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "train":
            out[record["step"]] = record["loss"]
    return out


def read_jsonl(path: Path) -> list[dict]:
    """One dict per line."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def abstract_state(mesh):
    """The tiny model's abstract train state (shapes + shardings) on `mesh`."""
    model = worker.tiny_model()
    data = worker.data_config(8)
    shapes = input_pipeline.model_input_shapes(data, model.feature_converter_cls(pack=False))
    tx = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=1e-2))
    abstract, _ = train_state.state_shardings(model, tx, shapes, mesh)
    return abstract


def restore(model_dir: Path, mesh, step: int | None = None):
    """The train state saved in model_dir (latest step by default), placed on `mesh`."""
    ckpt = checkpoints.Checkpointer(
        str(model_dir), checkpoints.CheckpointConfig(period=1, keep=None)
    )
    try:
        return ckpt.restore(step or ckpt.latest_step(), abstract_state(mesh))
    finally:
        ckpt.close()


def assert_trees(a, b, **tol) -> None:
    """Leafwise equal (bit for bit), or allclose with the given tolerances."""
    check = np.testing.assert_allclose if tol else np.testing.assert_array_equal
    jax.tree.map(lambda x, y: check(np.asarray(x), np.asarray(y), **tol), a, b)


@pytest.fixture(scope="module")
def runs():
    """The single-process reference and the uninterrupted two-process run (concurrently).

    Its own temporary folder, not pytest's tmp_path: concurrent pytest sessions on one
    machine prune each other's /tmp/pytest-of-<user> folders, under running workers.
    """
    with tempfile.TemporaryDirectory(prefix="flan_jax_multihost_") as root:
        single = launch(Path(root) / "single", 1, extra=("--record_mixture",))
        multi = launch(Path(root) / "multi", 2, extra=("--record_mixture",))
        try:
            assert single.wait() == [0], single.output()
            assert multi.wait() == [0, 0], multi.output()
            yield Path(root)
        finally:
            for job in LAUNCHED:
                job.kill()


def test_two_processes_train_like_one(runs: Path) -> None:
    """Same losses and final parameters as one process with the same mesh and global batch."""
    single, multi = runs / "single", runs / "multi"
    ref = losses(single)
    assert sorted(ref) == list(range(1, STEPS + 1))
    assert all(np.isfinite(v) and v > 0 for v in ref.values())
    np.testing.assert_allclose([losses(multi)[s] for s in ref], list(ref.values()), rtol=1e-5)
    mesh = partitioning.make_mesh((1, 8, 1))
    assert_trees(
        restore(multi, mesh)["params"], restore(single, mesh)["params"], rtol=1e-5, atol=1e-6
    )
    assert restore(multi, mesh)["step"] == STEPS


def test_data_axis_across_processes_trains_like_one(runs: Path) -> None:
    """A multi-slice layout (make_mesh's dcn_shape, a process standing in for a slice): data
    across the two processes, model within each; same losses and parameters as one process."""
    model_dir = runs / "dcn"
    job = launch(model_dir, 2, extra=("--mesh=1,1,2", "--dcn_mesh=2,1,1"))
    assert job.wait() == [0, 0], job.output()  # the worker checks the device layout
    ref = losses(runs / "single")
    np.testing.assert_allclose([losses(model_dir)[s] for s in ref], list(ref.values()), rtol=1e-5)
    mesh = partitioning.make_mesh((1, 8, 1))
    assert_trees(
        restore(model_dir, mesh)["params"],
        restore(runs / "single", mesh)["params"],
        rtol=1e-5,
        atol=1e-6,
    )


def test_each_process_reads_its_own_share(runs: Path) -> None:
    """Per step, the processes read disjoint examples whose union is the single process's."""
    single = read_jsonl(runs / "single" / "data" / "process_0.jsonl")
    per_process = [read_jsonl(runs / "multi" / "data" / f"process_{i}.jsonl") for i in (0, 1)]
    for step in range(STEPS):
        ids0, ids1 = per_process[0][step]["ids"], per_process[1][step]["ids"]
        assert len(ids0) == len(ids1) == 4
        assert not set(ids0) & set(ids1)
        assert (
            sorted(ids0 + ids1)
            == sorted(single[step]["ids"])
            == list(range(8 * step, 8 * step + 8))
        )
    # ...and those are the batches the trainer trained on (its own per-process record).
    for i in (0, 1):
        trained = read_jsonl(runs / "multi" / "batches" / f"process_{i}.jsonl")
        assert [r["hash"] for r in trained] == [r["hash"] for r in per_process[i]]


def test_each_process_reads_its_share_of_every_task_of_a_one_pipeline_mixture(runs: Path):
    """A mixture mixed in one pipeline (`cached_mixture.get_in_process_dataset`) on two
    processes: each reads its half of every task (dealt at the source: every 2nd example from
    its index), in stored order when unshuffled; one process alone reads them all."""
    for run, count in (("single", 1), ("multi", 2)):
        for p in range(count):
            rows = read_jsonl(runs / run / "data" / f"mixture_process_{p}.jsonl")
            ids = [i for r in rows for i in r["ids"]]
            assert len(ids) == STEPS * 8 // count
            for base in worker.MIXTURE_BASES:
                mine = [i - base for i in ids if base <= i < base + worker.MIXTURE_SIZE]
                assert mine, (run, p, base)
                want = list(range(p, worker.MIXTURE_SIZE, count))
                assert mine == want[: len(mine)], (run, p, base, mine)


def test_lost_process_fails_the_job_and_restart_resumes(runs: Path) -> None:
    """A killed process fails the job within a timeout; the restart resumes bit for bit."""
    model_dir = runs / "crash"
    job = launch(model_dir, 2, crash_process=1)
    assert job.procs[1].wait(timeout=TIMEOUT_S) == -9, job.output(1)  # SIGKILL: a lost host
    died = time.monotonic()
    # The survivor is blocked in a collective with the dead process: JAX's coordination
    # service must end it after the heartbeat timeout (5 s here), not let it hang.
    code = job.procs[0].wait(timeout=FAIL_WITHIN_S)
    assert code != 0 and time.monotonic() - died < FAIL_WITHIN_S, job.output(0)
    assert "another task died" in job.logs[0].read_text(), job.output(0)
    ckpt = checkpoints.Checkpointer(str(model_dir), checkpoints.CheckpointConfig(period=1))
    last = ckpt.latest_step()
    ckpt.close()
    assert last == 3  # the worker crashes once checkpoint 3 is committed

    restarted = launch(model_dir, 2, attempt=1)
    assert restarted.wait() == [0, 0], restarted.output()
    assert "restoring checkpoint step" in restarted.logs[0].read_text()
    # Identical to the uninterrupted run: every loss (before the crash and after the
    # restart), the final state, and the batches of the resumed steps (no example skipped
    # or repeated).
    assert losses(model_dir) == losses(runs / "multi")
    mesh = partitioning.make_mesh((1, 8, 1))
    assert_trees(restore(model_dir, mesh), restore(runs / "multi", mesh))
    for i in (0, 1):
        resumed = read_jsonl(model_dir / "batches" / f"process_{i}.jsonl")
        expected = read_jsonl(runs / "multi" / "batches" / f"process_{i}.jsonl")
        assert resumed[-(STEPS - last) :] == expected[last:]


@pytest.mark.parametrize("target", [(4, 2, 1), (1, 8, 1), (1, 4, 2)])
def test_checkpoint_from_2x4_mesh_restores_onto_other_meshes(runs: Path, target) -> None:
    """A (data 2, fsdp 4) checkpoint restores onto other meshes (8 devices) with equal values."""
    source_mesh = partitioning.make_mesh((2, 4, 1))
    state = restore(runs / "single", source_mesh)
    model_dir = runs / f"reshard_{'x'.join(map(str, target))}"
    ckpt = checkpoints.Checkpointer(
        str(model_dir), checkpoints.CheckpointConfig(period=1, keep=None)
    )
    ckpt.save(STEPS, state)
    ckpt.close()
    restored = restore(model_dir, partitioning.make_mesh(target))
    assert_trees(restored, state)
    kernel = restored["params"]["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert dict(kernel.sharding.mesh.shape) == dict(zip(partitioning.MESH_AXES, target))
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
