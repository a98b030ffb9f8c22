"""The demo's table (which variant each task is evaluated with, chance levels, group means)
and its two gin files."""

import json
import pathlib

import pytest

import gin
from flan_jax import registry
from flan_jax.cli import demo, demo_curve, demo_scaling
from flan_jax.data import mixtures
from flan_jax.evaluation.evaluate import TaskResult

ROOT = pathlib.Path(__file__).resolve().parents[1]
GIN_DIR = ROOT / "gin"
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
        "lo": pytest.approx(30.06, abs=0.01),  # Wilson, 3 of 4
        "hi": pytest.approx(95.44, abs=0.01),
        "above_chance": False,  # 30.06 < 37.5
    }
    assert (gen["eval"], gen["n"], gen["before"], gen["after"]) == (demo.GREEDY, 4, 0.0, 50.0)
    assert gen["chance"] == 50.0  # always answering "1"
    assert rank_mean["task"] == "held-in (1 tasks)" and rank_mean["after"] == 75.0
    assert [r["task"] for r in rows] == ["cls", "gen", *["held-in (1 tasks)"] * 2]
    assert rows[3]["eval"] == demo.GREEDY and rows[3]["chance"] == 50.0
    text = demo.format_rows(rows)
    assert text.splitlines()[0].split() == [
        "task", "cluster", "eval", "n", "before", "after", "95%", "interval", "chance", ">chance"
    ]  # fmt: skip
    assert "37.5" in text and "-- held-in" in text


def test_group_rows_pool_examples_and_weigh_tasks_by_n():
    before = {"a": _generated(["1"] * 10, 0.0), "b": _generated(["1", "2"] * 15, 0.0)}
    after = {"a": _generated(["1"] * 10, 100.0), "b": _generated(["1", "2"] * 15, 50.0)}
    rows = demo.build_table({"g": {"x": "a", "y": "b"}}, before, after)
    pooled = rows[2]
    assert (pooled["task"], pooled["n"]) == ("g (2 tasks)", 40)
    assert pooled["after"] == 62.5  # (10 + 15) / 40, not the task mean 75
    assert pooled["chance"] == 62.5  # (10 * 100 + 30 * 50) / 40
    lo, hi = demo.wilson_interval(25, 40)
    assert (pooled["lo"], pooled["hi"]) == (lo, hi) and not pooled["above_chance"]
    assert not rows[0]["above_chance"]  # 10 of 10, but always answering "1" does as well


def test_wilson_interval_exact_values():
    got = {
        (h, n): tuple(round(x, 2) for x in demo.wilson_interval(h, n))
        for h, n in [(9, 10), (0, 10), (10, 10), (50, 100), (95, 100)]
    }
    assert got == {
        (9, 10): (59.58, 98.21),
        (0, 10): (0.0, 27.75),
        (10, 10): (72.25, 100.0),
        (50, 100): (40.38, 59.62),
        (95, 100): (88.82, 97.85),
    }
    assert demo.wilson_interval(0, 0) == (0.0, 100.0)


def test_generalisation_groups_of_the_demo_mixtures():
    registry.register_all()
    groups = demo.generalisation_groups("flan_tiny_demo_minus_nli", "flan_tiny_demo_eval", "nli")
    assert list(groups) == [
        "held-in", "unseen instructions", "unseen task", "held-out (nli)"
    ]  # fmt: skip
    # forward templates only (the mixtures' inversion_share 0): the tasks' `_fwd` variants
    assert len(groups["held-in"]) == 8 and "tiny_reverse_word_fwd" not in groups["held-in"]
    assert groups["held-in"]["tiny_topic_fwd"] == "tiny_topic_fwd_zs_opt"
    assert groups["unseen task"] == {
        "tiny_restaurant_reviews_fwd": "tiny_restaurant_reviews_fwd_zs_opt"
    }
    assert groups["held-out (nli)"] == {
        "tiny_height_nli_fwd": "tiny_height_nli_fwd_zs_opt",
        "tiny_location_nli_fwd": "tiny_location_nli_fwd_zs_opt",
    }
    new = groups["unseen instructions"]  # their templates have no inverted ones: as they are
    assert new["tiny_topic_unseen_inst"] == "tiny_topic_unseen_inst_zs_opt"
    assert all(b.replace("_unseen_inst", "_fwd") in groups["held-in"] for b in new)
    # the whole collection minus a cluster: held-in and that cluster only
    groups = demo.generalisation_groups("flan_tiny_minus_math", "flan_tiny", "math")
    assert list(groups) == ["held-in", "held-out (math)"] and len(groups["held-in"]) == 15


def _demo_macros(gin_file: str) -> dict:
    from flan_jax.cli import gin_flags

    gin_flags.use_safe_system_path_check()  # a runs/ folder (make demo's) in the cwd is fine
    gin.clear_config()
    gin.add_config_file_search_path(str(GIN_DIR))
    gin.parse_config_files_and_bindings([str(GIN_DIR / gin_file)], [], finalize_config=False)
    try:
        return {name: gin.query_parameter(f"%{name}") for name in DEMO_MACROS}
    finally:
        gin.clear_config()


def test_demo_gins_hold_out_their_cluster_and_share_every_setting_but_model_and_length():
    t5, decoder = (_demo_macros(f"experiments/flan_tiny_{m}.gin") for m in ("t5", "decoder"))
    for macros in (t5, decoder):
        cluster = macros["HELD_OUT_CLUSTER"]
        assert macros["MIXTURE_OR_TASK_NAME"] == f"flan_tiny_demo_minus_{cluster}"
        assert macros["TRAIN_STEPS"] % macros["CHECKPOINT_PERIOD"] == 0  # a final checkpoint
    # the decoder trains longer (README: a prefix LM needs 8000 steps to reach the bars)
    same = lambda m: {**m, "MODEL_DIR": None, "TRAIN_STEPS": None, "CHECKPOINT_PERIOD": None}
    assert same(t5) == same(decoder)
    assert (t5["TRAIN_STEPS"], decoder["TRAIN_STEPS"]) == (5000, 8000)


def test_cluster_mixtures_add_clusters_in_member_order_at_their_rates():
    registry.register_all()
    got = demo_scaling.cluster_mixtures("flan_tiny_demo_minus_nli", (1, 2, 6))
    assert got[1] == ("flan_tiny_demo_minus_nli_1_clusters", ["sentiment"])
    assert got[2][1] == ["sentiment", "topic_classification"]
    assert got[6][1] == [
        "sentiment", "topic_classification", "reading_comprehension", "string_edit", "counting",
        "comparison",
    ]  # fmt: skip
    rates = mixtures.mixture_rates("flan_tiny_demo_minus_nli_2_clusters")
    assert rates == {"tiny_product_reviews_fwd_zs_opt": 1500.0, "tiny_topic_fwd_zs_opt": 1500.0}
    with pytest.raises(ValueError, match="asks for 7 clusters"):
        demo_scaling.cluster_mixtures("flan_tiny_demo_minus_nli", (7,))


def test_pooled_row_scaling_table_and_plot(tmp_path):
    results = {"a": _ranked([2, 2, 2, 2], hits=4), "b": _ranked([4] * 6, hits=3)}
    row = demo_scaling.pooled_row(results, ["a", "b"])
    lo, hi = demo.wilson_interval(7, 10)
    assert row == {
        "n": 10, "value": 70.0, "lo": lo, "hi": hi, "chance": 35.0, "above_chance": True
    }  # fmt: skip
    rows = [{"k": 1, "clusters": ["sentiment"], **row}]
    assert demo_scaling.format_scaling(rows, "nli acc").splitlines() == [
        "clusters  n         nli acc  95% interval    chance  >chance  trained on",
        "       1  10           70.0  [ 39.7,  89.2]    35.0      yes  sentiment",
    ]
    demo_scaling.plot_scaling(rows * 2, "nli", str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_learning_curve_points_table_files_and_resume(tmp_path):
    results = {
        "a": _ranked([2, 2, 2, 2], hits=3),
        "b": _ranked([4] * 6, hits=6),
        "g": _generated(["1", "2", "3", "4", "5"], 40.0),
    }
    point = demo_curve.curve_point(500, results, ["a", "b", "g"])
    lo, hi = demo.wilson_interval(9, 10)
    glo, ghi = demo.wilson_interval(2, 5)
    assert point == {
        "step": 500,
        demo.RANK: {"n": 10, "value": 90.0, "lo": lo, "hi": hi},
        demo.GREEDY: {"n": 5, "value": 40.0, "lo": glo, "hi": ghi},
    }
    only_rank = demo_curve.curve_point(0, results, ["a"])
    assert set(only_rank) == {"step", demo.RANK}
    text = demo_curve.write_curve(str(tmp_path), {500: point, 0: only_rank}, plot=True)
    assert text.splitlines() == [
        "  step  rank acc (bar 90)           greedy EM (bar 60)",
        "     0   75.0 [ 30.1,  95.4] n=4     -",
        "   500   90.0 [ 59.6,  98.2] n=10     40.0 [ 11.8,  76.9] n=5",
    ]
    assert (tmp_path / "learning_curve.txt").read_text() == text + "\n"
    assert (tmp_path / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    # a resumed demo reads back the points it measured
    assert demo_curve.read_curve(str(tmp_path)) == {0: only_rank, 500: point}
    assert demo_curve.read_curve(str(tmp_path / "none")) == {}
    assert demo.DemoConfig(curve_steps=[1000, 500, 500]).curve_steps == (500, 1000)
    assert demo.DemoConfig(curve_steps=None).curve_steps == ()
    with pytest.raises(ValueError, match=r"curve_steps \(\(0,\)\) must be steps >= 1"):
        demo.DemoConfig(curve_steps=(0,))


@pytest.mark.parametrize("variant", ["t5", "decoder"])
def test_readme_prints_the_committed_run_of_the_shipped_settings(variant):
    """README's demo table is `format_rows` of a real run's demo_results.json (committed in
    docs/), and that run used the settings the demo gin ships."""
    results = json.loads((ROOT / "docs" / f"demo_results_{variant}.json").read_text())
    macros = _demo_macros(f"experiments/flan_tiny_{variant}.gin")
    assert results["train_steps"] == macros["TRAIN_STEPS"]
    assert results["mixture"] == macros["MIXTURE_OR_TASK_NAME"]
    assert results["feature_lengths"] == macros["TASK_FEATURE_LENGTHS"]
    readme = (ROOT / "README.md").read_text()
    assert demo.format_rows(results["rows"]) in readme
    assert f"{results['wall_s']:.0f} s wall, {results['cpu_s']:.0f} CPU seconds" in readme
    # and its learning curve (MODEL_DIR/learning_curve.json of the same run)
    curve = json.loads((ROOT / "docs" / f"demo_curve_{variant}.json").read_text())
    assert curve["points"][-1]["step"] == results["train_steps"]
    assert demo_curve.format_curve(curve["points"]) in readme
