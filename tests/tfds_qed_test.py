"""Our TFDS builder `qed` (flan_jax/data/tfds_qed.py), prepared offline from local JSON Lines.

Not in flan_collection_test.py: that module keeps tfds.testing.mock_data on for all its tests.
"""

import dataclasses
import json

import pytest
import tensorflow_datasets as tfds

from flan_jax.data import sources, task_examples, tasks, tfds_qed
from flan_jax.specs import spec_dir

_QED_PARAGRAPH = "Howl 's Moving Castle is a novel . It was written by Diana Wynne Jones ."
_QED_SENTENCE = "It was written by Diana Wynne Jones ."


def _qed_line(example_id: int, explanation_type: str, **annotation) -> dict:
    """A line of qed-*.jsonlines, with its real fields (character offsets, end exclusive)."""
    return {
        "example_id": example_id,
        "title_text": "Howl's Moving Castle",
        "url": "https://en.wikipedia.org//w/index.php?title=Howl%27s_Moving_Castle",
        "question_text": "who wrote howl 's moving castle",
        "paragraph_text": _QED_PARAGRAPH,
        "sentence_starts": [0, 35],
        "original_nq_answers": [
            [{"start": 53, "end": 70, "string": "Diana Wynne Jones"}],
            [
                {"start": 53, "end": 58, "string": "Diana"},
                {"start": 65, "end": 70, "string": "Jones"},
            ],
        ],
        "annotation": {"explanation_type": explanation_type, **annotation},
    }


def _qed_explained(example_id: int) -> dict:
    span = {"start": 53, "end": 70, "string": "Diana Wynne Jones"}
    it = {"start": 35, "end": 37, "string": "It"}
    castle = {"start": 10, "end": 31, "string": "howl 's moving castle"}
    return _qed_line(
        example_id,
        "single_sentence",
        referential_equalities=[
            {"question_reference": castle, "sentence_reference": dict(it, bridge=False)}
        ],
        answer=[{"sentence_reference": dict(span, bridge=False), "paragraph_reference": span}],
        selected_sentence={"start": 35, "end": 72, "string": _QED_SENTENCE},
    )


def test_qed_builder_keeps_single_sentence_explanations_offline(tmp_path, monkeypatch):
    """download_and_prepare on local files (the download is patched): the exact stored records."""
    lines = {
        "train": [_qed_explained(11), _qed_line(12, "multi_sentence"), _qed_line(13, "none")],
        "validation": [_qed_explained(-21)],
    }
    local = {}
    for split, url in tfds_qed._URLS.items():
        local[url] = tmp_path / url.rsplit("/", 1)[1]
        local[url].write_text("".join(json.dumps(line) + "\n" for line in lines[split]))
    monkeypatch.setattr(
        tfds.download.DownloadManager,
        "download",
        lambda _, urls: {k: local[u] for k, u in urls.items()},
    )
    builder = tfds.builder("qed", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare()
    assert {s: builder.info.splits[s].num_examples for s in ("train", "validation")} == {
        "train": 1,
        "validation": 1,
    }
    spec = tasks.load_task_spec(spec_dir("tasks") / "cot" / "cot_qed.yaml")
    spec = dataclasses.replace(
        spec, source=dataclasses.replace(spec.source, data_dir=str(tmp_path / "tfds"))
    )
    assert list(sources.iter_examples(spec.source, "train")) == [
        {
            "example_id": 11,
            "title_text": "Howl's Moving Castle",
            "question_text": "who wrote howl 's moving castle",
            "paragraph_text": _QED_PARAGRAPH,
            "original_nq_answers": ["Diana Wynne Jones", "Diana, Jones"],
            "annotation": {"selected_sentence": _QED_SENTENCE, "answer": ["Diana Wynne Jones"]},
        }
    ]
    assert list(task_examples.iter_prepared(spec, "validation")) == [
        {
            "question": f"Howl's Moving Castle\n{_QED_PARAGRAPH}\n\n"
            "Based on the passage above, who wrote howl 's moving castle?",
            "rationale": "The relevant sentence in the passage is: " + _QED_SENTENCE,
            "answer": "Diana Wynne Jones",
        }
    ]
    broken = tmp_path / "broken.jsonlines"
    broken.write_text(json.dumps({"example_id": 1}) + "\n")
    with pytest.raises(ValueError, match=r"broken.jsonlines:1: not a QED example \(KeyError"):
        list(builder._generate_examples(broken))
