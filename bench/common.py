"""Shared benchmark pieces: a measured matmul peak, the run's environment, tables, result files."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "seqio", "tensorflow", "numpy")


def best_time(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> float:
    """Smallest wall time in seconds of `fn()` over `repeats` runs, after `warmup` runs.

    The minimum is the least noisy estimate on a shared machine: noise only adds time.
    """
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak_flops(
    *, size: int = 2048, dtype: str = "float32", repeats: int = 5
) -> dict[str, Any]:
    """Measured FLOP/s of a jitted `jnp.dot` of two [size, size] matrices on the default device.

    A square matmul is the most efficient op XLA runs, so it is the practical ceiling for a
    train step on the same device: `achieved / peak` is the step's matmul utilisation. A
    2048 x 2048 float32 product is 2 * 2048**3 = 17.2 GFLOP.

    Returns:
      {"flops_per_s": best of `repeats`, "size", "dtype", "device": device kind, "seconds"}.
    """
    import jax  # keeps `import bench.common` light for data-only benchmarks
    import jax.numpy as jnp

    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (size, size), dtype=dtype)
    b = jax.random.normal(key_b, (size, size), dtype=dtype)
    dot = jax.jit(jnp.dot)
    seconds = best_time(lambda: dot(a, b).block_until_ready(), repeats=repeats)
    return {
        "flops_per_s": 2 * size**3 / seconds,
        "size": size,
        "dtype": dtype,
        "device": jax.devices()[0].device_kind,
        "seconds": seconds,
    }


def host_cores() -> int:
    """CPU cores this process may run on (the container's share, not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=pathlib.Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    """Machine, versions and commit, recorded with every result."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "host_cores": host_cores(),
        "python": sys.version.split()[0],
        "versions": versions,
        "commit": _git_commit(),
    }


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table; floats get 4 significant digits.

    name   | ex/s
    -------+------
    greedy | 3012
    """
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0])

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
        return "" if value is None else str(value)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def print_table(
    title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> None:
    print(f"\n## {title}\n")
    print(format_table(rows, columns), flush=True)


def append_result(
    name: str, record: Mapping[str, Any], *, results_dir: pathlib.Path = RESULTS_DIR
) -> pathlib.Path:
    """Appends one JSON line (record + time + environment) to `results_dir/<name>.jsonl`."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.jsonl"
    line = {
        "benchmark": name,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        **record,
    }
    with open(path, "a") as f:
        f.write(json.dumps(line, sort_keys=True, default=str) + "\n")
    return path
