"""`make demo`: instruction-tune a tiny model on flan_tiny minus one cluster on CPU, then print
held-in and held-out accuracy before and after tuning, next to chance (the FLAN experiment)."""

from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import math
import os
import sys
import time
from typing import Any

import jax
import seqio
import tensorflow as tf
from flax import linen as nn
from jax.sharding import Mesh

from flan_jax import partitioning
from flan_jax.checkpoints.manager import CheckpointConfig
from flan_jax.data import tasks as tasks_lib
from flan_jax.evaluation import evaluate
from flan_jax.model.decoding import DecodeConfig
from flan_jax.training import input_pipeline, optimizer, train, train_state
from flan_jax.training.input_pipeline import DataConfig
from flan_jax.training.optimizer import OptimizerConfig

RANK, GREEDY = "rank acc", "greedy EM"
HELD_IN, NEW_INSTRUCTIONS, NEW_TASK = "held-in", "unseen instructions", "unseen task"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What the before/after table evaluates.

    Attributes:
      held_out_cluster: the cluster left out of training (the mixture is
        <full_mixture>_minus_<it>).
      full_mixture: the mixture that holds every trained cluster.
      eval_mixture: every task the table evaluates (None: full_mixture); a task outside the
        training mixture is sorted into a generalisation level (see `generalisation_groups`).
      max_examples: validation examples per task per evaluation.
      eval_batch_size: rows per scoring / decoding batch.
      tasks_per_group: evaluate only the first N tasks (by name) of each group, held-in and
        held-out; None: all. A quick run's switch (the journey test uses 1).
      cluster_scaling: instead of the table, FLAN 2021's cluster-scaling ablation: for each k,
        train a fresh model on the first k clusters of the training mixture and evaluate the
        held-out cluster (e.g. (1, 2, 4, 6)); None: off. See `run_cluster_scaling`.
      curve_steps: also evaluate the held-in tasks at these steps (below TRAIN_STEPS), for the
        learning curve (held-in accuracy against steps: MODEL_DIR/learning_curve.{json,png});
        training pauses there and resumes from the checkpoint. () or None: off.
    """

    held_out_cluster: str = "nli"
    full_mixture: str = "flan_tiny_demo"
    eval_mixture: str | None = "flan_tiny_demo_eval"
    max_examples: int = 32
    eval_batch_size: int = 32
    tasks_per_group: int | None = None
    cluster_scaling: tuple[int, ...] | None = None
    curve_steps: tuple[int, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "curve_steps", tuple(sorted(set(self.curve_steps or ()))))
        if self.curve_steps and min(self.curve_steps) < 1:
            raise ValueError(
                f"DemoConfig.curve_steps ({self.curve_steps}) must be steps >= 1, e.g. "
                "(500, 1000, 1500), or None (off)"
            )
        if self.cluster_scaling is not None:
            object.__setattr__(self, "cluster_scaling", tuple(self.cluster_scaling))
            if not self.cluster_scaling or min(self.cluster_scaling) < 1:
                raise ValueError(
                    f"DemoConfig.cluster_scaling ({self.cluster_scaling}) must list cluster "
                    "counts >= 1, e.g. (1, 2, 4, 6), or be None (off)"
                )
        if self.max_examples < 1 or self.eval_batch_size < 1:
            raise ValueError(
                f"DemoConfig.max_examples ({self.max_examples}) and eval_batch_size "
                f"({self.eval_batch_size}) must be >= 1"
            )
        if self.tasks_per_group is not None and self.tasks_per_group < 1:
            raise ValueError(
                f"DemoConfig.tasks_per_group ({self.tasks_per_group}) must be >= 1 or None (all)"
            )


def eval_task_names(mixture: str) -> dict[str, str]:
    """{base task: the variant the table evaluates}: zero-shot with options (rank
    classification) where the task has options, else zero-shot without (greedy decoding)."""
    names = {t.name for t in seqio.get_mixture_or_task(mixture).tasks}
    out = {}
    for name in sorted(names):
        for suffix in ("_zs_opt", "_zs_noopt"):
            base = name.removesuffix(suffix)
            if name.endswith(suffix) and not (suffix == "_zs_noopt" and base + "_zs_opt" in names):
                out[base] = name
    return out


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion, in percent (95% for z=1.96).

    Example: 9 hits of 10 -> (59.6, 98.2); 0 of 10 -> (0.0, 27.8); n=0 -> (0.0, 100.0).
    """
    if n == 0:
        return 0.0, 100.0
    p = hits / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100.0 * max(0.0, center - half), 100.0 * min(1.0, center + half)


def generalisation_groups(
    trained: str, evaluated: str, held_out_cluster: str
) -> dict[str, dict[str, str]]:
    """Sorts the evaluated tasks into OPT-IML's generalisation levels, plus unseen instructions.

    A task of the training mixture is `held-in` (its validation examples are unseen); one
    that reads the same source as a trained task under other templates is `unseen
    instructions`; one of a trained cluster is `unseen task`; the rest are `held-out
    (<cluster>)`, one group per cluster, `held_out_cluster` first. Empty groups are dropped.
    Returns {group: {base task: the variant evaluated (see `eval_task_names`)}}.
    """
    held_in = eval_task_names(trained)
    specs = {v: tasks_lib.get_task_spec(v) for v in held_in.values()}
    sources = {repr(s.source) for s in specs.values()}
    clusters = {s.cluster for s in specs.values()}
    groups: dict[str, dict[str, str]] = {HELD_IN: held_in, NEW_INSTRUCTIONS: {}, NEW_TASK: {}}
    groups[f"held-out ({held_out_cluster})"] = {}
    for base, variant in eval_task_names(evaluated).items():
        if base in held_in:
            continue
        spec = tasks_lib.get_task_spec(variant)
        if repr(spec.source) in sources:
            group = NEW_INSTRUCTIONS
        elif spec.cluster in clusters:
            group = NEW_TASK
        else:
            group = f"held-out ({spec.cluster})"
        groups.setdefault(group, {})[base] = variant
    return {g: names for g, names in groups.items() if names}


def task_row(result: evaluate.TaskResult) -> dict[str, Any]:
    """Metric, example count and chance level of one task's evaluation.

    Rank classification: accuracy over the examples with options; chance is the mean of
    1/num_options (inverted-template examples have no options: decoded, counted in
    `generated`). Generation: exact match of the greedy decode; chance is the share of the
    most frequent target (always answering it).
    """
    ranked = [r for r in result.records if r.get("mode") == "rank_classification"]
    if ranked:
        chance = sum(100.0 / len(r["option_scores"]) for r in ranked) / len(ranked)
        value = result.metrics.get("accuracy", 0.0)
        return {
            "eval": RANK,
            "n": len(ranked),
            "value": value,
            "chance": chance,
            "generated": len(result.records) - len(ranked),
        }
    targets = collections.Counter(r["target"] for r in result.records)
    n = len(result.records)
    chance = 100.0 * max(targets.values()) / n if n else 0.0
    value = result.metrics.get("exact_match", result.metrics.get("accuracy", 0.0))
    return {"eval": GREEDY, "n": n, "value": value, "chance": chance, "generated": n}


def _with_interval(row: dict) -> dict:
    """Adds the 95% Wilson interval of `after` (lo, hi) and whether it excludes chance."""
    lo, hi = wilson_interval(round(row["after"] * row["n"] / 100.0), row["n"])
    return {**row, "lo": lo, "hi": hi, "above_chance": lo > row["chance"]}


def evaluate_variants(model, params, names: dict[str, str], data, mesh, demo, label: str) -> dict:
    """{task variant: TaskResult} over every task the table shows."""
    t0 = time.perf_counter()
    print(f"demo: evaluating {len(names)} tasks {label} ({demo.max_examples} examples each)...")
    config = evaluate.EvalConfig(
        batch_size=demo.eval_batch_size,
        max_examples=demo.max_examples,
        decode=DecodeConfig(max_decode_len=data.task_feature_lengths["targets"]),
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
        results = evaluate.run_evaluation(
            model,
            params,
            sorted(names.values()),
            split=data.eval_split,
            feature_lengths=dict(data.task_feature_lengths),
            config=config,
            mesh=mesh,
        )
    print(f"demo: evaluated {label} in {time.perf_counter() - t0:.0f}s", flush=True)
    return results


def _mean_row(group: str, kind: str, members: list[dict]) -> dict:
    """The group's pooled row: every example of its tasks counted once (a mean weighted by n)."""
    n = sum(r["n"] for r in members)
    pooled = {k: sum(r[k] * r["n"] for r in members) / n for k in ("before", "after", "chance")}
    return _with_interval(
        {
            "group": group,
            "task": f"{group} ({len(members)} tasks)",
            "cluster": "-",
            "eval": kind,
            "n": n,
            "generated": sum(r["generated"] for r in members),
            **pooled,
        }
    )


def build_table(groups: dict[str, dict[str, str]], before: dict, after: dict) -> list[dict]:
    """Rows: each task of each group, then the group's pooled row per evaluation kind."""
    rows = []
    for group, names in groups.items():
        task_rows = []
        for variant in sorted(names.values()):
            row = task_row(before[variant])
            row["before"] = row.pop("value")
            row["after"] = task_row(after[variant])["value"]
            task_rows.append(
                _with_interval(
                    {"group": group, "task": variant, "cluster": before[variant].cluster, **row}
                )
            )
        rows.extend(task_rows)
        for kind in (RANK, GREEDY):
            members = [r for r in task_rows if r["eval"] == kind]
            if members:
                rows.append(_mean_row(group, kind, members))
    return rows


def format_rows(rows: list[dict]) -> str:
    """The table as text: task, cluster, eval, n, before, after, its 95% interval, chance
    (percent), and whether the interval lies above chance."""
    header = [
        "task",
        "cluster",
        "eval",
        "n",
        "before",
        "after",
        "95% interval",
        "chance",
        ">chance",
    ]
    body = [
        [
            r["task"],
            r["cluster"],
            r["eval"],
            str(r["n"]),
            f"{r['before']:.1f}",
            f"{r['after']:.1f}",
            f"[{r['lo']:.1f}, {r['hi']:.1f}]",
            f"{r['chance']:.1f}",
            "yes" if r["above_chance"] else "no",
        ]
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    fmt = lambda cells: "  ".join(
        c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    ).rstrip()
    lines, group = [fmt(header)], None
    for r, cells in zip(rows, body):
        if r["group"] != group:
            group = r["group"]
            lines.append(f"-- {group} " + "-" * (sum(widths) + 2 * len(widths) - len(group) - 4))
        lines.append(fmt(cells))
    return "\n".join(lines)


def run_demo(
    *,
    model: Any,
    data: DataConfig,
    mesh: Mesh,
    optimizer_config: OptimizerConfig,
    checkpoint: CheckpointConfig,
    run: train.RunConfig,
    demo: DemoConfig = DemoConfig(),
    mixture_or_task_module: str | None = "flan_jax.registry",
) -> list[dict]:
    """Evaluates, trains with `train.train`, evaluates again; prints, writes and returns the table.

    Returns:
      the table's rows (also in MODEL_DIR/demo_results.json).
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    want = f"{demo.full_mixture}_minus_{demo.held_out_cluster}"
    if data.mixture_or_task_name != want:
        raise ValueError(
            f"MIXTURE_OR_TASK_NAME ({data.mixture_or_task_name!r}) does not hold out "
            f"HELD_OUT_CLUSTER ({demo.held_out_cluster!r}); set both, e.g. "
            f"--gin.HELD_OUT_CLUSTER=\"'{demo.held_out_cluster}'\" "
            f"--gin.MIXTURE_OR_TASK_NAME=\"'{want}'\""
        )
    importlib.import_module(mixture_or_task_module or "flan_jax.registry")
    groups = generalisation_groups(
        data.mixture_or_task_name, demo.eval_mixture or demo.full_mixture, demo.held_out_cluster
    )
    if demo.tasks_per_group is not None:
        groups = {g: dict(sorted(n.items())[: demo.tasks_per_group]) for g, n in groups.items()}
    if demo.cluster_scaling:
        held_out = groups[f"held-out ({demo.held_out_cluster})"]
        kwargs = dict(model=model, data=data, mesh=mesh, optimizer_config=optimizer_config)
        from flan_jax.cli import demo_scaling

        return demo_scaling.run_cluster_scaling(
            **kwargs, checkpoint=checkpoint, run=run, demo=demo, held_out=held_out
        )
    names = {k: v for g in groups.values() for k, v in g.items()}
    converter = model.feature_converter_cls(pack=data.pack)
    shapes = input_pipeline.model_input_shapes(data, converter)
    tx = optimizer.make_optimizer(optimizer_config)
    with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
        _, shardings = train_state.state_shardings(model, tx, shapes, mesh)
        init = train_state.init_params(
            model, shapes, jax.random.PRNGKey(run.seed), shardings["params"]
        )
    before = evaluate_variants(model, init, names, data, mesh, demo, "before tuning")
    from flan_jax.cli import demo_curve

    curve = demo_curve.read_curve(run.model_dir)
    stops = [s for s in demo.curve_steps if s < run.train_steps] + [run.train_steps]
    print(f"demo: training {run.train_steps} steps on {data.mixture_or_task_name}", flush=True)
    for stop in stops:
        state = train.train(
            model=model,
            data=data,
            mesh=mesh,
            optimizer_config=optimizer_config,
            checkpoint=checkpoint,
            run=dataclasses.replace(run, train_steps=stop),
        )
        step = int(jax.device_get(state["step"]))
        if step < stop:  # stopped early (SIGTERM): checkpoint saved, no table for it
            print(
                f"demo: stopped at step {step} of {run.train_steps} (checkpoint saved in "
                f"{run.model_dir}); run the demo again to resume and evaluate",
                flush=True,
            )
            return []
        if step == stop < run.train_steps and stop not in curve:  # (resumed past it: skip)
            results = evaluate_variants(
                model, state["params"], groups[HELD_IN], data, mesh, demo, f"at step {stop}"
            )
            curve[stop] = demo_curve.curve_point(stop, results, groups[HELD_IN].values())
            if jax.process_index() == 0:
                demo_curve.write_curve(run.model_dir, curve, plot=False)
    after = evaluate_variants(model, state["params"], names, data, mesh, demo, "after tuning")
    if demo.curve_steps:
        curve[0] = demo_curve.curve_point(0, before, groups[HELD_IN].values())
        curve[run.train_steps] = demo_curve.curve_point(
            run.train_steps, after, groups[HELD_IN].values()
        )
        if jax.process_index() == 0:
            text = demo_curve.write_curve(run.model_dir, curve, plot=True)
            print(f"\nheld-in tasks against training steps (percent, 95% interval):\n{text}")
    if jax.process_index() == 0:
        evaluate.write_results(run.model_dir, 0, before)
        evaluate.write_results(run.model_dir, run.train_steps, after)
    rows = build_table(groups, before, after)
    _report(rows, run, data, demo, wall=time.perf_counter() - t0, cpu=time.process_time() - cpu0)
    return rows


def _report(rows, run: train.RunConfig, data: DataConfig, demo: DemoConfig, *, wall, cpu):
    """Prints the table and where everything went; writes MODEL_DIR/demo_results.json."""
    print(
        f"\nflan_tiny instruction tuning: {run.train_steps} steps on {data.mixture_or_task_name}; "
        f"held-in and held-out tasks on their '{data.eval_split}' split (percent):"
    )
    print(format_rows(rows))
    generated = sum(r["generated"] for r in rows if r["eval"] == RANK and r["cluster"] != "-")
    print(
        f"{RANK}: rank classification of zero-shot prompts with options, over the n examples "
        f"with options ({generated} inverted-template examples have none; their decodes are "
        f"scored in eval/<step>/ as generated_accuracy); chance = mean 1/num_options.\n"
        f"{GREEDY}: exact match of greedy decodes (task postprocessor applied); "
        f"chance = share of the most frequent target."
    )
    model_dir = run.model_dir
    path = os.path.join(model_dir, "demo_results.json")
    if jax.process_index() == 0:
        with tf.io.gfile.GFile(path, "w") as f:
            json.dump(
                {
                    "train_steps": run.train_steps,
                    "mixture": data.mixture_or_task_name,
                    "held_out_cluster": demo.held_out_cluster,
                    "feature_lengths": dict(data.task_feature_lengths),
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "rows": rows,
                },
                f,
                indent=1,
            )
    print(
        f"\nMODEL_DIR: {model_dir}\n  table: {path}\n  metrics: {model_dir}/metrics.jsonl\n"
        f"  inferences: {model_dir}/eval/<step>/<task>.jsonl (step 0 = before tuning)\n"
        f"  TensorBoard: tensorboard --logdir {model_dir}\n"
        f"demo: {wall:.0f}s wall, {cpu:.0f}s CPU (this process)"
    )


def main(argv: list[str] | None = None) -> int:
    """`flan-jax demo [--gin_file=experiments/flan_tiny_decoder.gin] [--gin.X=...]`."""
    import gin
    from flan_jax.cli import gin_flags

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a.startswith("--gin_file") for a in argv):
        argv.insert(0, "--gin_file=experiments/flan_tiny_t5.gin")
    gin_flags.enable_compilation_cache(gin_flags.parse(argv, "flan_jax.cli.demo"))
    gin_flags.write_config(gin.query_parameter("%MODEL_DIR"), gin.config_str())
    # `python -m` runs this file as __main__: use the module gin registered
    gin.get_configurable(importlib.import_module("flan_jax.cli.demo").run_demo)()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
