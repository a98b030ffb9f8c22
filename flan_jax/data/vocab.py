"""Vocabularies by name: "byte" (no file), "t5" (the T5 SentencePiece model), or a .model path.

SentencePiece files are opened on first use, so registering tasks never needs the file; every
task of a vocabulary shares one in-graph tokenizer (see `LazySentencePieceVocabulary`).
"""

from __future__ import annotations

import functools
import os
import threading

import seqio
import tensorflow as tf

VOCAB_ENV = "FLAN_JAX_VOCAB"
T5_EXTRA_IDS = 100


class LazySentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """A SentencePieceVocabulary whose missing file is a clear error at first use, and whose
    TF tokenizer is built once and shared by every dataset that tokenizes with it.

    seqio builds a new `tf_text.SentencepieceTokenizer` on each `encode_tf`: each traced
    tf.data map then embeds the model proto and loads its own SentencePiece kernel (about
    15 MiB for the T5 model), so a mixture of N tasks held ~2N models (4.7 GiB at 100 tasks,
    see BENCHMARKS.md "Mixture scale"). Here the tokenizer is created eagerly (`init_scope`)
    on first use and every graph captures its one resource handle; the ids are unchanged.
    """

    _tf_tokenizer = None
    _tf_tokenizer_lock = threading.Lock()

    @property
    def tf_tokenizer(self):
        if self._tf_tokenizer is None:
            with self._tf_tokenizer_lock, tf.init_scope():
                if self._tf_tokenizer is None:
                    self._tf_tokenizer = super().tf_tokenizer
        return self._tf_tokenizer

    def __getstate__(self):  # seqio's equality and pickling compare this state
        state = super().__getstate__()
        state.pop("_tf_tokenizer", None)
        return state

    @property
    def _model_context(self):
        path = self.sentencepiece_model_file
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"SentencePiece model {path!r} does not exist; set ${VOCAB_ENV} to a .model "
                "file, or $FLAN_JAX_DATA_DIR to a folder holding tokenizer/t5_spiece.model, "
                "or use `vocabulary: byte`"
            )
        return super()._model_context


def t5_vocab_path() -> str:
    """$FLAN_JAX_VOCAB, else $FLAN_JAX_DATA_DIR/tokenizer/t5_spiece.model."""
    if os.environ.get(VOCAB_ENV):
        return os.environ[VOCAB_ENV]
    data_dir = os.environ.get("FLAN_JAX_DATA_DIR", "")
    return os.path.join(data_dir or "$FLAN_JAX_DATA_DIR", "tokenizer", "t5_spiece.model")


def get_vocabulary(name: str = "t5") -> seqio.Vocabulary:
    """Returns the vocabulary a spec's `vocabulary:` names (cached: same name, same object).

    Args:
        name: "byte" -> seqio.ByteVocabulary(); "t5" -> SentencePiece at `t5_vocab_path()` with
            100 extra ids (32,100 ids); anything else is a SentencePiece .model path (also
            100 extra ids).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"vocabulary must be 'byte', 't5' or a .model path, got {name!r}")
    path = t5_vocab_path() if name == "t5" else name
    return _cached_vocabulary("byte" if name == "byte" else path)


@functools.cache
def _cached_vocabulary(key: str) -> seqio.Vocabulary:
    if key == "byte":
        return seqio.ByteVocabulary()
    return LazySentencePieceVocabulary(key, extra_ids=T5_EXTRA_IDS)
