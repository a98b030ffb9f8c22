"""A tiny deterministic training loop on flan_jax.checkpoints.manager, for the fault drills.

`python faults_worker.py MODEL_DIR STEPS [PHASE:STEP]` trains a toy state for STEPS steps on a
counting data iterator (JSON state), saving every 2 steps with keep=1, and SIGKILLs itself when
a save reaches PHASE at STEP (see checkpoint_files.fault_point). Each step appends
{"step", "position"} to MODEL_DIR/batches.jsonl; the last line printed is the final state.
"""

import json
import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.checkpoints import files as checkpoint_files
from flan_jax.checkpoints import manager as checkpoints


class CountingIterator:
    """Batch i is a function of i; the data state is the position (a few bytes of JSON)."""

    def __init__(self):
        self.position = 0

    def __next__(self):
        self.position += 1
        return np.sin(np.arange(8, dtype=np.float32) * self.position).reshape(2, 4)

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def init_state():
    w = jnp.arange(8, dtype=jnp.float32).reshape(2, 4)
    return {"step": jnp.int32(0), "params": {"w": w}, "opt_state": {"m": jnp.zeros_like(w)}}


@jax.jit
def update(state, batch):
    m = 0.9 * state["opt_state"]["m"] + batch
    w = state["params"]["w"] - 0.1 * m
    return {"step": state["step"] + 1, "params": {"w": w}, "opt_state": {"m": m}}


def abstract_state():
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), init_state()
    )


def reference(steps: int):
    """The uninterrupted run's final state."""
    state, it = init_state(), CountingIterator()
    for _ in range(steps):
        state = update(state, next(it))
    return state


def install_kill(spec: str) -> None:
    phase, at = spec.split(":")

    def kill_at(p, step):
        if (p, step) == (phase, int(at)):
            print(f"killing at {p} of step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint_files.fault_point = kill_at


def main(model_dir: str, steps: int) -> None:
    ckpt = checkpoints.Checkpointer(model_dir, checkpoints.CheckpointConfig(period=2, keep=1))
    it = CountingIterator()
    restored = ckpt.restore_latest(abstract_state(), it)
    state, step = restored or (init_state(), 0)
    print(f"restored {None if restored is None else step}", flush=True)
    with open(os.path.join(model_dir, "batches.jsonl"), "a") as log:
        while step < steps:
            ckpt.poll()
            state, step = update(state, next(it)), step + 1
            log.write(json.dumps({"step": step, "position": it.position}) + "\n")
            log.flush()
            if step % 2 == 0:
                ckpt.save(step, state, it)
    ckpt.close()
    print(json.dumps({"w": np.asarray(state["params"]["w"]).tolist()}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 3:
        install_kill(sys.argv[3])
    main(sys.argv[1], int(sys.argv[2]))
