"""Metrics on hand-computed cases; answer extraction on real BBH CoT and GSM8K output styles."""

import glob
import json
import math
import os
import re

import pytest
from conftest import DATA_DIR, needs_data

from flan_jax import metrics
from flan_jax.metrics import postprocessors


def test_accuracy_counts_exact_matches():
    assert metrics.accuracy(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == {"accuracy": 50.0}
    assert metrics.accuracy([], []) == {"accuracy": 0.0}


def test_metrics_reject_length_mismatch():
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        metrics.accuracy(["a", "b"], ["a"])


def test_squad_em_and_f1_hand_computed():
    # target tokens [eiffel, tower]; prediction [eiffel, tower, in, paris]:
    # overlap 2, precision 1/2, recall 1, F1 = 2/3. Second example matches its 2nd answer.
    out = metrics.squad(
        ["The Eiffel Tower", ["Paris", "the city of Paris!"]],
        ["eiffel tower in Paris", "City of  paris"],
    )
    assert out["em"] == pytest.approx(50.0)
    assert out["f1"] == pytest.approx(100.0 * (2 / 3 + 1.0) / 2)
    assert metrics.normalize_squad("The  Eiffel-Tower!") == "eiffeltower"
    assert metrics.exact_match(["An apple"], ["apple."]) == {"exact_match": 100.0}
    assert metrics.f1([""], [""]) == {"f1": 100.0}


def test_rouge_hand_computed():
    # 6 tokens each; unigram overlap 5 (the x2, cat, on, mat), bigram overlap 3 of 5,
    # LCS "the cat on the mat" = 5.
    out = metrics.rouge(["the cat sat on the mat"], ["the cat lay on the mat"])
    assert out["rouge1"] == pytest.approx(100 * 5 / 6)
    assert out["rouge2"] == pytest.approx(100 * 3 / 5)
    assert out["rougeL"] == pytest.approx(100 * 5 / 6)


def test_bleu_hand_computed():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths so brevity penalty 1.
    out = metrics.bleu(["the cat sat on a mat"], ["the cat sat on the mat"])
    assert out["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)
    assert metrics.bleu(["a b c d e"], ["a b c d e"])["bleu"] == pytest.approx(100.0)


def test_aggregate_means_shared_metrics_per_group():
    per_task = {
        "t1": {"accuracy": 50.0, "f1": 10.0},
        "t2": {"accuracy": 100.0},
        "t3": {"accuracy": 0.0},
    }
    out = metrics.aggregate(per_task, {"g": ["t1", "t2", "missing"], "h": ["t3"], "empty": ["x"]})
    assert out == {"g": {"accuracy": 75.0}, "h": {"accuracy": 0.0}}
    assert metrics.mean([]) == 0.0


def test_get_metric_and_postprocessor_errors_list_known_names():
    assert metrics.get_metric("accuracy") is metrics.accuracy
    with pytest.raises(ValueError, match="known metrics"):
        metrics.get_metric("acc")
    with pytest.raises(ValueError, match="known"):
        metrics.get_postprocessor("first_lines")
    assert metrics.get_postprocessor(None) is None


# (postprocessor, model output, expected); outputs copied from the BBH CoT prompts
# (bbh/cot-prompts/*.txt) and GSM8K solutions (gsm8k/.../test.jsonl, FLAN's gsm8k_train.tsv).
EXTRACTION_TABLE = [
    ("bbh_answer", "Eli finished last. So the answer is (B).", "(B)"),
    ("bbh_answer", 'So, we need "}", "]", ">". So the answer is } ] >.', "} ] >"),
    (
        "bbh_answer",
        'Hence, we have ["costume" < "counterpart"] < "oven". '
        "So the answer is costume counterpart oven.",
        "costume counterpart oven",
    ),
    ("bbh_answer", "= -163 - 56 = -219. So the answer is -219.", "-219"),
    ("bbh_answer", "So the answer is valid.", "valid"),
    ("bbh_answer", "So the answer is Yes.\n\nQ: next question\nA: So the answer is No.", "Yes"),
    ("bbh_answer", "(C) Eve finished last", "(C)"),
    ("bbh_answer", "(A)", "(A)"),
    ("bbh_answer", "False", "False"),
    ("cot_answer", "Paris\nQ: what else", "Paris"),
    ("cot_answer", "The answer is: 42", "42"),
    (
        "gsm8k_answer",
        "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.\n#### 18",
        "18",
    ),
    ("gsm8k_answer", "So the total is 1,000 + 80 = 1,080.\n#### 1,080", "1080"),
    ("gsm8k_answer", "Natalia sold 48 + 24 = 72 clips. The answer is 72.", "72"),
    ("gsm8k_answer", "The answer is therefore 3.", "3"),
    ("gsm8k_answer", "She earned 0.2 x 50 = $10.00", "10"),
    ("gsm8k_answer", "The answer is -3.50 dollars.", "-3.5"),
    ("gsm8k_answer", "no number here", "no number here"),
    ("choice_letter", "So the answer is (B).", "B"),
    ("choice_letter", "B. 42", "B"),
    ("choice_letter", "(D)", "D"),
    ("choice_letter", "C", "C"),
    ("choice_letter", "Answer: A\n\nNext question?", "A"),
    ("choice_letter", "Apples", "Apples"),
    ("first_line", "\n  Paris \nLondon", "Paris"),
    ("first_word", "Yes, it is.", "Yes"),
]


@pytest.mark.parametrize(("name", "text", "expected"), EXTRACTION_TABLE)
def test_answer_extraction_table(name, text, expected):
    assert metrics.get_postprocessor(name)(text, example=None, is_target=False) == expected


def test_majority_vote_breaks_ties_by_first_seen():
    assert metrics.majority_vote(["3", "4", "4", "3", "5"]) == "3"
    assert metrics.majority_vote(["1", "2", "2"]) == "2"
    with pytest.raises(ValueError, match="at least one"):
        metrics.majority_vote([])


@needs_data
def test_bbh_cot_prompt_answers_extract_to_the_task_label_form():
    """Every official CoT exemplar's answer, extracted, is one of that task's gold targets."""
    prompts = sorted(glob.glob(os.path.join(DATA_DIR, "bbh", "cot-prompts", "*.txt")))
    assert len(prompts) == 27
    for path in prompts:
        task = os.path.basename(path)[: -len(".txt")]
        with open(os.path.join(DATA_DIR, "bbh", "bbh", task + ".json")) as f:
            targets = {e["target"] for e in json.load(f)["examples"]}
        chains = re.split(r"\n\nQ: ", open(path).read())[1:]
        assert len(chains) == 3, path
        free_form = task in ("word_sorting", "dyck_languages", "multistep_arithmetic_two")
        for chain in chains:
            answer = postprocessors.bbh_answer(chain.split("\nA: ", 1)[1])
            assert free_form or answer in targets, (task, answer)
            assert not answer.endswith("."), (task, answer)


@needs_data
def test_gsm8k_solutions_extract_to_their_final_number():
    path = os.path.join(DATA_DIR, "gsm8k", "grade_school_math", "data", "test.jsonl")
    rows = [json.loads(line) for line in open(path)]
    assert len(rows) == 1319
    for row in rows:
        final = row["answer"].rsplit("####", 1)[1].strip()
        expected = int(final.replace(",", ""))  # independent of normalize_number
        got = postprocessors.gsm8k_answer(row["answer"])
        assert int(got) == expected and not math.isnan(expected), row["answer"][-40:]
