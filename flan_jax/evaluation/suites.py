"""Evaluation suites: several benchmarks, one score each, and a normalized average.

`flan-jax eval --suite flan2022` (docs/evaluation.md) evaluates Flan 2022's held-out
benchmarks: MMLU-Direct (5-shot), MMLU-CoT (5-shot from $FLAN_JAX_MMLU_COT_EXEMPLARS, else
zero-shot), BBH-Direct and BBH-CoT (3-shot), TyDiQA GoldP (1-shot, exact match; skipped with a
note when its TFDS data is not prepared) and MGSM (8-shot native CoT). A benchmark's score is
the unweighted mean of its tasks' metric (MMLU subjects, BBH tasks, TyDiQA and MGSM
languages). Its normalized score subtracts its random-chance
accuracy (`chance`), and the normalized average is the mean of the normalized scores, so a
model that guesses scores about 0 on every benchmark whatever its number of options.

`flan-jax eval --suite opt_iml` evaluates OPT-IML's three generalisation levels of a mixture
registered with `opt_iml_splits` (docs/adding_a_task.md): fully held-out, partially held-out
and fully supervised, each zero-shot and few-shot, at most 250 examples per task (the first
250 of its validation split), accuracy (rank classification) for tasks with options and
Rouge-L for generation; it prints each level's mean and their combined mean, the figure
OPT-IML selects checkpoints by, and logs the means per category (cluster).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence

import seqio

from flan_jax.data import mixtures, opt_iml
from flan_jax.evaluation import (
    benchmarks,
    benchmarks_mgsm,
    benchmarks_mmlu_cot,
    benchmarks_tydiqa,
)
from flan_jax.metrics import rouge
from flan_jax.training import metrics_log

SUITES = ("flan2022", "opt_iml")
OPT_IML_METRIC = "opt_iml_score"  # accuracy with options, else Rouge-L (opt_iml_score())
OPT_IML_MAX_EXAMPLES = 250
SHOTS = (("0-shot", ("zs_opt", "zs_noopt")), ("few-shot", ("fs_opt", "fs_noopt")))


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
    mixture: str | None = None  # opt_iml: a mixture with opt_iml_splits (or one of its splits)

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


def _pick_variants(variants: Sequence[str], formats: Sequence[str]) -> list[str]:
    """One variant per task: the first of `formats` it has (with options before without)."""
    bases = list(dict.fromkeys(opt_iml.base_task(v) for v in variants))
    out = []
    for base in bases:
        found = [f"{base}_{f}" for f in formats if f"{base}_{f}" in variants]
        out += found[:1]
    return out


def opt_iml_suite(mixture: str | None) -> list[Benchmark]:
    """A benchmark per (generalisation level, 0-shot / few-shot) of the mixture's splits."""
    spec = mixtures.mixture_spec_of(mixture) if mixture else None
    if spec is None or spec.opt_iml_splits is None:
        raise ValueError(
            f"--suite opt_iml needs a mixture registered with opt_iml_splits; {mixture!r} is "
            "not one (docs/adding_a_task.md); e.g. --suite_mixture=opt_iml_tiny"
        )
    out = []
    for level in opt_iml.OPT_IML_SPLITS:
        name = f"{spec.name}_{level}"
        if name not in mixtures.registered_mixtures():
            continue  # e.g. no held-out tasks: no partially held-out split
        variants = [t.name for t in seqio.get_mixture_or_task(name).tasks]
        for shots, formats in SHOTS:
            tasks = _pick_variants(variants, formats)
            if tasks:
                bench = Benchmark(f"{level} {shots}", tuple(tasks), lambda _: 0.0, split=None)
                out.append(dataclasses.replace(bench, metric=OPT_IML_METRIC))
    return out


def opt_iml_score(records: Sequence[dict]) -> float:
    """OPT-IML's per-task score: rank-classification accuracy over the examples with options,
    else Rouge-L of the decoded texts against the targets (percent)."""
    ranked = [r for r in records if r.get("mode") == "rank_classification"]
    if ranked:
        return 100.0 * sum(r["prediction"] == r["target"] for r in ranked) / len(ranked)
    if not records:
        return 0.0
    return rouge([r["target"] for r in records], [r["prediction"] for r in records])["rougeL"]


def get_suite(options: SuiteOptions, root: str | None = None) -> list[Benchmark]:
    """The suite's benchmarks, each cut to its first `max_tasks_per_benchmark` tasks."""
    if options.name == "opt_iml":
        suite = opt_iml_suite(options.mixture)
    else:
        suite = flan2022(root)
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


def format_suite(scores: dict[str, dict[str, float]], summary: str = "normalized average") -> str:
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
        rows.append([summary, "", "", "", f"{scores['normalized_average']['score']:.2f}"])
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
    cap = options.max_examples_per_task
    cap = cap or (OPT_IML_MAX_EXAMPLES if options.name == "opt_iml" else None)
    if cap:
        config = dataclasses.replace(config, max_examples=cap)
    results = {}
    for split in dict.fromkeys(b.split for b in suite):  # benchmarks grouped by split
        tasks = [t for bench in suite if bench.split == split for t in bench.tasks]
        results |= evaluate.run_evaluation(
            model, params, tasks, split=split, feature_lengths=feature_lengths, config=config,
            mesh=mesh,
        )  # fmt: skip
    per_task = {n: dict(r.metrics) for n, r in results.items()}
    if options.name == "opt_iml":
        for n, r in results.items():
            per_task[n][OPT_IML_METRIC] = opt_iml_score(r.records)
    scores = suite_scores(suite, per_task)
    if options.name == "opt_iml":
        scores = _opt_iml_summary(suite, scores, per_task, results)
    if jax.process_index() == 0:
        evaluate.write_results(model_dir, step, results)
        metrics_log.append_records(model_dir, [suite_record(options.name, step, scores)])
    print(f"suite {options.name}, step {step}:")
    print(format_suite(scores, summary=SUMMARY[options.name]))
    return scores


SUMMARY = {"flan2022": "normalized average", "opt_iml": "mean of the levels"}


def _opt_iml_summary(suite, scores, per_task, results) -> dict[str, dict[str, float]]:
    """Adds per-category means to each benchmark and replaces the average of benchmarks by
    the mean of the levels (each level: the mean of its 0-shot and few-shot scores)."""
    for bench in suite:
        if bench.name not in scores:
            continue
        clusters: dict[str, list[float]] = {}
        for t in bench.tasks:
            if t in per_task:
                clusters.setdefault(results[t].cluster, []).append(per_task[t][OPT_IML_METRIC])
        for c, values in sorted(clusters.items()):
            scores[bench.name][f"category/{c}"] = sum(values) / len(values)
    levels = {}
    for level in opt_iml.OPT_IML_SPLITS:
        done = [v["score"] for b, v in scores.items() if b.split(" ")[0] == level]
        if done:
            levels[level] = sum(done) / len(done)
    scores.pop("normalized_average", None)
    if levels:
        scores["normalized_average"] = {"score": sum(levels.values()) / len(levels)}
    return scores
