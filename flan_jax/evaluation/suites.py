"""Evaluation suites: several benchmarks, one score each, and a normalized average.

`flan-jax eval --suite flan2022` (docs/evaluation.md) evaluates Flan 2022's held-out
benchmarks: MMLU-Direct (5-shot), MMLU-CoT (5-shot from $FLAN_JAX_MMLU_COT_EXEMPLARS, else
zero-shot), BBH-Direct and BBH-CoT (3-shot), TyDiQA GoldP (1-shot, exact match; skipped with a
note when its TFDS data is not prepared) and MGSM (8-shot native CoT). A benchmark's score is
the unweighted mean of its tasks' metric (MMLU subjects, BBH tasks, TyDiQA and MGSM
languages). Its normalized score subtracts its random-chance
accuracy (`chance`), and the normalized average is the mean of the normalized scores, so a
model that guesses scores about 0 on every benchmark whatever its number of options.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence

from flan_jax.evaluation import (
    benchmarks,
    benchmarks_mgsm,
    benchmarks_mmlu_cot,
    benchmarks_tydiqa,
)
from flan_jax.training import metrics_log

SUITES = ("flan2022",)


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark of a suite.

    Attributes:
      name: as printed, e.g. "MMLU-CoT".
      tasks: its seqio task names.
      chance: task name -> random-chance score (0-100) of that task.
      metric: the task metric the score averages.
      split: the split its tasks are evaluated on.
      unavailable: None when its data can be read, else why not (the suite skips it).
    """

    name: str
    tasks: tuple[str, ...]
    chance: Callable[[str], float]
    metric: str = "accuracy"
    split: str = "test"
    unavailable: Callable[[], str | None] = lambda: None


@dataclasses.dataclass(frozen=True)
class SuiteOptions:
    """`--suite NAME`, with caps for smoke runs (None: everything), and the vocabulary the
    benchmark tasks are (re-)registered with (None: as registered, T5's by the registry)."""

    name: str
    max_examples_per_task: int | None = None
    max_tasks_per_benchmark: int | None = None
    vocabulary: str | None = None

    def __post_init__(self):
        if self.name not in SUITES:
            raise ValueError(f"unknown suite {self.name!r}; known: {list(SUITES)}")
        for field in ("max_examples_per_task", "max_tasks_per_benchmark"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise ValueError(f"--{field} is {value}; use a number >= 1 (or leave it out)")


def bbh_chance(task: str, root: str | None = None) -> float:
    """Random-guess accuracy of a BBH task, from its file: 1/options of each question that
    lists "(A) ..." options, 1/labels for a small label set (Yes/No, valid/invalid), else 0
    (free-form answers such as word_sorting's)."""
    rows = benchmarks.load_bbh_json(
        os.path.join(benchmarks.data_dir(root), "bbh", "bbh", f"{task}.json")
    )
    labels = {r["target"] for r in rows}
    total = 0.0
    for r in rows:
        options = len(re.findall(r"^\([A-Z]\)", r["input"], re.M))
        total += 1 / options if options >= 2 else (1 / len(labels) if len(labels) <= 5 else 0.0)
    return 100.0 * total / len(rows)


def flan2022(root: str | None = None) -> list[Benchmark]:
    """The Flan 2022 benchmarks (MMLU-CoT is 5-shot only when an exemplar file is set)."""
    cot_shots = 5 if os.environ.get(benchmarks_mmlu_cot.EXEMPLARS_ENV) else 0
    bbh = {f"bbh_{t}_{m}": t for t in benchmarks.BBH_TASKS for m in ("direct", "cot")}
    return [
        Benchmark("MMLU-Direct", tuple(benchmarks.mmlu_task_names(5)), lambda _: 25.0),
        Benchmark(
            f"MMLU-CoT ({cot_shots}-shot)",
            tuple(benchmarks_mmlu_cot.task_names(cot_shots)),
            lambda _: 25.0,
        ),
        Benchmark(
            "BBH-Direct",
            tuple(f"bbh_{t}_direct" for t in benchmarks.BBH_TASKS),
            lambda name: bbh_chance(bbh[name], root),
        ),
        Benchmark(
            "BBH-CoT",
            tuple(f"bbh_{t}_cot" for t in benchmarks.BBH_TASKS),
            lambda name: bbh_chance(bbh[name], root),
        ),
        Benchmark(
            "TyDiQA",
            tuple(benchmarks_tydiqa.task_name(lang) for lang in benchmarks_tydiqa.LANGUAGES),
            lambda _: 0.0,  # a free-form span
            metric="em",
            split="validation",
            unavailable=_tydiqa_unavailable,
        ),
        Benchmark(
            "MGSM",
            tuple(benchmarks_mgsm.task_name(lang) for lang in benchmarks_mgsm.MGSM_LANGUAGES),
            lambda _: 0.0,  # a free-form number
        ),
    ]


def _tydiqa_unavailable() -> str | None:
    import tensorflow_datasets as tfds

    if tfds.builder(benchmarks_tydiqa.TFDS_NAME).is_prepared():
        return None
    return f"TFDS {benchmarks_tydiqa.TFDS_NAME} is not prepared (run `tfds build tydi_qa`)"


def get_suite(options: SuiteOptions, root: str | None = None) -> list[Benchmark]:
    """The suite's benchmarks, each cut to its first `max_tasks_per_benchmark` tasks."""
    suite = {"flan2022": flan2022}[options.name](root)
    cap = options.max_tasks_per_benchmark
    return [dataclasses.replace(b, tasks=b.tasks[:cap]) for b in suite]


def suite_scores(
    suite: Sequence[Benchmark], per_task: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """{benchmark: {"score", "chance", "normalized", "tasks"}} and {"normalized_average":
    {"score": mean of the normalized scores}}; means are over each benchmark's tasks.

    E.g. MMLU 40 (chance 25) and MGSM 10 (chance 0): normalized 15 and 10, average 12.5.
    """
    out: dict[str, dict[str, float]] = {}
    for bench in suite:
        done = [t for t in bench.tasks if t in per_task]
        if not done:
            continue
        score = sum(per_task[t][bench.metric] for t in done) / len(done)
        chance = sum(bench.chance(t) for t in done) / len(done)
        out[bench.name] = {
            "score": score,
            "chance": chance,
            "normalized": score - chance,
            "tasks": float(len(done)),
        }
    if out:
        normalized = [v["normalized"] for v in out.values()]
        out["normalized_average"] = {"score": sum(normalized) / len(normalized)}
    return out


def format_suite(scores: dict[str, dict[str, float]]) -> str:
    """The suite table as plain text: benchmark, tasks, score, chance, normalized."""
    header = ["benchmark", "tasks", "score", "chance", "normalized"]
    rows = [
        [
            name,
            f"{v['tasks']:.0f}",
            f"{v['score']:.2f}",
            f"{v['chance']:.2f}",
            f"{v['normalized']:.2f}",
        ]
        for name, v in scores.items()
        if name != "normalized_average"
    ]
    if "normalized_average" in scores:
        rows.append(
            ["normalized average", "", "", "", f"{scores['normalized_average']['score']:.2f}"]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def suite_record(name: str, step: int, scores: dict[str, dict[str, float]]) -> dict:
    """The metrics.jsonl record of a suite run: {"kind": "suite", "suite", "step",
    "<benchmark>/<score|chance|normalized|tasks>": ..., "normalized_average": ...}."""
    values: dict = {}
    for bench, scored in scores.items():
        if bench == "normalized_average":
            values["normalized_average"] = scored["score"]
        else:
            values |= {f"{bench}/{k}": v for k, v in scored.items()}
    return metrics_log.metrics_record("suite", step, values, suite=name)


def run_suite(
    model,
    params,
    step: int,
    options: SuiteOptions,
    *,
    model_dir: str,
    feature_lengths: dict[str, int],
    config,
    mesh=None,
) -> dict[str, dict[str, float]]:
    """Evaluates every task of the suite on its test split, writes the per-task outputs
    (`evaluate.write_results`) and a `suite` record to metrics.jsonl, prints the table."""
    import jax

    from flan_jax.evaluation import evaluate

    if options.vocabulary:  # e.g. "byte" for the byte-level flan_tiny models
        from flan_jax.data.vocab import get_vocabulary

        vocab = get_vocabulary(options.vocabulary)
        for module in (benchmarks, benchmarks_mgsm, benchmarks_mmlu_cot, benchmarks_tydiqa):
            module.register(vocab)
    suite = []
    for bench in get_suite(options):
        why = bench.unavailable()
        if why:
            print(f"suite {options.name}: {bench.name} skipped: {why}")
        else:
            suite.append(bench)
    if options.max_examples_per_task:
        config = dataclasses.replace(config, max_examples=options.max_examples_per_task)
    results = {}
    for split in dict.fromkeys(b.split for b in suite):  # benchmarks grouped by split
        tasks = [t for bench in suite if bench.split == split for t in bench.tasks]
        results |= evaluate.run_evaluation(
            model, params, tasks, split=split, feature_lengths=feature_lengths, config=config,
            mesh=mesh,
        )  # fmt: skip
    scores = suite_scores(suite, {n: r.metrics for n, r in results.items()})
    if jax.process_index() == 0:
        evaluate.write_results(model_dir, step, results)
        metrics_log.append_records(model_dir, [suite_record(options.name, step, scores)])
    print(f"suite {options.name}, step {step}:")
    print(format_suite(scores))
    return scores
