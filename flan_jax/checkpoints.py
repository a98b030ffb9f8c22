"""Checkpoints: the orbax manager for the train state, per-process tf.data iterator state,
and parameter-only loading of an initial checkpoint (ours, or converted HF/T5X)."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

PyTree = Any
_ITER_DIR = "data_iterators"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """When and how to checkpoint.

    Attributes:
      period: save every `period` steps (and always at the end, on SIGTERM).
      keep: number of most recent checkpoints to keep (None: all).
      async_save: write in the background while training continues.
      save_data_iterator: save each process's tf.data iterator with each checkpoint,
        so that a resumed run sees exactly the examples it would have.
    """

    period: int = 1000
    keep: int | None = 3
    async_save: bool = True
    save_data_iterator: bool = True

    def __post_init__(self):
        if self.period < 1:
            raise ValueError(f"CHECKPOINT_PERIOD ({self.period}) must be >= 1")
        if self.keep is not None and self.keep < 1:
            raise ValueError(f"keep ({self.keep}) must be >= 1 or None")


def absolute_path(path: str) -> str:
    """`path` made absolute (orbax refuses relative paths); URLs such as gs:// stay as they are."""
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


class Checkpointer:
    """Saves and restores `{step, params, opt_state}` plus the data iterator under model_dir."""

    def __init__(self, model_dir: str, config: CheckpointConfig):
        self.config = config
        model_dir = absolute_path(model_dir)
        self.directory = os.path.join(model_dir, "checkpoints")
        self._iter_root = os.path.join(model_dir, _ITER_DIR)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.keep, enable_async_checkpointing=config.async_save, create=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def _iter_prefix(self, step: int) -> str:
        return os.path.join(
            self._iter_root, f"step_{step}", f"process_{jax.process_index()}", "iterator"
        )

    def save(self, step: int, state: PyTree, data_iterator: Any = None) -> None:
        """Saves the iterator (synchronously, per process) and then the state (orbax, collective).

        The orbax step only becomes visible once finalized, so a crash mid-save leaves the
        previous (step, iterator) pair as the latest.
        """
        if data_iterator is not None and self.config.save_data_iterator:
            tf.train.Checkpoint(iterator=data_iterator).write(self._iter_prefix(step))
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self._remove_stale_iterators(keep_from=step)

    def _remove_stale_iterators(self, keep_from: int) -> None:
        if not tf.io.gfile.exists(self._iter_root):
            return
        kept = set(self.manager.all_steps())
        for name in tf.io.gfile.listdir(self._iter_root):
            m = re.fullmatch(r"step_(\d+)/?", name)
            if m and int(m.group(1)) < keep_from and int(m.group(1)) not in kept:
                step_dir = os.path.join(self._iter_root, name.rstrip("/"))
                path = os.path.join(step_dir, f"process_{jax.process_index()}")
                if tf.io.gfile.exists(path):
                    tf.io.gfile.rmtree(path)
                if not tf.io.gfile.listdir(step_dir):  # the last process out removes the step
                    tf.io.gfile.rmtree(step_dir)

    def restore(self, step: int, abstract_state: PyTree, data_iterator: Any = None) -> PyTree:
        """Restores the state at `step` onto the abstract state's shardings (any mesh)."""
        state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        if data_iterator is not None and self.config.save_data_iterator:
            prefix = self._iter_prefix(step)
            if not tf.io.gfile.exists(prefix + ".index"):
                raise FileNotFoundError(
                    f"checkpoint step {step} has no data iterator state at {prefix} for process "
                    f"{jax.process_index()}; resume with save_data_iterator=False to restart the "
                    "data"
                )
            tf.train.Checkpoint(iterator=data_iterator).read(prefix).assert_consumed()
        return state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _orbax_item_dir(path: str) -> str | None:
    """The orbax item directory inside `path` (a model dir, a checkpoints dir, or a step dir)."""
    for root in (path, os.path.join(path, "checkpoints")):
        if tf.io.gfile.exists(os.path.join(root, "default", "_METADATA")):
            return os.path.join(root, "default")
        if tf.io.gfile.isdir(root):
            steps = [
                int(n.rstrip("/")) for n in tf.io.gfile.listdir(root) if n.rstrip("/").isdigit()
            ]
            for step in sorted(steps, reverse=True):
                item = os.path.join(root, str(step), "default")
                if tf.io.gfile.exists(os.path.join(item, "_METADATA")):
                    return item
    return None


def load_initial_params(path: str, abstract_params: PyTree) -> PyTree:
    """Parameters only, placed on `abstract_params`' shardings.

    `path` is a flan_jax model dir / checkpoint dir / step dir (orbax; optimizer state is
    ignored), or anything `flan_jax.convert.load_params` reads (HF or T5X checkpoints).
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
    from flan_jax import convert  # optional: conversion pulls in extra dependencies

    loaded = convert.load_params(path)
    _check_same_shapes(loaded, abstract_params, path)
    return jax.tree.map(
        lambda x, a: jax.device_put(np.asarray(x, a.dtype), a.sharding), loaded, abstract_params
    )


def _check_same_shapes(loaded: PyTree, abstract: PyTree, path: str) -> None:
    want = {
        jax.tree_util.keystr(p): a.shape
        for p, a in jax.tree_util.tree_flatten_with_path(abstract)[0]
    }
    got = {
        jax.tree_util.keystr(p): np.shape(x)
        for p, x in jax.tree_util.tree_flatten_with_path(loaded)[0]
    }
    if want != got:
        missing = sorted(set(want) - set(got))[:5]
        extra = sorted(set(got) - set(want))[:5]
        wrong = [(k, got[k], want[k]) for k in sorted(set(want) & set(got)) if got[k] != want[k]][
            :5
        ]
        raise ValueError(
            f"INITIAL_CHECKPOINT_PATH {path}: parameters do not match the model: "
            f"missing {missing}, "
            f"unexpected {extra}, shape (got, want) {wrong}; check the model gin config"
        )
