"""Shipped specs: task / mixture YAML and gin files (installed via package_dir)."""

import pathlib

_HERE = pathlib.Path(__file__).resolve().parent


def spec_dir(kind: str) -> pathlib.Path:
    """The folder of shipped specs: kind is 'tasks', 'mixtures' or 'gin'."""
    if kind not in ("tasks", "mixtures", "gin"):
        raise ValueError(f"unknown spec kind {kind!r}; expected 'tasks', 'mixtures' or 'gin'")
    return _HERE / kind
