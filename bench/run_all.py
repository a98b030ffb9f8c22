"""`make bench`: runs every bench/*.py script with its short defaults and prints its table.

Each script runs in its own process (`python -m bench.<name>`), so one JAX/TF set-up cannot
leak into another; a failing script is reported and the others still run.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time

BENCH_DIR = pathlib.Path(__file__).resolve().parent
NOT_BENCHMARKS = {"__init__", "common", "run_all"}


def benchmark_names() -> list[str]:
    """Every script under bench/ (data_pipeline, train_step, ... as they exist), sorted."""
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem not in NOT_BENCHMARKS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="benchmark names to run (default: all)")
    args = parser.parse_args(argv)
    names = benchmark_names()
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {names}")
    failed = []
    for name in args.only or names:
        print(f"\n# bench.{name}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", f"bench.{name}"], cwd=BENCH_DIR.parent, check=False
        )
        print(
            f"# bench.{name}: exit {proc.returncode} in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        if proc.returncode:
            failed.append(name)
    if failed:
        print(f"\nfailed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
