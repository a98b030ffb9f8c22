"""Checkpoint stall from the data state: the tf.data iterator save (before) vs a data position.

    python -m bench.checkpoint_stall                       # the demo's data: flan_tiny, 192/32, b16
    python -m bench.checkpoint_stall --batches 1000 --skip 100,1000   # longer

For each data state the trainer's own `Checkpointer.save` runs (async orbax of a small train
state, plus the data state per process) after `--batches` batches were read; the stall is the
wall time of that call, i.e. how long the train loop is blocked. Restore times a fresh
pipeline moved to the saved state and its first batch: for a position that is the
fast-forward (the pipeline re-reads, tokenises and packs the skipped batches), measured for
each `--skip` count so the per-batch cost is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import time

from bench import common


def _pipeline(args):
    import jax
    import numpy as np
    import seqio

    import flan_jax.registry  # noqa: F401 PLC0415
    from flan_jax.training import input_pipeline

    lengths = dict(zip(("inputs", "targets"), map(int, args.lengths.split("/")), strict=True))
    config = input_pipeline.DataConfig(
        mixture_or_task_name=args.mixture, task_feature_lengths=lengths, batch_size=args.batch_size
    )
    converter = input_pipeline.make_converter(seqio.EncDecFeatureConverter, config)
    mesh = jax.sharding.Mesh(
        np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "model")
    )
    return lambda: input_pipeline.TrainIterator(
        None, mesh, config.batch_size, config=config, converter=converter
    )


def _dir_bytes(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _restore_data(kind: str, step_dir: pathlib.Path, iterator) -> None:
    """What `Checkpointer.restore` does with the data state of process 0."""
    import tensorflow as tf

    if kind == "position":
        iterator.set_state(json.loads((step_dir / "process_0.json").read_text()))
    else:
        prefix = str(step_dir / "process_0" / "iterator")
        tf.train.Checkpoint(iterator=iterator.tf_iterator).read(prefix).assert_consumed()


def _measure(kind: str, make, args, root: pathlib.Path) -> dict:
    import jax.numpy as jnp

    from flan_jax.checkpoints import manager as checkpoints

    config = checkpoints.CheckpointConfig(data_state=kind, keep=None)
    ckpt = checkpoints.Checkpointer(str(root / kind), config)
    state = {"params": {"w": jnp.ones((256, 256))}}
    it = make()
    for _ in range(args.batches):
        next(it)
    start = time.perf_counter()
    ckpt.save(args.batches, state, it)
    stall = time.perf_counter() - start
    ckpt.wait()
    data_bytes = _dir_bytes(root / kind / "data_iterators")
    want = next(it)[1]
    fresh = make()
    start = time.perf_counter()
    _restore_data(kind, root / kind / "data_iterators" / f"step_{args.batches}", fresh)
    got = next(fresh)[1]
    restore = time.perf_counter() - start
    ckpt.close()
    same = all((got[k] == want[k]).all() for k in want)
    return {
        "data state": kind,
        "batches read": args.batches,
        "stall s": stall,
        "data state bytes": data_bytes,
        "restore s (to 1st batch)": restore,
        "exact": same,
    }


def _fast_forward(make, skips: list[int]) -> list[dict]:
    rows = []
    cold = make()
    start = time.perf_counter()
    next(cold)
    first = time.perf_counter() - start
    for n in skips:
        it = make()
        state = dict(cold.get_state(), batches_consumed=n)
        start = time.perf_counter()
        it.set_state(state)
        next(it)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "skip batches": n,
                "fast-forward s": seconds,
                "ms per skipped batch": 1000 * (seconds - first) / n,
                "fresh pipeline, 1st batch s": first,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixture", default="flan_tiny")
    parser.add_argument("--lengths", default="192/32", help="inputs/targets feature lengths")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=200, help="batches read before saving")
    parser.add_argument("--skip", default="50,200", help="fast-forward lengths to time")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    make = _pipeline(args)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            _measure(kind, make, args, pathlib.Path(tmp)) for kind in ("tf_iterator", "position")
        ]
    title = f"checkpoint data state ({args.mixture}, {args.lengths}, batch {args.batch_size})"
    common.print_table(title, rows)
    ff = _fast_forward(make, [int(n) for n in args.skip.split(",")])
    common.print_table("position restore: fast-forward cost", ff)
    print(f"\nhost cores: {common.host_cores()}")
    common.append_result("checkpoint_stall", {"args": vars(args), "save": rows, "restore": ff})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
