"""One self-contained HTML page telling a run's story (`flan-jax report MODEL_DIR`).

Reads MODEL_DIR/metrics.jsonl and MODEL_DIR/eval/<step>/<task>.jsonl and writes
MODEL_DIR/report.html (or --output) with the figures embedded as base64 PNGs:
training loss, accuracy, learning rate and tokens/s against step; teacher-forced eval
per task and inference eval per cluster against step (held-out lines dashed when the
records say so); the latest suite and per-task inference tables; and links to the inference
files with a few examples (input, target, prediction). Every text from the run is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence

TRAIN_FIGURES = (
    ("train-loss", "loss", "training loss"),
    ("train-accuracy", "accuracy", "training accuracy"),
    ("learning-rate", "learning_rate", "training learning rate"),
    ("tokens-per-s", "tokens_per_s", "training tokens / s"),
)


def record_kind(record: dict) -> str:
    """`kind` when the record has one, else inferred: "suite" (has `suite`), "inference"
    (`eval/<task>/<metric>` keys, from `flan-jax eval`), "eval" (has `task`), "train"."""
    if record.get("kind") == "infer_eval":  # metrics_log's name for `flan-jax eval` results
        return "inference"
    if "kind" in record:
        return str(record["kind"])
    if "suite" in record:
        return "suite"
    if any(k.startswith(("eval/", "eval_cluster/")) for k in record):
        return "inference"
    return "eval" if "task" in record else "train"


def read_metrics(model_dir: str) -> list[dict]:
    """metrics.jsonl's records in file order, each with `kind` filled in."""
    path = os.path.join(model_dir, "metrics.jsonl")
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: invalid JSON ({e.msg})") from e
            records.append({**record, "kind": record_kind(record)})
    return records


# ----------------------------------------------------------------------------- figures


def _png(series: dict[str, list[tuple[int, float]]], title: str, dashed: set[str]) -> str:
    """A line plot (one line per series) as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=80)
    for label, points in sorted(series.items()):
        steps, values = zip(*sorted(points))
        ax.plot(steps, values, "--" if label in dashed else "-", marker=".", label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if len(series) > 1 or not title.startswith("train"):  # name the task or cluster
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def figure_series(records: list[dict]) -> list[tuple[str, str, dict, set[str]]]:
    """(figure id, title, {line label: [(step, value)]}, dashed labels) for every figure."""
    figures = []
    train = [r for r in records if r["kind"] == "train"]
    for fig_id, key, title in TRAIN_FIGURES:
        points = [(r["step"], r[key]) for r in train if _number(r.get(key))]
        if points:
            figures.append((fig_id, title, {key: points}, set()))
    evals = [r for r in records if r["kind"] == "eval" and "task" in r]
    dashed = {r["task"] for r in evals if r.get("held_out")}
    for key in ("accuracy", "cross_ent_per_token"):
        series: dict[str, list] = {}
        for r in evals:
            if _number(r.get(key)):
                series.setdefault(r["task"], []).append((r["step"], r[key]))
        if series:
            figures.append(
                (f"eval-{key}", f"teacher-forced eval {key} (dashed: held out)", series, dashed)
            )
    by_metric: dict[str, dict[str, list]] = {}
    for r in records:
        if r["kind"] != "inference":
            continue
        for k, v in r.items():
            if k.startswith("eval_cluster/") and _number(v):
                _, cluster, metric = k.split("/", 2)
                by_metric.setdefault(metric, {}).setdefault(cluster, []).append((r["step"], v))
    for metric, series in sorted(by_metric.items()):
        held_out = {c for c in series if c.startswith("held_out") or "minus" in c}
        figures.append(
            (f"inference-{metric}", f"evaluation {metric} per cluster", series, held_out)
        )
    return figures


# ----------------------------------------------------------------------------- tables


def _cell(value) -> str:
    if _number(value):
        return f'<td data-value="{value!r}">{value:.4f}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _table(table_id: str, header: Sequence[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>\n" for row in rows)
    return f'<table id="{table_id}">\n<tr>{head}</tr>\n{body}</table>\n'


def suite_table(records: list[dict]) -> str:
    """The latest suite record as a table (benchmark, tasks, score, chance, normalized)."""
    suites = [r for r in records if r["kind"] == "suite"]
    if not suites:
        return ""
    latest = suites[-1]
    names = [k[: -len("/score")] for k in latest if k.endswith("/score")]
    rows = [
        [n, *(latest[f"{n}/{c}"] for c in ("tasks", "score", "chance", "normalized"))]
        for n in names
    ]
    if "normalized_average" in latest:
        rows.append(["normalized average", "", "", "", latest["normalized_average"]])
    title = f"<h2>Suite {html.escape(str(latest['suite']))} at step {latest['step']}</h2>\n"
    return title + _table("suite", ["benchmark", "tasks", "score", "chance", "normalized"], rows)


def inference_table(records: list[dict]) -> str:
    """The latest inference record's per-task metrics (`eval/<task>/<metric>`)."""
    latest = [r for r in records if r["kind"] == "inference"]
    if not latest:
        return ""
    record = latest[-1]
    per_task: dict[str, dict[str, float]] = {}
    for k, v in record.items():
        if k.startswith("eval/") and _number(v):
            _, task, metric = k.split("/", 2)
            per_task.setdefault(task, {})[metric] = v
    metrics = sorted({m for values in per_task.values() for m in values})
    rows = [[t, *(values.get(m, "") for m in metrics)] for t, values in per_task.items()]
    title = f"<h2>Evaluation at step {record['step']}</h2>\n"
    return title + _table("inference", ["task", *metrics], rows)


def examples_section(model_dir: str, count: int, link_dir: str) -> str:
    """Links (relative to `link_dir`) to every eval/<step>/<task>.jsonl, and `count` examples
    of the latest step's files."""
    root = os.path.join(model_dir, "eval")
    steps = (
        sorted((int(s) for s in os.listdir(root) if s.isdigit()), reverse=True)
        if os.path.isdir(root)
        else []
    )
    if not steps:
        return ""
    parts = ["<h2>Inference files</h2>\n<ul>\n"]
    for step in steps:
        for name in sorted(os.listdir(os.path.join(root, str(step)))):
            if name.endswith(".jsonl"):
                path = os.path.join(root, str(step), name)
                href = html.escape(os.path.relpath(path, link_dir), quote=True)
                label = html.escape(f"eval/{step}/{name}")
                parts.append(f'<li><a href="{href}">{label}</a></li>\n')
    parts.append("</ul>\n")
    step_dir = os.path.join(root, str(steps[0]))
    for name in sorted(os.listdir(step_dir)):
        if not name.endswith(".jsonl"):
            continue
        with open(os.path.join(step_dir, name), encoding="utf-8") as f:
            rows = [json.loads(line) for line, _ in zip(f, range(count))]
        parts.append(f"<h3>{html.escape(name[:-6])} (step {steps[0]})</h3>\n")
        for row in rows:
            parts.append('<div class="example">')
            for key in ("input", "target", "prediction"):
                text = html.escape(str(row.get(key, "")))
                parts.append(f'<p class="{key}"><b>{key}</b></p><pre>{text}</pre>')
            parts.append("</div>\n")
    return "".join(parts)


STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:70em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
    "td{text-align:right}pre{white-space:pre-wrap;background:#f6f6f6;padding:4px;"
    "max-height:12em;overflow:auto}.example{border-left:3px solid #88a;padding-left:8px;"
    "margin-bottom:1em}"
)


def render(model_dir: str, examples: int = 3, link_dir: str | None = None) -> str:
    """The report page of a run folder as HTML text; links relative to `link_dir` (the
    folder the page is written to; default `model_dir`)."""
    records = [r for r in read_metrics(model_dir) if _number(r.get("step"))]
    title = html.escape(f"flan-jax report: {os.path.abspath(model_dir)}")
    parts = [
        f'<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
    ]
    figures = figure_series(records)
    if figures:
        parts.append("<h2>Figures</h2>\n")
    for fig_id, caption, series, dashed in figures:
        png = _png(series, caption, dashed)
        parts.append(
            f'<figure id="{fig_id}"><img alt="{html.escape(caption, quote=True)}" '
            f'src="data:image/png;base64,{png}"><figcaption>{html.escape(caption)}'
            "</figcaption></figure>\n"
        )
    parts += [
        suite_table(records),
        inference_table(records),
        examples_section(model_dir, examples, link_dir or model_dir),
    ]
    parts.append("</body>\n</html>\n")
    return "".join(parts)
