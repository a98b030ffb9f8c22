"""The files of a checkpoint step: listing, the checksummed manifest that commits a step,
verification, retention, atomic writes and one-line storage errors (local paths or gs://).

A step is complete when `checkpoints/<step>/manifest.json` exists; it is written last, after
orbax has committed the train state and every process has written its data state, and it
holds the size and sha256 of every file of the step. Nothing reads a step it does not verify.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time

from etils import epath

MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
DATA_STATE = "data_iterators"
SKIPPED_SUFFIX = ".skipped"
_CHUNK = 8 << 20
# errno values and the words tensorstore / gcsfs use for them: the write can never succeed
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_STORAGE_WORDS = ("No space left on device", "Disk quota exceeded", "Read-only file system")


def fault_point(phase: str, step: int) -> None:
    """Where a save passes `phase`: a no-op that the fault-drill tests replace with a kill."""


class StorageError(OSError):
    """A checkpoint or log file cannot be written (disk full, read-only, no permission)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)  # one argument: str() is the message alone
        self.errno = code


def is_local(path: str | os.PathLike) -> bool:
    return "://" not in os.fspath(path)


def storage_error(exc: BaseException, path, nbytes: int | None) -> StorageError | None:
    """`exc` (or an exception it was raised from) as a one-line StorageError, else None."""
    seen = exc
    while seen is not None:
        code = getattr(seen, "errno", None)
        text = str(seen)
        if code in _STORAGE_ERRNOS or any(w in text for w in _STORAGE_WORDS):
            reason = os.strerror(code) if code in _STORAGE_ERRNOS else _first_word_match(text)
            need = "" if nbytes is None else f"; {nbytes} bytes ({nbytes / 2**20:.1f} MiB) needed"
            return StorageError(
                f"cannot write {path}: {reason}{need}. Free space, or point MODEL_DIR at a "
                "writable disk, and restart (it resumes from the last complete checkpoint)",
                code or errno.EIO,
            )
        seen = seen.__cause__ or seen.__context__
    return None


def raise_if_storage_error(exc: BaseException, path, nbytes: int | None) -> None:
    """Raises `exc` as a one-line StorageError (no traceback chain) if it is one."""
    error = storage_error(exc, path, nbytes)
    if error is not None:
        raise error from None


def _first_word_match(text: str) -> str:
    return next(w for w in _STORAGE_WORDS if w in text)


def atomic_write(path, data: bytes) -> None:
    """Writes `path` all at once: a temporary file beside it, then a rename over it."""
    path = epath.Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        if is_local(path):
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            tmp.write_bytes(data)
            tmp.replace(path)
    except OSError as e:
        _remove_quietly(tmp)
        raise_if_storage_error(e, path, len(data))
        raise


def _remove_quietly(path: epath.Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def step_dir(model_dir, step: int) -> epath.Path:
    return epath.Path(model_dir) / CHECKPOINTS / str(step)


def data_dir(model_dir, step: int) -> epath.Path:
    return epath.Path(model_dir) / DATA_STATE / f"step_{step}"


def list_steps(model_dir) -> list[int]:
    """Step numbers of every `checkpoints/<step>` folder, complete or not, ascending."""
    root = epath.Path(model_dir) / CHECKPOINTS
    if not root.exists():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())


def has_manifest(model_dir, step: int) -> bool:
    return (step_dir(model_dir, step) / MANIFEST).exists()


def _files_under(root: epath.Path):
    if not root.exists():
        return
    for dirpath, _, names in root.walk():
        for name in names:
            yield epath.Path(dirpath) / name


def _digest(path: epath.Path) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def write_manifest(model_dir, step: int, num_processes: int, data_kind: str | None) -> None:
    """Commits `step`: size and sha256 of every file of its train state and data state."""
    model_dir = epath.Path(model_dir)
    files = [
        p
        for root in (step_dir(model_dir, step), data_dir(model_dir, step))
        for p in _files_under(root)
        if p.name != MANIFEST and not p.name.startswith(f".{MANIFEST}.tmp")
    ]
    entries = []
    for p in sorted(files, key=str):
        size, sha = _digest(p)
        entries.append({"path": str(p.relative_to(model_dir)), "bytes": size, "sha256": sha})
    record = {
        "format": 1,
        "step": step,
        "time": time.time(),
        "num_processes": num_processes,
        "data_state": data_kind,
        "files": entries,
    }
    atomic_write(step_dir(model_dir, step) / MANIFEST, json.dumps(record, indent=1).encode())


def read_manifest(model_dir, step: int) -> dict:
    return json.loads((step_dir(model_dir, step) / MANIFEST).read_text())


def verify(model_dir, step: int) -> str | None:
    """Why `step` cannot be restored (one line), or None when every file matches its manifest."""
    model_dir = epath.Path(model_dir)
    folder = step_dir(model_dir, step)
    if not (folder / MANIFEST).exists():
        if not any(folder.iterdir()):
            return "empty folder (a save that did not finish)"
        return f"no {MANIFEST} (a save that did not finish, or a damaged step)"
    try:
        manifest = read_manifest(model_dir, step)
        entries = [(e["path"], int(e["bytes"]), e["sha256"]) for e in manifest["files"]]
    except (ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} unreadable ({type(e).__name__}: {e})"
    for rel, size, sha in entries:
        path = model_dir / rel
        if not path.exists():
            return f"{rel} is missing"
        got_size, got_sha = _digest(path)
        if got_size != size:
            return f"{rel} has {got_size} bytes, the manifest says {size} (truncated or damaged)"
        if got_sha != sha:
            return f"{rel} does not match its sha256 in the manifest (damaged)"
    return None


def remove_step(model_dir, step: int) -> None:
    """Removes a step: its manifest first (the step stops being complete), then its files."""
    folder = step_dir(model_dir, step)
    _remove_quietly(folder / MANIFEST)
    fault_point("removing", step)
    for path in (data_dir(model_dir, step), folder):
        if path.exists():
            path.rmtree()


def set_aside(model_dir, step: int) -> str:
    """Renames a damaged step (and its data state) out of the way, for inspection."""
    moved = []
    for path in (step_dir(model_dir, step), data_dir(model_dir, step)):
        if path.exists():
            target = path.with_name(f"{path.name}{SKIPPED_SUFFIX}-{int(time.time())}")
            path.rename(target)
            moved.append(str(target))
    return ", ".join(moved)


def apply_retention(model_dir, newest: int, keep: int | None) -> None:
    """After `newest` committed: keeps the `keep` newest complete steps, removes the rest.

    Unfinished saves older than `newest` (no manifest: killed runs) and their data state go
    too; anything newer than `newest` is left alone.
    """
    model_dir = epath.Path(model_dir)
    steps = [s for s in list_steps(model_dir) if s <= newest]
    complete = [s for s in steps if has_manifest(model_dir, s)]
    kept = set(complete if keep is None else complete[-keep:]) | {newest}
    for s in steps:
        if s not in kept:
            remove_step(model_dir, s)
    data_root = model_dir / DATA_STATE
    if data_root.exists():  # data state whose train state is gone (or never came)
        for p in data_root.iterdir():
            name = p.name
            if name.startswith("step_") and name[5:].isdigit():
                s = int(name[5:])
                if s < newest and s not in kept:
                    p.rmtree()
    root = model_dir / CHECKPOINTS
    for p in root.iterdir():  # orbax's temporary folders of killed saves
        head = p.name.split(".")[0]
        if ".orbax-checkpoint-tmp" in p.name and head.isdigit() and int(head) < newest:
            if is_local(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.rmtree()
