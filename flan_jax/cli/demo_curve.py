"""The demo's learning curve: pooled held-in accuracy against training steps, with 95%
intervals and the bars the demo aims for, written as JSON, text and a PNG into MODEL_DIR
(`DemoConfig.curve_steps`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import tensorflow as tf

from flan_jax.cli.demo import GREEDY, RANK, task_row
from flan_jax.cli.demo_scaling import pooled_row

# The held-in bars `make demo` aims for (percent): pooled rank accuracy on the
# classification tasks, pooled greedy exact match on the generation tasks.
BARS = {RANK: 90.0, GREEDY: 60.0}
FILE = "learning_curve"


def curve_point(step: int, results: Mapping, variants: Sequence[str]) -> dict:
    """{step, <kind>: {n, value, lo, hi}} pooled over the held-in `variants` of `results`
    (every example counted once, as the table's group rows)."""
    point: dict = {"step": step}
    kinds = {v: task_row(results[v])["eval"] for v in variants}
    for kind in (RANK, GREEDY):
        members = [v for v in variants if kinds[v] == kind]
        if members:
            row = pooled_row(results, members)
            point[kind] = {k: row[k] for k in ("n", "value", "lo", "hi")}
    return point


def read_curve(model_dir: str) -> dict[int, dict]:
    """The points measured so far ({step: point}); a resumed demo keeps them."""
    path = os.path.join(model_dir, FILE + ".json")
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return {p["step"]: p for p in json.load(f)["points"]}


def write_curve(model_dir: str, points: Mapping[int, dict], *, plot: bool) -> str:
    """Writes learning_curve.json (and .txt, .png when `plot`); returns the table's text."""
    ordered = [points[s] for s in sorted(points)]
    with tf.io.gfile.GFile(os.path.join(model_dir, FILE + ".json"), "w") as f:
        json.dump({"bars": BARS, "points": ordered}, f, indent=1)
    text = format_curve(ordered)
    if plot:
        with tf.io.gfile.GFile(os.path.join(model_dir, FILE + ".txt"), "w") as f:
            f.write(text + "\n")
        plot_curve(ordered, os.path.join(model_dir, FILE + ".png"))
    return text


def format_curve(points: Sequence[dict]) -> str:
    """One line per step: pooled held-in rank accuracy and greedy exact match, 95% intervals."""
    lines = [f"{'step':>6}  {RANK + ' (bar 90)':<26}  {GREEDY} (bar 60)"]
    for p in points:
        cells = []
        for kind in (RANK, GREEDY):
            c = p.get(kind)
            cells.append(
                f"{c['value']:5.1f} [{c['lo']:5.1f}, {c['hi']:5.1f}] n={c['n']:<4}" if c else "-"
            )
        lines.append(f"{p['step']:>6}  {cells[0]:<26}  {cells[1]}".rstrip())
    return "\n".join(lines)


def plot_curve(points: Sequence[dict], path: str) -> None:
    """Held-in accuracy against steps (95% interval bands), each bar dashed; a PNG."""
    import matplotlib  # only the curve draws

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for kind, color in ((RANK, "tab:blue"), (GREEDY, "tab:orange")):
        have = [p for p in points if kind in p]
        steps = [p["step"] for p in have]
        ax.plot(steps, [p[kind]["value"] for p in have], "o-", color=color, label=kind)
        lo, hi = [p[kind]["lo"] for p in have], [p[kind]["hi"] for p in have]
        ax.fill_between(steps, lo, hi, color=color, alpha=0.2)
        ax.axhline(BARS[kind], color=color, linestyle="--", linewidth=1)
    ax.set(xlabel="training steps", ylabel="held-in accuracy (%)", ylim=(0, 100))
    ax.set_title("flan_tiny demo: held-in tasks against steps (dashed: bars)", fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with tf.io.gfile.GFile(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
