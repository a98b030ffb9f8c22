"""`flan-jax demo --gin.demo.DemoConfig.cluster_scaling="(1, 2, 4, 6)"`: FLAN 2021's
cluster-scaling ablation at CPU scale (held-out accuracy against the number of training
clusters), written as a table, JSON and a PNG into MODEL_DIR."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence

import jax
import tensorflow as tf

from flan_jax.cli.demo import evaluate_variants, task_row, wilson_interval
from flan_jax.data import mixtures
from flan_jax.training import train


def cluster_mixtures(trained: str, sizes: Sequence[int]) -> dict[int, tuple[str, list[str]]]:
    """Registers `<trained>_<k>_clusters` for each k: the tasks of the first k clusters of the
    mixture `trained` (in member order) at their rates in it. Returns {k: (name, clusters)}.

    Example: flan_tiny_demo_minus_nli, sizes (1, 2) -> {1: ("flan_tiny_demo_minus_nli_1_clusters",
    ["sentiment"]), 2: (..._2_clusters, ["sentiment", "topic"])}.
    """
    rates = mixtures.mixture_rates(trained)
    clusters = list(dict.fromkeys(mixtures.cluster_of(t) for t in rates))
    if max(sizes) > len(clusters):
        raise ValueError(
            f"DemoConfig.cluster_scaling {tuple(sizes)} asks for {max(sizes)} clusters; "
            f"{trained!r} has {len(clusters)}: {clusters}"
        )
    out = {}
    for k in sizes:
        name = f"{trained}_{k}_clusters"
        members = [
            {"name": t, "weight": r}
            for t, r in rates.items()
            if mixtures.cluster_of(t) in clusters[:k]
        ]
        mixtures.register_mixture_spec({"name": name, "members": members})
        out[k] = (name, clusters[:k])
    return out


def pooled_row(results: dict, variants: Sequence[str]) -> dict:
    """Every example of `variants` counted once: n, accuracy, 95% interval, chance (percent)."""
    rows = [task_row(results[v]) for v in variants]
    n = sum(r["n"] for r in rows)
    hits = sum(round(r["value"] * r["n"] / 100.0) for r in rows)
    chance = sum(r["chance"] * r["n"] for r in rows) / n if n else 0.0
    lo, hi = wilson_interval(hits, n)
    value = 100.0 * hits / n if n else 0.0
    return {
        "n": n,
        "value": value,
        "lo": lo,
        "hi": hi,
        "chance": chance,
        "above_chance": lo > chance,
    }


def format_scaling(rows: list[dict], held_out: str) -> str:
    """The ablation's table: training clusters, n, held-out accuracy, 95% interval, chance."""
    lines = [f"clusters  n    {held_out:>12}  95% interval    chance  >chance  trained on"]
    for r in rows:
        lines.append(
            f"{r['k']:>8}  {r['n']:<4} {r['value']:>12.1f}  [{r['lo']:5.1f}, {r['hi']:5.1f}]  "
            f"{r['chance']:>6.1f}  {'yes' if r['above_chance'] else 'no':>7}  "
            + ", ".join(r["clusters"])
        )
    return "\n".join(lines)


def plot_scaling(rows: list[dict], held_out: str, path: str) -> None:
    """Held-out accuracy (95% interval bars) against training clusters, chance dashed; a PNG."""
    import matplotlib  # only the ablation draws

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    ks = [r["k"] for r in rows]
    values = [r["value"] for r in rows]
    err = [[r["value"] - r["lo"] for r in rows], [r["hi"] - r["value"] for r in rows]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(ks, values, yerr=err, marker="o", capsize=4, label=f"held-out {held_out}")
    ax.plot(ks, [r["chance"] for r in rows], "k--", label="chance")
    ax.set(xlabel="training clusters", ylabel="accuracy (%)", ylim=(0, 100), xticks=ks)
    ax.set_title("flan_tiny: held-out accuracy vs. training clusters", fontsize=10)
    ax.legend()
    fig.tight_layout()
    with tf.io.gfile.GFile(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def run_cluster_scaling(
    *, model, data, mesh, optimizer_config, checkpoint, run, demo, held_out: dict[str, str]
) -> list[dict]:
    """FLAN 2021's cluster-scaling ablation at CPU scale: for each k in demo.cluster_scaling,
    trains a fresh model (MODEL_DIR/clusters_<k>) for TRAIN_STEPS on the first k clusters,
    evaluates the held-out cluster; writes cluster_scaling.{txt,json,png} into MODEL_DIR."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    rows = []
    for k, (name, clusters) in cluster_mixtures(
        data.mixture_or_task_name, demo.cluster_scaling
    ).items():
        print(f"demo: cluster scaling: {k} clusters ({', '.join(clusters)})", flush=True)
        sub_run = dataclasses.replace(run, model_dir=os.path.join(run.model_dir, f"clusters_{k}"))
        state = train.train(
            model=model,
            data=dataclasses.replace(data, mixture_or_task_name=name),
            mesh=mesh,
            optimizer_config=optimizer_config,
            checkpoint=checkpoint,
            run=sub_run,
        )
        if int(jax.device_get(state["step"])) < run.train_steps:
            print("demo: stopped early; run the demo again to resume", flush=True)
            return []
        params = state["params"]
        results = evaluate_variants(model, params, held_out, data, mesh, demo, f"k={k}")
        rows.append({"k": k, "clusters": clusters, **pooled_row(results, held_out.values())})
    label = f"{demo.held_out_cluster} acc"
    text = format_scaling(rows, label)
    print(f"\nheld-out {demo.held_out_cluster} ({len(held_out)} tasks, validation) after "
          f"{run.train_steps} steps on the first k clusters (percent):\n{text}")  # fmt: skip
    if jax.process_index() == 0:
        base = os.path.join(run.model_dir, "cluster_scaling")
        with tf.io.gfile.GFile(base + ".txt", "w") as f:
            f.write(text + "\n")
        with tf.io.gfile.GFile(base + ".json", "w") as f:
            json.dump({"train_steps": run.train_steps, "rows": rows}, f, indent=1)
        plot_scaling(rows, demo.held_out_cluster, base + ".png")
        print(f"  table: {base}.txt\n  plot: {base}.png")
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"demo: cluster scaling {wall:.0f}s wall, {cpu:.0f}s CPU (this process)")
    return rows
