"""The TFDS builder `qed` (QED, Lamm et al. 2021): NQ questions whose answer one sentence explains.

tensorflow_datasets has no QED builder; importing this module registers ours. Prepare it once
(it downloads the two JSON Lines files) with `tfds build --imports flan_jax.data.tfds_qed qed`,
or `python -c "import flan_jax.data.tfds_qed, tensorflow_datasets as tfds;
tfds.builder('qed').download_and_prepare()"`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

_URLS = {
    "train": "https://raw.githubusercontent.com/google-research-datasets/QED/master/qed-train.jsonlines",
    "validation": "https://raw.githubusercontent.com/google-research-datasets/QED/master/qed-dev.jsonlines",
}
# The QED annotation's explanation types; only this one carries a selected sentence.
EXPLAINED = "single_sentence"


def qed_record(line: Mapping[str, Any]) -> dict[str, Any] | None:
    """One QED JSON line -> a `qed` example, or None when it has no single-sentence explanation.

    Offsets, the URL and the referential equalities are dropped; spans keep their strings.
    Example: {"example_id": 7, "title_text": "T", "question_text": "who", "paragraph_text":
    "P", "original_nq_answers": [[{"start": 0, "end": 2, "string": "Al"}, {..., "string":
    "Bo"}]], "annotation": {"explanation_type": "single_sentence", "selected_sentence":
    {"string": "S . "}, "answer": [{"paragraph_reference": {"string": "Al"}, ...}], ...}} ->
    {"example_id": 7, "title_text": "T", "question_text": "who", "paragraph_text": "P",
    "original_nq_answers": ["Al, Bo"], "annotation": {"selected_sentence": "S . ", "answer":
    ["Al"]}}.
    """
    annotation = line["annotation"]
    if annotation["explanation_type"] != EXPLAINED:
        return None  # multi_sentence and none: QED leaves the other annotation fields empty
    return {
        "example_id": line["example_id"],
        "title_text": line["title_text"],
        "question_text": line["question_text"],
        "paragraph_text": line["paragraph_text"],
        # one entry per NQ annotator: the strings of their short-answer spans
        "original_nq_answers": [
            ", ".join(span["string"] for span in spans) for spans in line["original_nq_answers"]
        ],
        "annotation": {
            "selected_sentence": annotation["selected_sentence"]["string"],
            "answer": [a["paragraph_reference"]["string"] for a in annotation["answer"]],
        },
    }


class Qed(tfds.core.GeneratorBasedBuilder):
    """QED's single-sentence explanations: 5,154 train and 1,021 validation (dev) examples.

    QED's other examples (train 2,484, dev 334) have explanation_type multi_sentence or none,
    with no selected sentence or answer annotated; they are skipped.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Single-sentence explanations of qed-train / qed-dev."}

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "example_id": tfds.features.Scalar(np.int64),
                    "title_text": text,
                    "question_text": text,
                    "paragraph_text": text,
                    "original_nq_answers": tfds.features.Sequence(text),
                    "annotation": {
                        "selected_sentence": text,
                        "answer": tfds.features.Sequence(text),
                    },
                }
            ),
            homepage="https://github.com/google-research-datasets/QED",
            citation="Lamm et al. 2021, QED: A Framework and Dataset for Explanations in "
            "Question Answering, TACL 9.",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        paths = dl_manager.download(_URLS)
        return {split: self._generate_examples(path) for split, path in paths.items()}

    def _generate_examples(self, path) -> Iterator[tuple[int, dict[str, Any]]]:
        with tfds.core.Path(path).open() as f:
            for lineno, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    record = qed_record(json.loads(text))
                except (KeyError, TypeError, json.JSONDecodeError) as e:
                    raise ValueError(
                        f"{path}:{lineno}: not a QED example ({type(e).__name__}: {e}); "
                        "expected a line of qed-train.jsonlines / qed-dev.jsonlines"
                    ) from None
                if record is not None:
                    yield record["example_id"], record
