"""`make demo`: instruction-tune a tiny model on flan_tiny minus one cluster on CPU, then print
held-in and held-out accuracy before and after tuning (the FLAN experiment, in minutes)."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from typing import Any

import jax
import seqio
from flax import linen as nn
from jax.sharding import Mesh

from flan_jax import evaluate, input_pipeline, optimizer, partitioning, train, train_state
from flan_jax.checkpoints import CheckpointConfig
from flan_jax.input_pipeline import DataConfig
from flan_jax.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What the before/after table evaluates.

    Attributes:
      held_out_cluster: the cluster left out of training (the mixture is flan_tiny_minus_<it>).
      full_mixture: the mixture that holds every cluster.
      variant_suffix: evaluate only task variants ending with this (e.g. zero-shot "_zs_noopt").
      max_examples: examples per task per evaluation.
    """

    held_out_cluster: str = "nli"
    full_mixture: str = "flan_tiny"
    variant_suffix: str = "_zs_opt"
    max_examples: int = 32


def _task_names(mixture: str, suffix: str) -> set[str]:
    return {t.name for t in seqio.get_mixture_or_task(mixture).tasks if t.name.endswith(suffix)}


def _accuracy(results: dict[str, dict[str, float]]) -> float:
    values = [m.get("accuracy", m.get("exact_match", 0.0)) for m in results.values()]
    return sum(values) / max(len(values), 1)


def _evaluate(model, params, names, data: DataConfig, mesh, demo: DemoConfig) -> dict:
    """{task: metrics} over `names`; a task that fails to evaluate is reported and left out."""
    results = {}
    for name in sorted(names):
        try:
            results |= evaluate.evaluate_tasks(
                model,
                params,
                [name],
                split=data.eval_split,
                feature_lengths=dict(data.task_feature_lengths),
                mesh=mesh,
                batch_size=data.batch_size,
                max_examples=demo.max_examples,
            )
        except Exception as e:  # noqa: BLE001 - the table reports which tasks were evaluated
            print(f"demo: could not evaluate {name}: {type(e).__name__}: {str(e)[:200]}")
    return results


def _token_accuracy(model, params, names, data: DataConfig, mesh, demo: DemoConfig) -> float:
    """Teacher-forced target-token accuracy over the tasks' eval split (always available)."""
    data = dataclasses.replace(data, eval_max_examples=demo.max_examples)
    converter = model.feature_converter_cls(pack=False)
    step = jax.jit(train_state.make_eval_step(model.loss_fn))
    correct = total = 0.0
    for name in sorted(names):
        for local in input_pipeline.load_eval_batches(data, converter, name):
            m = step(params, input_pipeline.make_global_batch(local, mesh, data.batch_size))
            correct, total = correct + float(m["correct"]), total + float(m["weight_sum"])
    return correct / max(total, 1.0)


def _table_row(model, params, names, data, mesh, demo) -> dict[str, float]:
    row = {"token acc": _token_accuracy(model, params, names, data, mesh, demo)}
    results = _evaluate(model, params, names, data, mesh, demo)
    if results:
        row[f"task acc ({len(results)}/{len(names)})"] = _accuracy(results)
    return row


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
) -> dict[str, dict[str, float]]:
    """Evaluates, trains with `train.train`, evaluates again; prints and returns the table."""
    importlib.import_module(mixture_or_task_module or "flan_jax.registry")
    held_in = _task_names(data.mixture_or_task_name, demo.variant_suffix)
    held_out = _task_names(demo.full_mixture, demo.variant_suffix) - held_in
    converter = model.feature_converter_cls(pack=data.pack)
    shapes = input_pipeline.model_input_shapes(data, converter)
    tx = optimizer.make_optimizer(optimizer_config)
    with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
        _, shardings = train_state.state_shardings(model, tx, shapes, mesh)
        before_params = train_state.init_params(
            model, shapes, jax.random.PRNGKey(run.seed), shardings["params"]
        )
        groups = {"held-in": held_in, "held-out": held_out}
        before = {
            k: _table_row(model, before_params, n, data, mesh, demo) for k, n in groups.items()
        }
    state = train.train(
        model=model,
        data=data,
        mesh=mesh,
        optimizer_config=optimizer_config,
        checkpoint=checkpoint,
        run=run,
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
        after = {
            k: _table_row(model, state["params"], n, data, mesh, demo) for k, n in groups.items()
        }
    rows = {}
    for group, names in groups.items():
        label = f"{group} ({len(names)} tasks)"
        if group == "held-out":
            label += f", cluster {demo.held_out_cluster}"
        rows[label] = {f"{k} before": v for k, v in before[group].items()}
        rows[label] |= {f"{k} after": v for k, v in after[group].items()}
    print("\nHeld-in (unseen validation examples) vs held-out cluster, before and after tuning:")
    print("token acc: teacher-forced target tokens; task acc: rank classification / exact match")
    print(evaluate.format_table(rows, first_column="tasks"))
    return rows


def main(argv: list[str] | None = None) -> int:
    """`python -m flan_jax.demo [--gin_file=experiments/flan_tiny_decoder.gin] [--gin.X=...]`."""
    import gin
    from flan_jax import gin_flags

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a.startswith("--gin_file") for a in argv):
        argv.insert(0, "--gin_file=experiments/flan_tiny_t5.gin")
    gin_flags.parse(argv, "flan_jax.demo")
    gin_flags.write_config(gin.query_parameter("%MODEL_DIR"), gin.config_str())
    # `python -m` runs this file as __main__: use the module gin registered
    gin.get_configurable(importlib.import_module("flan_jax.demo").run_demo)()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
