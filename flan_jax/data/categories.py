"""One task taxonomy for every shipped collection (a TaskSpec's `cluster`).

FLAN 2021's twelve clusters, the categories T0 and the other collections add, and the
embedded collection's synthetic skills. OPT-IML's splits, `<mixture>_minus_<cluster>` and
the per-cluster evaluation means all group by these names, so a category means the same
in FLAN 2021, T0, Flan 2022 and flan_tiny. Your own task specs may use new names; the shipped
ones are checked against this table by tests/data_templates_test.py.
"""

from __future__ import annotations

CATEGORIES: dict[str, str] = {
    # FLAN 2021 (Wei et al. 2021, figure 3)
    "nli": "natural language inference: does the premise entail the hypothesis",
    "reading_comprehension": "answer a question about a given passage",
    "read_comp_with_commonsense": "reading comprehension that needs commonsense",
    "closed_book_qa": "answer a question without a passage",
    "commonsense": "choose the plausible continuation or cause",
    "coreference": "resolve what a pronoun or phrase refers to",
    "paraphrase": "do two sentences mean the same",
    "sentiment": "the sentiment of a text",
    "struct_to_text": "describe structured data (tables, triples, concepts) in text",
    "translation": "translate between languages",
    "summarization": "summarise or title a text",
    "misc": "FLAN 2021's miscellaneous tasks (e.g. question classification, math word "
    "problems in code)",
    # T0 / Flan 2022 / other shipped collections
    "multiple_choice_qa": "choose the answer to a question from options",
    "extractive_qa": "copy the answer span out of a passage",
    "topic_classification": "the topic of a text",
    "acceptability": "is a sentence grammatical",
    "math": "arithmetic and math word problems",
    "cot": "chain-of-thought reasoning with a rationale before the answer",
    "niv2": "Natural Instructions v2 tasks (definition + examples prompts)",
    "dialog": "the next turn of a conversation",
    # flan_tiny's synthetic skills
    "string_edit": "edit a word or string (uppercase, remove a letter, reverse)",
    "counting": "count letters or words",
    "comparison": "compare or sort numbers",
}


def unknown_categories(clusters: set[str]) -> list[str]:
    """The names in `clusters` that are not shipped categories, sorted."""
    return sorted(c for c in clusters if c not in CATEGORIES)
