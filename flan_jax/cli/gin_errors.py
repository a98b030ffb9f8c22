"""Clear errors for bad command-line gin: unknown files, unparsable bindings, unused macros.

Used by flan_jax.cli.gin_flags (entry points only). Every check raises ValueError with a one-line
message naming the flag, the value and the fix; `flan_jax.cli` prints it with exit code 2.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Sequence

import gin

_INCLUDE = re.compile(r"^\s*include\s+['\"]([^'\"]+)['\"]", re.M)
_DEFINED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=", re.M)  # top-level `NAME = ...`
_USED = re.compile(r"%([A-Za-z_][A-Za-z0-9_./]*)")
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages", "checkpoints"}
_MAX_FILES = 5000  # a search path may be a big working directory: look, but not forever


def gin_files(paths: Sequence[str]) -> list[str]:
    """Names (relative to their search path) of the .gin files under each search path."""
    names: list[str] = []
    seen = 0
    for root in paths:
        for folder, dirs, files in os.walk(root):
            depth = os.path.relpath(folder, root).count(os.sep)
            dirs[:] = (
                []
                if depth >= 3
                else [d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS]
            )
            for f in files:
                seen += 1
                if f.endswith(".gin"):
                    names.append(os.path.relpath(os.path.join(folder, f), root))
            if seen > _MAX_FILES:
                break
    return sorted(set(names))


def closest_files(path: str, paths: Sequence[str]) -> list[str]:
    """Gin files whose name ends like `path`, then the closest names (difflib)."""
    names = gin_files(paths)
    tail = [n for n in names if n.endswith(os.sep + os.path.basename(path))]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    return list(dict.fromkeys(tail + close))[:5]


def unknown_file_error(path: str, paths: Sequence[str]) -> ValueError:
    close = closest_files(path, paths)
    hint = f"closest: {close}" if close else f"searched {list(paths)}"
    return ValueError(f"--gin_file={path}: no such gin file; {hint}")


def parse_file_error(path: str, error: BaseException) -> ValueError:
    return ValueError(f"--gin_file={path}: {_short(error)}")


def parse_binding(flag: str, binding: str) -> None:
    """gin.parse_config(binding); an error names the flag and the binding."""
    try:
        gin.parse_config(binding)
    except (ValueError, SyntaxError, KeyError) as e:
        raise ValueError(f"{flag}: cannot parse gin binding {binding!r}: {_short(e)}") from None
    except Exception as e:  # tokenize.TokenError: an unclosed bracket or quote
        raise ValueError(
            f"{flag}: cannot parse gin binding {binding!r}: {_short(e)} (unclosed bracket or "
            "quote? strings need inner quotes: --gin.NAME=\"'text'\")"
        ) from None


def _short(error: BaseException) -> str:
    """The first line of an exception's message (gin appends its location on later lines)."""
    text = str(error.args[0]) if type(error).__name__ == "TokenError" else str(error)
    return (text.strip().splitlines() or [type(error).__name__])[0]


def loaded_texts(files: Sequence[str], paths: Sequence[str], find) -> Iterator[str]:
    """The text of every gin file given and every file they include (recursively)."""
    seen, todo = set(), list(files)
    while todo:
        name = todo.pop(0)
        try:
            path = find(name, paths)
        except (FileNotFoundError, ValueError):
            continue  # gin itself reports a missing include
        if path in seen:
            continue
        seen.add(path)
        with open(path) as f:
            text = f.read()
        yield text
        todo += _INCLUDE.findall(text)


def check_macros(
    macros: Sequence[tuple[str, str]], texts: Sequence[str], bindings: Sequence[str]
) -> None:
    """Each `--gin.NAME=...` macro must be defined or used (`%NAME`) by a loaded gin file.

    T5X silently ignores a misspelt macro (the run uses the file's value); here it is an error
    naming the flag and the closest macro names. `macros` is [(flag, NAME)]; `bindings` are
    the other bindings given, whose `%NAME` references count as uses.
    """
    text = "\n".join(texts)
    known = set(_DEFINED.findall(text)) | set(_USED.findall("\n".join([text, *bindings])))
    known.discard("gin.REQUIRED")
    for flag, name in macros:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.5)
            hint = f"closest: {close}" if close else f"the loaded files use {sorted(known)[:20]}"
            raise ValueError(
                f"{flag}: no loaded gin file defines or uses macro {name!r} ({hint}); "
                "check the spelling or add the --gin_file that uses it"
            )
