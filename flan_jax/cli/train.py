"""`flan-jax train` (`python -m flan_jax.cli.train`): parse gin flags, hold MODEL_DIR's lock,
write config.gin and run flan_jax.training.train.train."""

from __future__ import annotations

import sys

import gin
from flan_jax.checkpoints import manager as checkpoints
from flan_jax.checkpoints import run_lock
from flan_jax.cli import gin_flags
from flan_jax.training import train


def main(argv: list[str] | None = None) -> int:
    """`flan-jax train --gin_file=runs/finetune.gin --gin.MODEL_DIR=...`; returns the exit code."""
    watcher, _ = train.PreemptionWatcher.install()  # first: a SIGTERM from here on is handled
    try:
        return _main(argv)
    finally:
        watcher.close()


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = gin_flags.make_parser("flan-jax train")
    parser.add_argument(
        "--precompile",
        action="store_true",
        help="compile the train step (AOT, real shardings), print memory per device and "
        "FLOPs per step, and exit without reading data or training",
    )
    args = gin_flags.parse(argv, "flan-jax train", parser)
    gin_flags.enable_compilation_cache(args)  # before anything compiles
    gin_flags.initialize_distributed(args)
    model_dir = gin.query_parameter("%MODEL_DIR")
    try:
        with run_lock.held(model_dir):  # before config.gin: a refused trainer writes nothing
            gin_flags.write_config(model_dir, gin.config_str())
            try:
                gin.get_configurable(train.train)(precompile=args.precompile)
            except OSError:
                raise  # disk full or read-only: the config cannot be written either
            except BaseException:
                gin_flags.write_config(model_dir, gin.operative_config_str())
                raise
            gin_flags.write_config(model_dir, gin.operative_config_str())
    except (run_lock.LockHeldError, checkpoints.CheckpointError) as e:
        print(f"flan-jax train: {e}", file=sys.stderr)
        return 2
    except (FloatingPointError, checkpoints.StorageError) as e:
        print(f"flan-jax train: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
