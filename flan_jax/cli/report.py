"""`flan-jax report MODEL_DIR` (`python -m flan_jax.cli.report`): writes
flan_jax.evaluation.report's HTML page of a run."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from flan_jax.evaluation import report


def main(argv: Sequence[str] | None = None) -> int:
    """`flan-jax report MODEL_DIR [--output FILE] [--examples N]`; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="flan-jax report", description=report.__doc__.split("\n")[0]
    )
    parser.add_argument("model_dir", help="a run folder holding metrics.jsonl")
    parser.add_argument("--output", default=None, help="default: MODEL_DIR/report.html")
    parser.add_argument("--examples", type=int, default=3, help="examples shown per task")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    metrics = os.path.join(args.model_dir, "metrics.jsonl")
    if not os.path.isfile(metrics):
        print(
            f"flan-jax report: {metrics!r} not found; give a run folder (MODEL_DIR) that a "
            "training or `flan-jax eval` wrote",
            file=sys.stderr,
        )
        return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "flan-jax report: matplotlib is not installed; pip install 'flan-jax[report]' "
            "(or matplotlib)",
            file=sys.stderr,
        )
        return 2
    output = args.output or os.path.join(args.model_dir, "report.html")
    try:
        page = report.render(
            args.model_dir, args.examples, os.path.dirname(os.path.abspath(output))
        )
    except ValueError as e:
        print(f"flan-jax report: {e}", file=sys.stderr)
        return 2
    with open(output, "w", encoding="utf-8") as f:
        f.write(page)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
