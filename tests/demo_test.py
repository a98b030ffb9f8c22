"""The demo's table (which variant each task is evaluated with, chance levels, group means)
and its two gin files."""

import pathlib

import pytest

import gin
from flan_jax import registry
from flan_jax.cli import demo
from flan_jax.evaluation.evaluate import TaskResult

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"
DEMO_MACROS = (
    "HELD_OUT_CLUSTER",
    "MODEL_DIR",
    "MIXTURE_OR_TASK_NAME",
    "TASK_FEATURE_LENGTHS",
    "TRAIN_STEPS",
    "BATCH_SIZE",
    "LEARNING_RATE",
    "CHECKPOINT_PERIOD",
)


def _ranked(n_options: list[int], hits: int) -> TaskResult:
    records = [
        {"mode": "rank_classification", "target": "a", "option_scores": [0.0] * k}
        for k in n_options
    ]
    records.append({"mode": "generation", "target": "an inverted target"})
    return TaskResult(
        metrics={"accuracy": 100.0 * hits / len(n_options), "generated_accuracy": 0.0},
        cluster="c",
        records=records,
    )


def _generated(targets: list[str], exact: float) -> TaskResult:
    records = [{"mode": "generation", "target": t} for t in targets]
    return TaskResult(metrics={"exact_match": exact}, cluster="g", records=records)


def test_eval_task_names_rank_classifies_tasks_with_options_and_decodes_the_rest():
    registry.register_all()
    held_in = demo.eval_task_names("flan_tiny_minus_nli")
    every = demo.eval_task_names("flan_tiny")
    assert len(every) == 17 and len(held_in) == 15
    assert set(every) - set(held_in) == {"tiny_height_nli", "tiny_location_nli"}
    assert every["tiny_topic"] == "tiny_topic_zs_opt"
    assert every["tiny_arithmetic"] == "tiny_arithmetic_zs_noopt"


def test_task_rows_chance_levels_and_group_means():
    before = {"cls": _ranked([2, 2, 4, 4], hits=1), "gen": _generated(["1", "1", "2", "3"], 0.0)}
    after = {"cls": _ranked([2, 2, 4, 4], hits=3), "gen": _generated(["1", "1", "2", "3"], 50.0)}
    rows = demo.build_table({"held-in": {"a": "cls", "b": "gen"}}, before, after)
    cls, rank_mean, gen = rows[0], rows[2], rows[1]
    assert cls == {
        "group": "held-in",
        "task": "cls",
        "cluster": "c",
        "eval": demo.RANK,
        "n": 4,  # the inverted example is not rank-classified
        "chance": pytest.approx(37.5),  # mean of 1/2, 1/2, 1/4, 1/4
        "generated": 1,
        "before": 25.0,
        "after": 75.0,
    }
    assert (gen["eval"], gen["n"], gen["before"], gen["after"]) == (demo.GREEDY, 4, 0.0, 50.0)
    assert gen["chance"] == 50.0  # always answering "1"
    assert rank_mean["task"] == "held-in mean (1 tasks)" and rank_mean["after"] == 75.0
    assert [r["task"] for r in rows] == ["cls", "gen", *["held-in mean (1 tasks)"] * 2]
    assert rows[3]["eval"] == demo.GREEDY and rows[3]["chance"] == 50.0
    text = demo.format_rows(rows)
    assert text.splitlines()[0].split() == [
        "task", "cluster", "eval", "n", "before", "after", "chance"
    ]  # fmt: skip
    assert "37.5" in text and "-- held-in" in text


def _demo_macros(gin_file: str) -> dict:
    gin.clear_config()
    gin.add_config_file_search_path(str(GIN_DIR))
    gin.parse_config_files_and_bindings([str(GIN_DIR / gin_file)], [], finalize_config=False)
    try:
        return {name: gin.query_parameter(f"%{name}") for name in DEMO_MACROS}
    finally:
        gin.clear_config()


def test_demo_gins_hold_out_their_cluster_and_share_every_setting_but_the_model():
    t5, decoder = (_demo_macros(f"experiments/flan_tiny_{m}.gin") for m in ("t5", "decoder"))
    for macros in (t5, decoder):
        assert macros["MIXTURE_OR_TASK_NAME"] == f"flan_tiny_minus_{macros['HELD_OUT_CLUSTER']}"
        assert macros["TRAIN_STEPS"] % macros["CHECKPOINT_PERIOD"] == 0  # a final checkpoint
    assert {**t5, "MODEL_DIR": None} == {**decoder, "MODEL_DIR": None}
