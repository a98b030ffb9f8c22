"""Command-line gin for entry points: --gin_file, --gin.MACRO=VALUE, required macros, multi-host.

Only entry points import this module (library code never imports gin).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence

import jax

import gin
from flan_jax import specs
from flan_jax.cli import gin_errors
from gin import config as gin_config
from gin import resource_reader

CACHE_ENV = "FLAN_JAX_COMPILATION_CACHE"


def _system_path_file_exists(path: str) -> bool:
    """gin's check for `package/file.gin` on sys.path, minus its crash on a plain folder.

    A folder named like a gin directory in the working directory (e.g. `runs/`, where the
    demo writes its MODEL_DIR) imports as a namespace package with no file, and gin's own
    check raises TypeError on it before the search paths are tried.
    """
    try:
        return resource_reader.system_path_file_exists(path)
    except TypeError:
        return False


def use_safe_system_path_check() -> None:
    """Swaps gin's sys.path existence check for `_system_path_file_exists` (idempotent).

    gin has no public way to replace the check of a registered reader, so this edits its
    reader table; `parse` calls it, nothing does at import time.
    """
    gin_config._FILE_READERS[:] = [
        (reader, _system_path_file_exists if reader is resource_reader.system_path_reader else c)
        for reader, c in gin_config._FILE_READERS
    ]


DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "flan_jax", "jax")
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
    add_compilation_cache_flag(p)
    p.add_argument(
        "--heartbeat_timeout_seconds",
        type=int,
        default=None,
        help="multi-host: how long the survivors wait for a dead process before failing "
        "(JAX's default is 100 s)",
    )
    return p


def add_compilation_cache_flag(p: argparse.ArgumentParser) -> None:
    """`--compilation_cache_dir`, read by `enable_compilation_cache` (train, eval, infer, ...)."""
    p.add_argument(
        "--compilation_cache_dir",
        default=None,
        help="JAX persistent compilation cache folder; 'none' disables it (default: "
        f"${CACHE_ENV}, else $JAX_COMPILATION_CACHE_DIR, else {DEFAULT_CACHE_DIR})",
    )


def split_gin_macros(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--gin.NAME=VALUE` (T5X's form) into bindings `NAME = VALUE`."""
    rest, flags = split_gin_flags(argv)
    return rest, [binding for _, binding in flags]


def split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Like split_gin_macros, keeping each binding's flag: [("--gin.NAME=VALUE", binding)]."""
    rest, flags = [], []
    for arg in argv:
        m = re.fullmatch(r"--gin\.([^=]+)=(.*)", arg, re.S)
        if m:
            flags.append((arg, f"{m.group(1)} = {m.group(2)}"))
        else:
            rest.append(arg)
    return rest, flags


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
    raise gin_errors.unknown_file_error(path, paths)


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


def parse(
    argv: Sequence[str],
    prog: str,
    parser: argparse.ArgumentParser | None = None,
    *,
    run_dir_macros: Sequence[str] = (),
) -> argparse.Namespace:
    """Parses flags and gin; fails naming any required macro left unset (before any compile).

    `parser` is `make_parser(prog)` with an entry point's own flags added (default: as is).
    `run_dir_macros` (eval, infer: CHECKPOINT_PATH, MODEL_DIR) name the run whose
    MODEL_DIR/config.gin supplies MODEL and TASK_FEATURE_LENGTHS where the command line
    leaves them unset (`_inherit_run_config`); `args.run_config` is its path (or None) and
    `args.run_macros` the run's RUN_MACROS.
    """
    use_safe_system_path_check()
    gin.clear_config()  # an in-process second run (tests, notebooks) starts from nothing
    rest, macro_flags = split_gin_flags(argv)
    args = (parser or make_parser(prog)).parse_args(rest)
    if not args.gin_file:
        raise ValueError("give at least one --gin_file (e.g. --gin_file=runs/finetune.gin)")
    paths = search_paths(args.gin_search_path)
    for p in paths:
        gin.add_config_file_search_path(p)
    parse_gin(
        args.gin_file, [(f"--gin_bindings={b}", b) for b in args.gin_bindings], macro_flags, paths
    )
    files = [_find(f, paths) for f in args.gin_file]
    args.run_config, args.run_macros = None, {}
    if run_dir_macros:
        bindings = [*args.gin_bindings, *(b for _, b in macro_flags)]
        args.run_config, args.run_macros = _inherit_run_config(files, bindings, run_dir_macros)
    missing = missing_macros(required_macros(args.gin_file, paths))
    if missing:
        raise ValueError(
            f"required gin macro(s) {missing} not set; pass e.g. "
            + " ".join(f"--gin.{n}=..." for n in missing)
        )
    return args


def parse_gin(
    files: Sequence[str],
    bindings: Sequence[tuple[str, str]],
    macro_flags: Sequence[tuple[str, str]],
    paths: Sequence[str],
) -> None:
    """Parses gin files, then bindings one at a time, so that an error names its flag.

    `bindings` and `macro_flags` are [(flag as typed, gin binding)]; a `--gin.NAME=...` macro
    that no loaded file defines or uses is an error (see gin_errors.check_macros).
    """
    for f in files:
        path = _find(f, paths)
        try:
            gin.parse_config_file(path)
        except (ValueError, SyntaxError, KeyError, OSError) as e:
            raise gin_errors.parse_file_error(f, e) from None
    macros = [(flag, b.split("=", 1)[0].strip()) for flag, b in macro_flags]
    gin_errors.check_macros(  # a misspelt name first: its value may be fine
        [(flag, name) for flag, name in macros if "." not in name and "/" not in name],
        list(gin_errors.loaded_texts(files, paths, _find)),
        [b for _, b in [*bindings, *macro_flags]],
    )
    for flag, binding in [*bindings, *macro_flags]:
        gin_errors.parse_binding(flag, binding)


# What eval / infer / generate take from the run they are pointed at.
RUN_MACROS = ("TASK_FEATURE_LENGTHS", "MIXTURE_OR_TASK_NAME", "MIXTURE_OR_TASK_MODULE")
NO_RUN_CONFIG = (
    "CHECKPOINT_PATH is not a `flan-jax train` MODEL_DIR with a config.gin; give a model gin "
    "(--gin_file=models/...) and --gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 128}\""
)


def macro_value(name: str, default=None):
    """The value of macro `name` as `%name` gives it, or `default` when it is unset.

    A macro is evaluated in its own scope, so an operative config's `MODEL/...`-scoped
    bindings (what `flan-jax train` writes to config.gin) apply to `MODEL`.
    """
    try:
        gin.query_parameter(f"%{name}")
    except ValueError:
        return default
    return gin_config.ConfigurableReference(f"{name}/gin.macro", True).scoped_configurable_fn()


def _is_set(name: str) -> bool:
    try:
        gin.query_parameter(f"%{name}")
    except ValueError:
        return False
    return True


def find_run_config(paths: Sequence[str]) -> str | None:
    """MODEL_DIR/config.gin of the first path that is a run's MODEL_DIR, its checkpoints/ or a
    step dir in it (None: none is)."""
    import tensorflow as tf

    for path in paths:
        if not isinstance(path, str) or not path:
            continue
        path = os.path.expanduser(path).rstrip("/")
        candidates = [path]
        if os.path.basename(path) == "checkpoints":
            candidates.append(os.path.dirname(path))
        if os.path.basename(os.path.dirname(path)) == "checkpoints":
            candidates.append(os.path.dirname(os.path.dirname(path)))
        for candidate in candidates:
            config = os.path.join(candidate, "config.gin")
            if tf.io.gfile.exists(config):
                return config
    return None


def _inherit_run_config(
    files: Sequence[str], bindings: Sequence[str], dir_macros: Sequence[str]
) -> tuple[str | None, dict]:
    """Re-parses the command line on top of the run's config.gin (see `parse`).

    The run's config goes first, so every file and binding on the command line overrides it;
    a command line that defines MODEL itself (a model gin) gets none of the run's bindings
    (its `MODEL/`-scoped ones would shadow the model gin's), only TASK_FEATURE_LENGTHS.
    """
    path = find_run_config([gin.query_parameter(f"%{n}") for n in dir_macros if _is_set(n)])
    if path is None:
        return None, {}
    own_model = _is_set("MODEL")
    gin.clear_config()
    gin.parse_config_file(path)
    run_macros = {n: macro_value(n) for n in RUN_MACROS}
    if own_model:
        gin.clear_config()
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
    lengths = run_macros["TASK_FEATURE_LENGTHS"]
    if not _is_set("TASK_FEATURE_LENGTHS") and lengths is not None:
        gin.parse_config(f"TASK_FEATURE_LENGTHS = {dict(lengths)!r}")
    return path, run_macros


def require_macros(names: Sequence[str], prog: str, hint: str) -> None:
    """Fails (before any compile) naming the macros in `names` that nothing set."""
    unset = [n for n in names if not _is_set(n)]
    if unset:
        raise ValueError(f"gin macro(s) {unset} not set; {hint}")


def compilation_cache_dir(
    flag: str | None, environ: Mapping[str, str], jax_default: str | None
) -> str | None:
    """The persistent compilation cache folder, or None when disabled.

    First set wins: the --compilation_cache_dir flag, $FLAN_JAX_COMPILATION_CACHE, JAX's own
    setting ($JAX_COMPILATION_CACHE_DIR, given as `jax_default`), then ~/.cache/flan_jax/jax.
    "none" or "" (flag or $FLAN_JAX_COMPILATION_CACHE) disables the cache.
    """
    for value in (flag, environ.get(CACHE_ENV)):
        if value is not None:
            return None if value.strip().lower() in ("", "none") else os.path.expanduser(value)
    return jax_default or os.path.expanduser(DEFAULT_CACHE_DIR)


def enable_compilation_cache(args: argparse.Namespace) -> str | None:
    """Points JAX's persistent compilation cache at its folder; call before anything compiles."""
    path = compilation_cache_dir(
        args.compilation_cache_dir, os.environ, jax.config.jax_compilation_cache_dir
    )
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def initialize_distributed(args: argparse.Namespace) -> None:
    """jax.distributed.initialize(): explicit coordinator flags, or auto-detection (Cloud TPU)."""
    extra = {}
    if args.heartbeat_timeout_seconds is not None:
        extra["heartbeat_timeout_seconds"] = args.heartbeat_timeout_seconds
    if args.coordinator_address:
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
            **extra,
        )
    elif args.multihost:
        jax.distributed.initialize(**extra)


def write_config(model_dir: str, text: str) -> None:
    """MODEL_DIR/config.gin (process 0), written atomically (never a truncated file)."""
    if jax.process_index() != 0:
        return
    from etils import epath

    from flan_jax.checkpoints import files as checkpoint_files

    epath.Path(model_dir).mkdir(parents=True, exist_ok=True)
    checkpoint_files.atomic_write(os.path.join(model_dir, "config.gin"), text.encode())
