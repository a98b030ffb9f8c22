"""MMLU, BBH and GSM8K: format-checking file loaders, FLAN-paper prompts, and seqio tasks.

Files are read from `$FLAN_JAX_DATA_DIR` (or a `data_dir` argument) when a dataset is
built, never at registration. `register()` adds the tasks and mixtures listed below.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
from collections.abc import Callable

import seqio
import tensorflow as tf

from flan_jax.data.sources import read_jsonl
from flan_jax.metrics import accuracy, bbh_answer, choice_letter, gsm8k_answer
from flan_jax.types import Example

LETTERS = ("A", "B", "C", "D")
MMLU_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
GSM8K_EXEMPLAR_INDICES = (0, 1, 2, 3, 4, 5, 6, 7)  # fixed rows of GSM8K train.jsonl
_CALCULATOR = re.compile(r"<<[^>]*>>")

# Hendrycks et al.'s categories (their categories.py: subject -> subcategory -> category).
_MMLU_BY_CATEGORY = {
    "stem": "abstract_algebra astronomy college_biology college_chemistry "
    "college_computer_science college_mathematics college_physics computer_security "
    "conceptual_physics electrical_engineering "
    "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
    "high_school_mathematics high_school_physics high_school_statistics machine_learning",
    "humanities": "formal_logic high_school_european_history high_school_us_history "
    "high_school_world_history international_law jurisprudence logical_fallacies moral_disputes "
    "moral_scenarios philosophy prehistory professional_law world_religions",
    "social_sciences": "econometrics high_school_geography high_school_government_and_politics "
    "high_school_macroeconomics high_school_microeconomics high_school_psychology human_sexuality "
    "professional_psychology public_relations security_studies sociology us_foreign_policy",
    "other": "anatomy business_ethics clinical_knowledge college_medicine global_facts human_aging "
    "management marketing medical_genetics miscellaneous nutrition professional_accounting "
    "professional_medicine virology",
}
MMLU_CATEGORIES: dict[str, str] = {
    s: c for c, subs in _MMLU_BY_CATEGORY.items() for s in subs.split()
}
MMLU_SUBJECTS: tuple[str, ...] = tuple(sorted(MMLU_CATEGORIES))
BBH_TASKS: tuple[str, ...] = tuple(
    "boolean_expressions causal_judgement date_understanding disambiguation_qa dyck_languages "
    "formal_fallacies geometric_shapes hyperbaton logical_deduction_five_objects "
    "logical_deduction_seven_objects logical_deduction_three_objects movie_recommendation "
    "multistep_arithmetic_two navigate object_counting penguins_in_a_table "
    "reasoning_about_colored_objects ruin_names salient_translation_error_detection snarks "
    "sports_understanding temporal_sequences tracking_shuffled_objects_five_objects "
    "tracking_shuffled_objects_seven_objects tracking_shuffled_objects_three_objects web_of_lies "
    "word_sorting".split()
)


def data_dir(override: str | None = None) -> str:
    """The benchmark data root: `override`, else $FLAN_JAX_DATA_DIR (error if unset)."""
    root = override or os.environ.get("FLAN_JAX_DATA_DIR", "")
    if not root or not os.path.isdir(root):
        raise FileNotFoundError(
            f"benchmark data directory {root!r} not found; set FLAN_JAX_DATA_DIR to the folder "
            "holding mmlu/, bbh/ and gsm8k/ (e.g. ../shared/data)"
        )
    return root


# ----------------------------------------------------------------------------- loaders


def load_mmlu_csv(path: str) -> list[dict]:
    """Reads an MMLU CSV: header `question,choice0..3,answer`, answer an index 0-3.

    Returns:
      [{"question": str, "choices": [4 str], "answer": "A".."D"}], in file order.
    """
    rows = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != MMLU_HEADER:
            raise ValueError(f"{path}:1: header {header} should be {MMLU_HEADER}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if len(row) != 6:
                raise ValueError(
                    f"{where}: expected 6 CSV columns {MMLU_HEADER}, got {len(row)}: {row}"
                )
            if row[5] not in ("0", "1", "2", "3"):
                raise ValueError(f"{where}: answer {row[5]!r} should be an index 0-3")
            rows.append({"question": row[0], "choices": row[1:5], "answer": LETTERS[int(row[5])]})
    return rows


def load_bbh_json(path: str) -> list[Example]:
    """Reads a BBH task file `{"examples": [{"input": str, "target": str}, ...]}`."""
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list):
        raise ValueError(
            f'{path}: expected an object with an "examples" list, got {type(data).__name__}'
        )
    for i, ex in enumerate(examples):
        if not (
            isinstance(ex, dict)
            and isinstance(ex.get("input"), str)
            and isinstance(ex.get("target"), str)
        ):
            raise ValueError(
                f'{path}: examples[{i}] should be {{"input": str, "target": str}}, got {ex!r:.200}'
            )
    return [{"input": ex["input"], "target": ex["target"]} for ex in examples]


def load_bbh_cot_prompt(path: str) -> tuple[str, list[tuple[str, str]]]:
    """Reads an official BBH CoT prompt file (canary line, `-----`, description, 3 Q/A).

    Returns:
      (task description, [(question, chain of thought ending "So the answer is X.")]).
    """
    with open(path) as f:
        text = f.read()
    if "\n-----\n" in text:
        text = text.split("\n-----\n", 1)[1]
    description, *blocks = text.strip().split("\n\nQ: ")
    shots = []
    for i, block in enumerate(blocks):
        if "\nA: " not in block:
            raise ValueError(
                f'{path}: exemplar {i + 1} has no "\\nA: " line; expected "Q: ...\\nA: ..."'
            )
        question, chain = block.split("\nA: ", 1)
        shots.append((question, chain.strip()))
    if not shots:
        raise ValueError(f'{path}: found no "Q: ... A: ..." exemplars after the description')
    return description.strip(), shots


def load_gsm8k_jsonl(path: str) -> list[Example]:
    """Reads GSM8K JSONL `{"question", "answer"}`; the answer must end with `#### N`.

    Returns:
      [{"question", "answer" (as in the file), "rationale" (no <<..>> notes), "number"}].
    """
    rows = []
    for line_no, row in read_jsonl(path):
        answer = row.get("answer")
        if (
            not isinstance(answer, str)
            or "####" not in answer
            or not isinstance(row.get("question"), str)
        ):
            raise ValueError(
                f'{path}:{line_no}: expected {{"question": str, "answer": "... #### N"}}, got '
                f"{repr(row)[:80]}"
            )
        rationale, number = answer.rsplit("####", 1)
        rationale = " ".join(_CALCULATOR.sub("", rationale).split())
        rows.append(
            {
                "question": row["question"],
                "answer": answer,
                "rationale": rationale,
                "number": number.strip().replace(",", ""),
            }
        )
    return rows


# ----------------------------------------------------------------------------- prompts


def mmlu_question(row: dict) -> str:
    """ "{question}\\nA. c0\\nB. c1\\nC. c2\\nD. c3\\nAnswer:" (Hendrycks et al.'s format)."""
    choices = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"]))
    return f"{row['question']}{choices}\nAnswer:"


def mmlu_examples(
    split: str, *, subject: str, shots: int, root: str | None = None
) -> list[Example]:
    """MMLU test questions of one subject, with `shots` dev exemplars in front (0 or 5)."""
    base = os.path.join(data_dir(root), "mmlu", "data", "mmlu")
    rows = load_mmlu_csv(os.path.join(base, split, f"{subject}_{split}.csv"))
    topic = subject.replace("_", " ")
    header = f"The following are multiple choice questions (with answers) about {topic}.\n\n"
    dev = load_mmlu_csv(os.path.join(base, "dev", f"{subject}_dev.csv"))[:shots] if shots else []
    prefix = header + "".join(f"{mmlu_question(r)} {r['answer']}\n\n" for r in dev)
    return [{"inputs": prefix + mmlu_question(r), "targets": r["answer"]} for r in rows]


def bbh_examples(split: str, *, task: str, cot: bool, root: str | None = None) -> list[Example]:
    """BBH examples with the 3 official exemplars: chains of thought, or answers only."""
    base = os.path.join(data_dir(root), "bbh")
    description, shots = load_bbh_cot_prompt(os.path.join(base, "cot-prompts", f"{task}.txt"))
    prefix = description + "\n\n"
    for question, chain in shots:
        prefix += f"Q: {question}\nA: {chain if cot else bbh_answer(chain)}\n\n"
    suffix = "\nA: Let's think step by step." if cot else "\nA:"
    rows = load_bbh_json(os.path.join(base, "bbh", f"{task}.json"))
    return [{"inputs": f"{prefix}Q: {r['input']}{suffix}", "targets": r["target"]} for r in rows]


def gsm8k_examples(split: str, *, shots: int, root: str | None = None) -> list[Example]:
    """GSM8K with CoT targets ("rationale The answer is N."), after `shots` train exemplars."""
    base = os.path.join(data_dir(root), "gsm8k", "grade_school_math", "data")
    prefix = ""
    if shots:
        train = load_gsm8k_jsonl(os.path.join(base, "train.jsonl"))
        for row in (train[i] for i in GSM8K_EXEMPLAR_INDICES[:shots]):
            answer = f"{row['rationale']} The answer is {row['number']}."
            prefix += f"Q: {row['question']}\nA: {answer}\n\n"
    rows = load_gsm8k_jsonl(os.path.join(base, f"{split}.jsonl"))
    return [
        {
            "inputs": f"{prefix}Q: {r['question']}\nA: Let's think step by step.",
            "targets": f"{r['rationale']} The answer is {r['number']}.",
        }
        for r in rows
    ]


# ----------------------------------------------------------------------------- registration


def _dataset_fn(
    make: Callable[..., list[Example]],
    task_name: str,
    template_type: str,
    cluster: str,
    options,
    extra_columns: tuple[str, ...] = (),
):
    def dataset_fn(
        split: str, shuffle_files: bool = False, seed: int | None = None
    ) -> tf.data.Dataset:
        rows = make(split)
        columns = {
            "inputs": [r["inputs"] for r in rows],
            "targets": [r["targets"] for r in rows],
            "_task_name": [task_name] * len(rows),
            "_template_idx": [0] * len(rows),
            "_template_type": [template_type] * len(rows),
            "_cluster": [cluster] * len(rows),
        }
        if options:
            columns["options"] = [list(options)] * len(rows)
        for key in extra_columns:  # strings the postprocessor reads, e.g. all gold answers
            columns[key] = [r[key] for r in rows]
        return tf.data.Dataset.from_tensor_slices(columns)

    return dataset_fn


def _add_task(
    name,
    make,
    *,
    splits,
    template_type,
    cluster,
    postprocess_fn,
    vocabulary,
    options=None,
    metric_fns=(accuracy,),
    extra_columns=(),
):
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    features = {k: seqio.Feature(vocabulary, add_eos=True) for k in ("inputs", "targets")}
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            _dataset_fn(make, name, template_type, cluster, options, tuple(extra_columns)),
            splits=splits,
            # Not cached: a benchmark is read once per evaluation (a cache would save
            # nothing), and its Python source reads files under a data dir chosen at
            # registration (`root`) that flan_jax.data.cache's fingerprints do not cover.
            caching_permitted=False,
        ),
        output_features=features,
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        postprocess_fn=postprocess_fn,
        metric_fns=list(metric_fns),
    )


def _add_mixture(name: str, tasks: list[str]) -> None:
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, tasks, default_rate=1.0)


def mmlu_task_names(shots: int) -> list[str]:
    """`mmlu_<subject>_<shots>shot` for the 57 subjects."""
    return [f"mmlu_{s}_{shots}shot" for s in MMLU_SUBJECTS]


def register(vocabulary: seqio.Vocabulary | None = None, root: str | None = None) -> list[str]:
    """Registers every benchmark task and mixture with seqio (idempotent); returns the names.

    Tasks: `mmlu_<subject>_{0,5}shot` (options A-D, rank classification), mixtures
    `mmlu_{0,5}shot`; `bbh_<task>_{direct,cot}` and mixtures `bbh_{direct,cot}`;
    `gsm8k_{0,8}shot_cot`. Clusters: `mmlu_<category>`, `bbh`, `gsm8k`.

    Args:
      vocabulary: the inputs/targets vocabulary; default `get_vocabulary("t5")` (lazy).
      root: data folder holding mmlu/, bbh/, gsm8k/; default $FLAN_JAX_DATA_DIR at read time.
    """
    if vocabulary is None:
        from flan_jax.data.vocab import get_vocabulary

        vocabulary = get_vocabulary("t5")
    names = []
    add = functools.partial(_add_task, vocabulary=vocabulary)
    for shots in (0, 5):
        for subject, name in zip(MMLU_SUBJECTS, mmlu_task_names(shots)):
            make = functools.partial(mmlu_examples, subject=subject, shots=shots, root=root)
            add(
                name,
                make,
                splits=["test"],
                template_type="fs_opt" if shots else "zs_opt",
                cluster=f"mmlu_{MMLU_CATEGORIES[subject]}",
                postprocess_fn=choice_letter,
                options=LETTERS,
            )
        _add_mixture(f"mmlu_{shots}shot", mmlu_task_names(shots))
        names += [*mmlu_task_names(shots), f"mmlu_{shots}shot"]
    for mode in ("direct", "cot"):
        tasks = [f"bbh_{t}_{mode}" for t in BBH_TASKS]
        for task, name in zip(BBH_TASKS, tasks):
            make = functools.partial(bbh_examples, task=task, cot=mode == "cot", root=root)
            add(
                name,
                make,
                splits=["test"],
                template_type="fs_cot" if mode == "cot" else "fs_noopt",
                cluster="bbh",
                postprocess_fn=bbh_answer,
            )
        _add_mixture(f"bbh_{mode}", tasks)
        names += [*tasks, f"bbh_{mode}"]
    for shots in (0, 8):
        name = f"gsm8k_{shots}shot_cot"
        make = functools.partial(gsm8k_examples, shots=shots, root=root)
        add(
            name,
            make,
            splits=["test"],
            template_type="fs_cot" if shots else "cot",
            cluster="gsm8k",
            postprocess_fn=gsm8k_answer,
        )
        names.append(name)
    return names


def mmlu_summary(per_task: dict[str, dict[str, float]], shots: int) -> dict[str, float]:
    """MMLU accuracy per subject, per category and overall (unweighted means of subjects).

    Args:
      per_task: task name -> {"accuracy": ...} as returned by evaluation.
      shots: 0 or 5, selecting the `mmlu_<subject>_<shots>shot` tasks.

    Returns:
      {subject: acc, ..., "stem": acc, "humanities": ..., "social_sciences": ..., "other": ...,
      "average": acc}, covering the subjects present in `per_task`.
    """
    subjects = {
        s: per_task[f"mmlu_{s}_{shots}shot"]["accuracy"]
        for s in MMLU_SUBJECTS
        if f"mmlu_{s}_{shots}shot" in per_task
    }
    out = dict(subjects)
    for category in _MMLU_BY_CATEGORY:
        values = [v for s, v in subjects.items() if MMLU_CATEGORIES[s] == category]
        if values:
            out[category] = sum(values) / len(values)
    if subjects:
        out["average"] = sum(subjects.values()) / len(subjects)
    return out
