"""One trainer per MODEL_DIR: `MODEL_DIR/trainer.lock` names the holder (host, pid, start).

Local paths hold a kernel lock (flock) on the file as well, so a crashed holder frees it at
once; its leftover contents are then reported as a stale lock broken. gs:// paths have no
kernel lock: a lock of a dead pid on this host is broken, one from another host is refused.
Only process 0 of a multi-process job takes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time

from etils import epath

from flan_jax.checkpoints.files import atomic_write, is_local

LOCK_NAME = "trainer.lock"


class LockHeldError(RuntimeError):
    """Another trainer holds MODEL_DIR's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _describe(info: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.get("start_time", 0)))
    return f"host {info.get('host')} pid {info.get('pid')} (started {started})"


class RunLock:
    """Held from `acquire()` to `release()`; `messages` says whether a stale lock was broken."""

    def __init__(self, model_dir: str):
        self.path = epath.Path(model_dir) / LOCK_NAME
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": time.time()}
        self.messages: list[str] = []
        self._fd: int | None = None

    def _refuse(self, info: dict, why: str) -> LockHeldError:
        return LockHeldError(
            f"MODEL_DIR {self.path.parent} is in use by another trainer: {_describe(info)}{why}. "
            f"Stop it first, or use another MODEL_DIR; if it is gone, delete {self.path}"
        )

    def _judge(self, previous: dict | None) -> None:
        """Raises if `previous` (the file's contents) may still be running; else notes it."""
        if not previous:
            return
        if previous.get("host") != self.info["host"]:
            raise self._refuse(previous, " on another host (its pid cannot be checked from here)")
        if previous.get("pid") != os.getpid() and _pid_alive(int(previous.get("pid", -1))):
            raise self._refuse(previous, "")
        self.messages.append(
            f"broke the stale lock {self.path} of {_describe(previous)}: that process is gone"
        )

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if is_local(self.path):
            self._acquire_local()
        else:
            self._judge(_parse(self.path.read_text()) if self.path.exists() else None)
            atomic_write(self.path, json.dumps(self.info).encode())
        return self

    def _acquire_local(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 1 << 16, 0).decode(errors="replace")
            os.close(fd)
            raise self._refuse(_parse(text), "") from None
        try:
            self._judge(_parse(os.pread(fd, 1 << 16, 0).decode(errors="replace")))
        except BaseException:
            os.close(fd)
            raise
        data = json.dumps(self.info).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Empties the file (an empty lock is free); the file stays, so flock stays sound."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # also drops the flock
            self._fd = None
        elif self.path.exists():
            self.path.write_text("")

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: dict[str, RunLock] = {}


@contextlib.contextmanager
def held(model_dir: str, log=None):
    """Holds MODEL_DIR's lock inside the block (process 0; a no-op if this process holds it).

    Raises LockHeldError when another trainer holds it.
    """
    import jax

    key = os.path.abspath(model_dir) if is_local(model_dir) else model_dir
    if key in _HELD or jax.process_index() != 0:
        yield _HELD.get(key)
        return
    lock = RunLock(model_dir).acquire()
    for message in lock.messages:
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(message)
    _HELD[key] = lock
    try:
        yield lock
    finally:
        del _HELD[key]
        lock.release()


def _parse(text: str) -> dict | None:
    try:
        info = json.loads(text) if text.strip() else None
    except ValueError:  # a lock half-written by a killed trainer
        return None
    return info if isinstance(info, dict) else None
