"""The entry points: the `flan-jax` console script (a thin dispatcher to each subcommand's
`main(argv)`, defined here) and one module per subcommand. This package holds the only
modules that import gin; the layers below it take narrow frozen configs."""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading
from collections.abc import Sequence

# subcommand -> module exposing `main(argv: list[str]) -> int`
COMMANDS = {
    "train": "flan_jax.cli.train",
    "eval": "flan_jax.cli.evaluate",
    "infer": "flan_jax.cli.infer",
    "generate": "flan_jax.cli.generate",
    "convert": "flan_jax.cli.convert",
    "tasks": "flan_jax.cli.data",
    "mixture": "flan_jax.cli.data",
    "demo": "flan_jax.cli.demo",
    "report": "flan_jax.cli.report",
    "cache": "flan_jax.cli.cache",
}
PASS_SUBCOMMAND = ("tasks", "mixture")  # flan_jax.cli.data parses these words itself
# What bad input raises (flags, gin, specs, data files, names): reported in two lines, exit 2.
# The library raises these with messages that name the value and the fix; a bug deep in
# JAX/TF raises other types and keeps its traceback.
BAD_INPUT = (ValueError, FileNotFoundError, SyntaxError, KeyError)
TRACEBACK_ENV = "FLAN_JAX_TRACEBACK"
# TensorFlow/absl/XLA start-up lines that say nothing to a user.
NOISE = (
    "WARNING: All log messages before absl::InitializeLog()",
    "oneDNN custom operations are on",
    "Could not find cuda drivers",
    "failed call to cuInit",
    "Unable to register cu",
    "computation placer already registered",
    "TF-TRT Warning",
    "This TensorFlow binary is optimized",
    "Path not found: ",  # gin trying each search path in turn before it finds a file
)


class _FilteredStderr:
    """Drops known start-up noise lines written through Python's sys.stderr."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if any(marker in text for marker in NOISE):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def quiet_tensorflow() -> None:
    """Sets TF's log level before TF is imported and filters what still reaches stderr."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if not isinstance(sys.stderr, _FilteredStderr):
        sys.stderr = _FilteredStderr(sys.stderr)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass


def filter_native_stderr() -> None:
    """Routes file descriptor 2 through a filter thread, so that noise printed by C++ (TF,
    XLA, absl) is dropped too; only for the console script (tests capture stderr themselves).
    """
    read_fd, write_fd = os.pipe()
    original = os.dup(2)
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for line in pipe:
                if not any(marker.encode() in line for marker in NOISE):
                    os.write(original, line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last writer: the pump sees EOF and drains
        thread.join(timeout=2)

    atexit.register(restore)


def usage() -> str:
    return "usage: flan-jax {" + ",".join(COMMANDS) + "} [args...]  (flan-jax CMD --help)"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatches `flan-jax CMD args...` to CMD's module; returns its exit code."""
    from_console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, list(COMMANDS), n=3)
        print(
            f"error: unknown command {command!r}; did you mean {close}?\n{usage()}", file=sys.stderr
        )
        return 2
    if from_console:
        filter_native_stderr()
    quiet_tensorflow()
    module = importlib.import_module(COMMANDS[command])
    try:
        result = module.main(argv if command in PASS_SUBCOMMAND else rest)
    except BAD_INPUT as e:
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"flan-jax {command}: error: {short_message(e)}", file=sys.stderr)
        print(f"(set {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
        return 2
    return int(result or 0)


def short_message(error: BaseException) -> str:
    """An exception's message without gin's appended "In call to configurable ..." lines."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    kept = []
    for line in lines:
        if line.lstrip().startswith(("In call to configurable", "In bindings string", "In file")):
            break
        kept.append(line.strip())
    return " ".join(kept[:2]) or type(error).__name__
