"""Checkpoints: atomic, verified steps of the train state (orbax) plus each process's data
state, restore that walks back past unfinished or damaged steps, and parameter-only loading
of an initial checkpoint (ours, or converted HF/T5X). No TensorFlow at import time."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from flan_jax.checkpoints import files
from flan_jax.checkpoints.files import StorageError
from flan_jax.types import PyTree

DATA_STATES = ("position", "tf_iterator")
__all__ = ["CheckpointConfig", "CheckpointError", "Checkpointer", "StorageError"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """When and how to checkpoint.

    Attributes:
      period: save every `period` steps (and always at the end, on SIGTERM).
      keep: number of most recent complete checkpoints to keep (None: all).
      async_save: write in the background while training continues.
      save_data_iterator: save each process's data state with each checkpoint, so that a
        resumed run sees exactly the examples it would have (False: a resumed run restarts
        the data from its beginning).
      data_state: what is saved: "position" (default; `TrainIterator.get_state()`, a ~1 KB
        JSON of seed and batches consumed, replayed on restore) or "tf_iterator" (tf.data's
        own iterator checkpoint: shuffle and prefetch buffers, often 100 MB and more, written
        synchronously; fails on `from_generator` sources such as the FLAN 2021 TFDS tasks).
    """

    period: int = 1000
    keep: int | None = 3
    async_save: bool = True
    save_data_iterator: bool = True
    data_state: str = "position"

    def __post_init__(self):
        if self.period < 1:
            raise ValueError(f"CHECKPOINT_PERIOD ({self.period}) must be >= 1")
        if self.keep is not None and self.keep < 1:
            raise ValueError(f"keep ({self.keep}) must be >= 1 or None")
        if self.data_state not in DATA_STATES:
            raise ValueError(f"data_state {self.data_state!r} must be one of {DATA_STATES}")


class CheckpointError(RuntimeError):
    """A checkpoint step that cannot be restored, with the reason in one line."""


class NonFiniteStateError(FloatingPointError):
    """The state about to be saved holds nan or inf."""


@jax.jit
def _count_nonfinite(tree: PyTree) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    # float32: a count past 2**31 (an 11B model's state) would overflow int32
    return sum((jnp.sum(~jnp.isfinite(x), dtype=jnp.float32) for x in leaves), jnp.float32(0))


def nonfinite_count(tree: PyTree) -> tuple[int, int]:
    """(values that are nan or inf, all floating-point values) over a (sharded) pytree."""
    total = sum(
        int(np.prod(x.shape)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
    )
    bad = _count_nonfinite(tree)
    return int(np.asarray(bad.addressable_data(0))), total


def _nbytes(tree: PyTree) -> int:
    return int(sum(np.dtype(x.dtype).itemsize * np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _agree(value: int) -> int:
    """Process 0's value on every process (a checkpoint choice must be the same everywhere)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def absolute_path(path: str) -> str:
    """`path` made absolute (orbax refuses relative paths); URLs such as gs:// stay as they are."""
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


class Checkpointer:
    """Saves and restores `{step, params, opt_state}` plus the data state under model_dir.

    A step commits when process 0 writes its manifest (after orbax's commit); an error of a
    background save is raised by the next `poll()`, `save()` or `close()`.
    """

    def __init__(self, model_dir: str, config: CheckpointConfig):
        self.config = config
        self.model_dir = epath.Path(absolute_path(model_dir))
        self.directory = str(self.model_dir / files.CHECKPOINTS)
        # orbax keeps everything: old steps are removed here, only after a newer one commits
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None, enable_async_checkpointing=config.async_save, create=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self.last_good: int | None = self.latest_step()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def latest_step(self) -> int | None:
        """The newest step with a manifest (complete; `restore` verifies it)."""
        steps = [
            s for s in files.list_steps(self.model_dir) if files.has_manifest(self.model_dir, s)
        ]
        return steps[-1] if steps else None

    # -- saving ------------------------------------------------------------------------------

    def save(self, step: int, state: PyTree, data_iterator: Any = None) -> None:
        """Checks the state is finite, writes this process's data state, starts orbax's save.

        Raises NonFiniteStateError (nothing is written), StorageError (disk full, read-only),
        or the error of the previous background save.
        """
        self.wait()
        bad, total = nonfinite_count(state)
        if bad:
            last = "none (no checkpoint yet)" if self.last_good is None else self.last_good
            raise NonFiniteStateError(
                f"{bad} of {total} parameter and optimizer values are nan or inf after step "
                f"{step}; stopped without saving. The last good checkpoint is step {last}; lower "
                "LEARNING_RATE and restart (it resumes from there)"
            )
        nbytes = _nbytes(state)
        if jax.process_index() == 0 and files.step_dir(self.model_dir, step).exists():
            files.remove_step(self.model_dir, step)  # left by an unfinished save of this step
            self.manager.reload()
        files.fault_point("data_state", step)
        kind = self._write_data_state(step, data_iterator)
        files.fault_point("train_state", step)
        try:
            self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        except Exception as e:
            files.raise_if_storage_error(e, self.directory, nbytes)
            raise
        self.last_good = step
        if self.config.async_save:
            self._thread = threading.Thread(
                target=self._finalize_in_background, args=(step, kind, nbytes), daemon=True
            )
            self._thread.start()
        else:
            self._finalize(step, kind, nbytes)

    def _write_data_state(self, step: int, data_iterator: Any) -> str | None:
        """This process's data state: a JSON position when the iterator has get_state (and
        data_state is "position"), else tf.data's iterator checkpoint."""
        if data_iterator is None or not self.config.save_data_iterator:
            return None
        folder = files.data_dir(self.model_dir, step)
        name = f"process_{jax.process_index()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if self.config.data_state == "position" and hasattr(data_iterator, "get_state"):
                data = json.dumps(data_iterator.get_state(), sort_keys=True).encode()
                files.atomic_write(folder / f"{name}.json", data)
                return "json"
            import tensorflow as tf  # only for iterators without get_state

            tf_iterator = getattr(data_iterator, "tf_iterator", data_iterator)
            tf.train.Checkpoint(iterator=tf_iterator).write(str(folder / name / "iterator"))
            return "tf"
        except Exception as e:
            files.raise_if_storage_error(e, folder, None)
            raise

    def _finalize_in_background(self, step: int, kind: str | None, nbytes: int) -> None:
        try:
            self._finalize(step, kind, nbytes)
        except BaseException as e:  # raised on the train thread by poll()
            self._error = e

    def _finalize(self, step: int, kind: str | None, nbytes: int) -> None:
        """Waits for orbax's commit, then (process 0) writes the manifest and prunes."""
        files.fault_point("orbax_writing", step)
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as e:
            files.raise_if_storage_error(e, self.directory, nbytes)
            raise
        files.fault_point("orbax_committed", step)
        if jax.process_index() != 0:
            return
        files.write_manifest(self.model_dir, step, jax.process_count(), kind)
        files.fault_point("manifest_written", step)
        files.apply_retention(self.model_dir, step, self.config.keep)
        self.manager.reload()  # orbax caches the step list
        files.fault_point("pruned", step)

    def poll(self) -> None:
        """Raises the error of a background save, if one failed (call once per step)."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def wait(self) -> None:
        """Blocks until the last save is committed (or raises its error)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.poll()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()

    # -- restoring ---------------------------------------------------------------------------

    def restore(self, step: int, abstract_state: PyTree, data_iterator: Any = None) -> PyTree:
        """The state at `step` onto the abstract state's shardings (any mesh), after verifying.

        Raises CheckpointError naming what is wrong when the step is incomplete or damaged.
        """
        self.wait()
        reason = files.verify(self.model_dir, step)
        if reason:
            raise CheckpointError(f"checkpoint step {step} in {self.directory}: {reason}")
        state = self._read_state(step, abstract_state)
        self._restore_data_state(step, data_iterator)
        return state

    def restore_latest(
        self, abstract_state: PyTree, data_iterator: Any = None, log: Callable = print
    ) -> tuple[PyTree, int] | None:
        """The newest complete, verified and finite step: (state, step), or None if none.

        Every step passed over gets one `log` line saying why. Newer steps that were skipped
        are cleared out of the way: unfinished saves are removed, damaged steps renamed
        `<step>.skipped-<time>` for inspection (never loaded).
        """
        self.wait()
        skipped: list[tuple[int, bool]] = []  # (step, had a manifest)
        below = None
        while True:
            step = _agree(self._next_verified(below, skipped, log))
            if step < 0:
                self._clear_skipped(None, skipped, log)
                return None
            state = self._read_state(step, abstract_state)
            bad, total = nonfinite_count(state)
            if not bad:
                break
            log(f"checkpoint step {step} skipped: {bad} of {total} values are nan or inf")
            skipped.append((step, True))
            below = step
        self._restore_data_state(step, data_iterator)
        self._clear_skipped(step, skipped, log)
        self.last_good = step
        return state, step

    def _next_verified(self, below: int | None, skipped: list, log: Callable) -> int:
        """Process 0: the newest verified step under `below` (-1: none); logs what it skips."""
        if jax.process_index() != 0:
            return -1
        for step in reversed(files.list_steps(self.model_dir)):
            if below is not None and step >= below:
                continue
            reason = files.verify(self.model_dir, step)
            if reason is None:
                return step
            log(f"checkpoint step {step} skipped: {reason}")
            skipped.append((step, files.has_manifest(self.model_dir, step)))
        return -1

    def _clear_skipped(self, restored: int | None, skipped: list, log: Callable) -> None:
        """Newer skipped steps must not block re-saving their step numbers."""
        if jax.process_index() == 0:
            for step, had_manifest in skipped:
                if restored is not None and step < restored:
                    continue
                if had_manifest or restored is None:  # damaged, or maybe an older format
                    log(f"checkpoint step {step} moved to {files.set_aside(self.model_dir, step)}")
                else:
                    files.remove_step(self.model_dir, step)
        _barrier("flan_jax_checkpoint_walk_back")
        self.manager.reload()

    def _read_state(self, step: int, abstract_state: PyTree) -> PyTree:
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:  # verified files: a mismatch with the model, not damage
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} does not fit the model: {first}"
            ) from None

    def _restore_data_state(self, step: int, data_iterator: Any) -> None:
        if data_iterator is None or not self.config.save_data_iterator:
            return
        manifest = files.read_manifest(self.model_dir, step)
        kind, folder = manifest.get("data_state"), files.data_dir(self.model_dir, step)
        name = f"process_{jax.process_index()}"
        hint = "resume with save_data_iterator=False to restart the data from its beginning"
        if kind is None:
            raise CheckpointError(f"checkpoint step {step} has no data state; {hint}")
        if kind == "json" and hasattr(data_iterator, "set_state"):
            path = folder / f"{name}.json"
            if not path.exists():
                raise CheckpointError(
                    f"checkpoint step {step} has no data state for process "
                    f"{jax.process_index()} (saved by {manifest['num_processes']}); {hint}"
                )
            data_iterator.set_state(json.loads(path.read_text()))
        elif kind == "tf":
            import tensorflow as tf  # only for checkpoints that hold a tf.data iterator

            tf_iterator = getattr(data_iterator, "tf_iterator", data_iterator)
            prefix = str(folder / name / "iterator")
            tf.train.Checkpoint(iterator=tf_iterator).read(prefix).assert_consumed()
        else:
            raise CheckpointError(
                f"checkpoint step {step} holds a {kind} data state that this data iterator "
                f"({type(data_iterator).__name__}) cannot read; {hint}"
            )


def _orbax_item_dir(path: str) -> str | None:
    """The orbax item directory inside `path` (a model dir, a checkpoints dir, or a step dir)."""
    for root in (epath.Path(path), epath.Path(path) / files.CHECKPOINTS):
        if (root / "default" / "_METADATA").exists():
            return str(root / "default")
        if root.is_dir():
            steps = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
            for step in sorted(steps, reverse=True):
                item = root / str(step) / "default"
                if (item / "_METADATA").exists():
                    return str(item)
    return None


def load_initial_params(
    path: str, abstract_params: PyTree, read_other: Callable[[str], PyTree] | None = None
) -> PyTree:
    """Parameters only, placed on `abstract_params`' shardings.

    Args:
      path: a flan_jax model dir / checkpoint dir / step dir (orbax; optimizer state is
        ignored), or a checkpoint `read_other` reads.
      abstract_params: ShapeDtypeStructs with shardings, the model's parameter tree.
      read_other: reads any other checkpoint into numpy parameters (the callers pass
        `flan_jax.convert.load_params`: converted, Hugging Face or T5X checkpoints); its
        result is shape-checked against `abstract_params`.
    """
    item = _orbax_item_dir(absolute_path(path))
    if item is not None:
        restore_args = jax.tree.map(
            lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), abstract_params
        )
        args = ocp.args.PyTreeRestore(
            item={"params": abstract_params},
            restore_args={"params": restore_args},
            partial_restore=True,
        )
        return ocp.PyTreeCheckpointer().restore(item, args=args)["params"]
    if read_other is None:
        raise FileNotFoundError(f"{path!r} holds no flan_jax checkpoint (orbax `default/` item)")
    loaded = read_other(path)
    check_param_shapes(loaded, abstract_params, f"INITIAL_CHECKPOINT_PATH {path}")
    return jax.tree.map(
        lambda x, a: jax.device_put(np.asarray(x, a.dtype), a.sharding), loaded, abstract_params
    )


def check_param_shapes(params: PyTree, expected: PyTree, source: str) -> None:
    """The one parameter shape check: raises ValueError naming missing, unexpected and
    mis-shaped parameters of `params` against `expected` (arrays or ShapeDtypeStructs)."""
    want = {
        jax.tree_util.keystr(p): tuple(np.shape(a))
        for p, a in jax.tree_util.tree_flatten_with_path(expected)[0]
    }
    got = {
        jax.tree_util.keystr(p): tuple(np.shape(x))
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    if want == got:
        return
    missing = sorted(set(want) - set(got))[:5]
    extra = sorted(set(got) - set(want))[:5]
    common = sorted(set(want) & set(got))
    wrong = [(k, got[k], want[k]) for k in common if got[k] != want[k]][:5]
    raise ValueError(
        f"{source}: parameters do not match the model config: missing {missing}, "
        f"unexpected {extra}, shape (got, want) {wrong}; check the config matches the checkpoint"
    )


def checkpoint_step(path: str) -> int:
    """The training step of a checkpoint path, for naming eval outputs.

    `.../checkpoints/N` or T5X's `checkpoint_N` give N; a flan_jax MODEL_DIR (or its
    `checkpoints/` dir) gives its latest step; converted / HF checkpoints give 0.
    """
    path = os.path.expanduser(path).rstrip("/")
    if os.path.basename(path) == "default":  # the orbax item dir inside a step dir
        path = os.path.dirname(path)
    m = re.fullmatch(r"(?:checkpoint_)?(\d+)", os.path.basename(path))
    if m:
        return int(m.group(1))
    for root in (epath.Path(path) / files.CHECKPOINTS, epath.Path(path)):
        if root.is_dir():
            steps = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
            if steps:
                return max(steps)
    return 0
