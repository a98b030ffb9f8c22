"""One process of a multi-process (or the single-process reference) tiny training run.

Launched by tests/multihost_test.py, never collected by pytest. With --num_processes > 1
it joins the job through `jax.distributed.initialize` (CPU collectives over gloo), as
each host of a TPU slice does, then runs `flan_jax.training.train.train` on a global mesh:

    python tests/multihost_worker.py --model_dir D --steps 8 --local_devices 2 \
        --num_processes 2 --process_id 0 --port 12345

Writes MODEL_DIR/data/process_<i>.jsonl: per step, the example ids of this process's
local batch and its fingerprint (the trainer records the fingerprints of the batches it
trained on in MODEL_DIR/batches/, so the test can tie the two together); with
--record_mixture also data/mixture_process_<i>.jsonl, the ids of a two-task mixture's local
batches mixed in one pipeline (`DataConfig.mixing='one_pipeline'`).
"""

# ruff: noqa: E402  (JAX's device count is set from the flags before anything imports JAX work)
from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model_dir", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--local_devices", type=int, required=True)
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--mesh", default="1,2,2", help="data,fsdp,model sizes")
    p.add_argument(
        "--dcn_mesh", default=None, help="processes spanned per axis (make_mesh's dcn_shape)"
    )
    p.add_argument("--batch_size", type=int, default=8, help="global batch")
    p.add_argument("--checkpoint_period", type=int, default=3)
    p.add_argument(
        "--heartbeat_timeout", type=int, default=5, help="seconds; a dead peer fails the job"
    )
    p.add_argument(
        "--crash_at_step", type=int, default=0, help="SIGKILL self when fetching this step's batch"
    )
    p.add_argument(
        "--record_mixture", action="store_true", help="also write data/mixture_process_<i>.jsonl"
    )
    return p.parse_args(argv)


ARGS = parse_args(sys.argv[1:]) if __name__ == "__main__" else None
if ARGS is not None:  # devices must be set before JAX initialises its backend
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", ARGS.local_devices)

import dataclasses
import json

import jax
import numpy as np
import seqio
import tensorflow as tf

from flan_jax import partitioning
from flan_jax.checkpoints import manager as checkpoints
from flan_jax.model import models, network
from flan_jax.training import input_pipeline, optimizer, train, train_state

TASK = "multihost_test_addition"
MIXTURE = "multihost_test_mixture"  # two flan_jax-style tasks, mixed in one pipeline
MIXTURE_BASES = (0, 500)  # task k's examples are ids MIXTURE_BASES[k] + 0..MIXTURE_SIZE-1
MIXTURE_SIZE = 100
NUM_EXAMPLES = 256
FEATURE_LENGTHS = {"inputs": 16, "targets": 8}
VOCAB = seqio.ByteVocabulary()
FEATURES = {k: seqio.Feature(VOCAB, add_eos=True) for k in ("inputs", "targets")}
PREPROCESSORS = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos]


def example_text(i: int) -> tuple[str, str]:
    """Example i: inputs 'q017: 17+34', targets '51' (the id is readable from the tokens)."""
    return f"q{i:03d}: {i}+{2 * i % 97}", str(i + 2 * i % 97)


def example_id(input_tokens: np.ndarray) -> int:
    """Reads the id back from a row of encoder_input_tokens (ByteVocabulary: byte + 3)."""
    text = VOCAB.decode([int(t) for t in input_tokens if t > 0])
    return int(text[1:4])


def _source(split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
    del split, shuffle_files, seed
    pairs = [example_text(i) for i in range(NUM_EXAMPLES)]
    return tf.data.Dataset.from_tensor_slices(
        {"inputs": [a for a, _ in pairs], "targets": [b for _, b in pairs]}
    )


def register_task() -> None:
    """A plain seqio Task; seqio shards it per host (round-robin) from ShardInfo."""
    if TASK in seqio.TaskRegistry.names():
        return
    seqio.TaskRegistry.add(
        TASK,
        source=seqio.FunctionDataSource(_source, splits=["train"]),
        preprocessors=PREPROCESSORS,
        output_features=FEATURES,
    )


def register_mixture() -> None:
    """Two tasks over `tasks.RenderedSource` (the source of every flan_jax spec: read raw and
    sharded at the source by the one-pipeline mixer) and their mixture at equal rates."""
    if MIXTURE in seqio.MixtureRegistry.names():
        return
    from flan_jax.data import tasks

    names = []
    for base in MIXTURE_BASES:

        def source(split, shuffle_files=False, seed=None, base=base):
            pairs = [example_text(base + i) for i in range(MIXTURE_SIZE)]
            return tf.data.Dataset.from_tensor_slices(
                {"inputs": [a for a, _ in pairs], "targets": [b for _, b in pairs]}
            )

        name = f"{MIXTURE}_{base}"
        seqio.TaskRegistry.add(
            name,
            source=tasks.RenderedSource(source, splits=["train"], shuffles_splits=True),
            preprocessors=PREPROCESSORS,
            output_features=FEATURES,
        )
        names.append(name)
    seqio.MixtureRegistry.add(MIXTURE, names, default_rate=1.0)


def record_mixture_data(args: argparse.Namespace, model, batch_size: int) -> None:
    """MODEL_DIR/data/mixture_process_<i>.jsonl: the example ids of each local batch of
    `MIXTURE`, unshuffled and mixed in one pipeline."""
    register_mixture()
    data = dataclasses.replace(
        data_config(batch_size), mixture_or_task_name=MIXTURE, mixing="one_pipeline"
    )
    record_local_data(args, model, data, name="mixture_process")


def tiny_model() -> models.EncoderDecoderModel:
    """A 1+1-layer T5 v1.1 with no dropout (row order inside a batch must not matter)."""
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


def data_config(batch_size: int) -> input_pipeline.DataConfig:
    """No shuffling or packing: step s trains on examples [s*B, (s+1)*B) in any host layout."""
    return input_pipeline.DataConfig(
        mixture_or_task_name=TASK,
        task_feature_lengths=FEATURE_LENGTHS,
        batch_size=batch_size,
        shuffle=False,
        pack=False,
        seed=0,
    )


def record_local_data(args: argparse.Namespace, model, data, name: str = "process") -> None:
    """MODEL_DIR/data/<name>_<i>.jsonl: the example ids and fingerprint of each local batch."""
    converter = model.feature_converter_cls(pack=data.pack)
    ds = input_pipeline.get_train_dataset(data, converter)
    path = os.path.join(args.model_dir, "data", f"{name}_{jax.process_index()}.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for step, local in enumerate(ds.take(args.steps).as_numpy_iterator(), start=1):
            ids = [example_id(row) for row in local["encoder_input_tokens"]]
            record = {"step": step, "ids": ids, "hash": input_pipeline.fingerprint(local)}
            f.write(json.dumps(record) + "\n")


def crash_at(step: int, model_dir: str, checkpoint_period: int) -> None:
    """Kills this process (SIGKILL, like a lost host) when the trainer fetches batch `step`,
    once the last checkpoint before it is committed (async saves finish in the background)."""
    original = input_pipeline.make_global_batch
    fetched = 0
    committed = os.path.join(  # a step is complete once its manifest is written (last)
        model_dir,
        "checkpoints",
        str((step - 1) // checkpoint_period * checkpoint_period),
        "manifest.json",
    )

    def make_global_batch(local, mesh, global_batch_size):
        nonlocal fetched
        fetched += 1
        if fetched == step:
            deadline = time.monotonic() + 120
            while not os.path.exists(committed) and time.monotonic() < deadline:
                time.sleep(0.1)
            print(f"process {jax.process_index()}: crashing at step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(local, mesh, global_batch_size)

    input_pipeline.make_global_batch = make_global_batch


def make_mesh(args: argparse.Namespace):
    """The run's mesh; with --dcn_mesh, checks each process's devices form one block."""
    shape = tuple(int(s) for s in args.mesh.split(","))
    if args.dcn_mesh is None:
        return partitioning.make_mesh(shape)
    dcn = tuple(int(s) for s in args.dcn_mesh.split(","))
    mesh = partitioning.make_mesh(shape, dcn_shape=dcn)
    owners = np.vectorize(lambda d: d.process_index)(mesh.devices)
    index = np.indices(owners.shape)  # the process is the outer part of each spanned axis
    expected = np.ravel_multi_index(tuple(index[a] // shape[a] for a in range(len(dcn))), dcn)
    assert (owners == expected).all(), owners
    return mesh


def main(args: argparse.Namespace) -> int:
    if args.num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{args.port}",
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=60,
            heartbeat_timeout_seconds=args.heartbeat_timeout,
        )
    register_task()
    model, data = tiny_model(), data_config(args.batch_size)
    record_local_data(args, model, data)
    if args.record_mixture:
        record_mixture_data(args, model, args.batch_size)
    if args.crash_at_step:
        crash_at(args.crash_at_step, args.model_dir, args.checkpoint_period)
    train.train(
        model=model,
        data=data,
        mesh=make_mesh(args),
        optimizer_config=optimizer.OptimizerConfig(learning_rate=1e-2),
        checkpoint=checkpoints.CheckpointConfig(period=args.checkpoint_period, keep=None),
        run=train.RunConfig(
            model_dir=args.model_dir,
            train_steps=args.steps,
            log_period=1,
            record_batch_fingerprints=True,
        ),
        step_config=train_state.StepConfig(),
    )
    print(f"process {jax.process_index()}: done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(ARGS))
