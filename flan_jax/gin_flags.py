"""Command-line gin for entry points: --gin_file, --gin.MACRO=VALUE, required macros, multi-host.

Only entry points import this module (library code never imports gin).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence

import jax

import gin
from flan_jax import specs

_REQUIRED = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*%gin\.REQUIRED\s*(#.*)?$", re.M)


def make_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Run with gin files and bindings (T5X-style flags)."
    )
    p.add_argument(
        "--gin_file",
        action="append",
        default=[],
        help="gin file (repeatable); runs/finetune.gin etc.",
    )
    p.add_argument(
        "--gin_bindings", action="append", default=[], help="a gin binding, e.g. MODEL_DIR='/tmp/x'"
    )
    p.add_argument(
        "--gin_search_path", action="append", default=[], help="extra folder to find gin files in"
    )
    p.add_argument("--coordinator_address", default=None, help="multi-host: host:port of process 0")
    p.add_argument(
        "--num_processes", type=int, default=None, help="multi-host: number of processes"
    )
    p.add_argument("--process_id", type=int, default=None, help="multi-host: this process's index")
    p.add_argument(
        "--multihost",
        action="store_true",
        help="call jax.distributed.initialize() (auto-detects Cloud TPU)",
    )
    return p


def split_gin_macros(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--gin.NAME=VALUE` (T5X's form) into bindings `NAME = VALUE`."""
    rest, bindings = [], []
    for arg in argv:
        m = re.fullmatch(r"--gin\.([^=]+)=(.*)", arg, re.S)
        if m:
            bindings.append(f"{m.group(1)} = {m.group(2)}")
        else:
            rest.append(arg)
    return rest, bindings


def search_paths(extra: Sequence[str] = ()) -> list[str]:
    """Where gin files are looked up: extra paths, the working directory, the shipped gin/."""
    return [*extra, os.getcwd(), str(specs.spec_dir("gin"))]


def _find(path: str, paths: Sequence[str]) -> str:
    if os.path.isabs(path) or os.path.exists(path):
        return path
    for root in paths:
        candidate = os.path.join(root, path)
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"gin file {path!r} not found in {list(paths)}")


def required_macros(files: Sequence[str], paths: Sequence[str]) -> list[str]:
    """Macros declared `NAME = %gin.REQUIRED` in the files and the files they include."""
    names, seen, todo = [], set(), list(files)
    while todo:
        f = _find(todo.pop(0), paths)
        if f in seen:
            continue
        seen.add(f)
        text = open(f).read()
        names += [m.group(1) for m in _REQUIRED.finditer(text)]
        todo += re.findall(r"^\s*include\s+['\"]([^'\"]+)['\"]", text, re.M)
    return list(dict.fromkeys(names))


def missing_macros(names: Sequence[str]) -> list[str]:
    return [n for n in names if repr(gin.query_parameter(f"%{n}")) == "%gin.REQUIRED"]


def parse(argv: Sequence[str], prog: str) -> argparse.Namespace:
    """Parses flags and gin; fails naming any required macro left unset (before any compile)."""
    rest, macro_bindings = split_gin_macros(argv)
    args = make_parser(prog).parse_args(rest)
    if not args.gin_file:
        raise SystemExit(
            f"{prog}: give at least one --gin_file (e.g. --gin_file=runs/finetune.gin)"
        )
    paths = search_paths(args.gin_search_path)
    for p in paths:
        gin.add_config_file_search_path(p)
    gin.parse_config_files_and_bindings(
        [_find(f, paths) for f in args.gin_file],
        [*args.gin_bindings, *macro_bindings],
        finalize_config=False,
    )
    missing = missing_macros(required_macros(args.gin_file, paths))
    if missing:
        raise SystemExit(
            f"{prog}: required gin macro(s) {missing} not set; pass e.g. "
            + " ".join(f"--gin.{n}=..." for n in missing)
        )
    return args


def initialize_distributed(args: argparse.Namespace) -> None:
    """jax.distributed.initialize(): explicit coordinator flags, or auto-detection (Cloud TPU)."""
    if args.coordinator_address:
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    elif args.multihost:
        jax.distributed.initialize()


def write_config(model_dir: str, text: str) -> None:
    """MODEL_DIR/config.gin (process 0)."""
    if jax.process_index() != 0:
        return
    import tensorflow as tf

    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(os.path.join(model_dir, "config.gin"), "w") as f:
        f.write(text)
