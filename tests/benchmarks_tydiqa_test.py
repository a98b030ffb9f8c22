"""TyDiQA GoldP one-shot through its TFDS builder, with the builder's data mocked: crafted
GoldP-shaped examples (ids "<language>-<n>", several gold answers) stand in for the files."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from flan_jax.data.vocab import get_vocabulary
from flan_jax.evaluation import benchmarks_tydiqa as tydiqa
from flan_jax.metrics import squad

tfds = pytest.importorskip("tensorflow_datasets")


def _row(id_, context, question, answers):
    return {
        "id": id_,
        "title": "t",
        "context": context,
        "question": question,
        "answers": {"text": answers, "answer_start": [context.find(a) for a in answers]},
    }


TRAIN = [_row("english-0", "ignored: no answer", "q?", [])] + [
    _row(f"{name}-{i}", f"{name} passage {i}.", f"{name} question {i}?", [f"passage {i}"])
    for i, name in enumerate(tydiqa.LANGUAGES.values())
]
VALIDATION = {
    lang: [
        _row(f"{name}-v0", "The cat sat on the mat.", "Where did the cat sit?", ["the mat", "mat"]),
        _row(f"{name}-v1", "Oslo is in Norway.", "Which country?", ["Norway"]),
        _row(f"{name}-v2", "No answer here.", "Unanswerable?", []),  # dropped: no gold answer
    ]
    for lang, name in tydiqa.LANGUAGES.items()
}


def _as_dataset(self, split, **kwargs):
    rows = TRAIN if split == "train" else VALIDATION[str(split).removeprefix("validation-")]

    return tf.data.Dataset.from_generator(
        lambda: (
            {
                **r,
                "answers": {
                    "text": np.array(r["answers"]["text"], dtype=object).reshape(-1),
                    "answer_start": np.array(r["answers"]["answer_start"], np.int32).reshape(-1),
                },
            }
            for r in rows
        ),
        output_signature={
            "id": tf.TensorSpec((), tf.string),
            "title": tf.TensorSpec((), tf.string),
            "context": tf.TensorSpec((), tf.string),
            "question": tf.TensorSpec((), tf.string),
            "answers": {
                "text": tf.TensorSpec((None,), tf.string),
                "answer_start": tf.TensorSpec((None,), tf.int32),
            },
        },
    )


@pytest.fixture()
def mocked():
    tydiqa.exemplars.cache_clear()
    with tfds.testing.mock_data(as_dataset_fn=_as_dataset):
        yield
    tydiqa.exemplars.cache_clear()


def test_one_shot_prompt_targets_and_all_gold_answers(mocked):
    rows = tydiqa.tydiqa_examples("validation", lang="fi")
    assert len(rows) == 2  # the example without a gold answer is left out
    i = list(tydiqa.LANGUAGES).index("fi") + 1  # TRAIN's index of the Finnish exemplar
    assert rows[0]["inputs"] == (
        "Answer the question with a span of the passage.\n\n"
        f"Passage: finnish passage {i - 1}.\nQuestion: finnish question {i - 1}?\n"
        f"Answer: passage {i - 1}\n\n"
        "Passage: The cat sat on the mat.\nQuestion: Where did the cat sit?\nAnswer:"
    )
    assert [r["targets"] for r in rows] == ["the mat", "Norway"]
    assert rows[0]["answers"] == "the mat\x1fmat"


def test_registered_tasks_score_against_every_gold_answer(mocked):
    names = tydiqa.register(get_vocabulary("byte"))
    assert names[-1] == "tydiqa_goldp_1shot" and len(names) == 12
    task = seqio.get_mixture_or_task("tydiqa_goldp_1shot_ja")
    examples = list(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
    assert [e["targets_pretokenized"].decode() for e in examples] == ["the mat", "Norway"]
    targets = [tydiqa.tydiqa_answer(None, example=e, is_target=True) for e in examples]
    assert targets == [["the mat", "mat"], ["Norway"]]
    # oracle: gold answers score 100; "mat" matches the second gold answer of the first
    predictions = [tydiqa.tydiqa_answer(p) for p in ["The mat.\nmore text", "Sweden"]]
    assert predictions == ["The mat.", "Sweden"]
    assert squad(targets, ["the mat", "Norway"]) == {"em": 100.0, "f1": 100.0}
    assert squad(targets, predictions) == {"em": 50.0, "f1": 50.0}
    assert squad(targets, ["mat", "in Norway"]) == pytest.approx(
        {"em": 50.0, "f1": (100 + 200 / 3) / 2}
    )
    assert task.metric_fns == [squad]
