"""TyDiQA GoldP (Clark et al. 2020) one-shot, as Flan 2022 evaluates it: 11 languages.

Read through the TFDS builder `tydi_qa/goldp` (prepare it with `tfds build tydi_qa`, or point
$TFDS_DATA_DIR at a prepared copy): split `validation-<lang>` holds a language's questions,
each with a gold passage and its annotators' answers (spans of the passage). The one exemplar
is the language's first `train` example (GoldP ids start with the language's name, e.g.
"finnish-...").

Tasks (cluster `tydiqa`, split `validation`): `tydiqa_goldp_1shot_<lang>`, and the mixture
`tydiqa_goldp_1shot`. Prompt:

    Answer the question with a span of the passage.

    Passage: <exemplar passage>
    Question: <exemplar question>
    Answer: <exemplar answer>

    Passage: <passage>
    Question: <question>
    Answer:

Metrics: SQuAD exact match and token F1 against every gold answer (the best one counts);
the suite reports exact match, as Flan 2022 does.
"""

from __future__ import annotations

import functools

import seqio

from flan_jax.evaluation import benchmarks
from flan_jax.metrics import squad

TFDS_NAME = "tydi_qa/goldp:3.0.0"
LANGUAGES = {
    "en": "english",
    "ar": "arabic",
    "bn": "bengali",
    "fi": "finnish",
    "id": "indonesian",
    "ja": "japanese",
    "ko": "korean",
    "ru": "russian",
    "sw": "swahili",
    "te": "telugu",
    "th": "thai",
}
INSTRUCTION = "Answer the question with a span of the passage."
ANSWER_SEPARATOR = "\x1f"  # between the gold answers of one example (`answers` feature)
MIXTURE = "tydiqa_goldp_1shot"


def task_name(lang: str) -> str:
    return f"{MIXTURE}_{lang}"


def _rows(split: str, data_dir: str | None) -> list[dict]:
    import tensorflow_datasets as tfds

    ds = tfds.load(TFDS_NAME, split=split, data_dir=data_dir, shuffle_files=False)
    out = []
    for ex in tfds.as_numpy(ds):
        answers = [a.decode("utf-8") for a in ex["answers"]["text"]]
        out.append(
            {
                "id": ex["id"].decode("utf-8"),
                "context": ex["context"].decode("utf-8"),
                "question": ex["question"].decode("utf-8"),
                "answers": answers,
            }
        )
    return out


@functools.cache
def exemplars(data_dir: str | None = None) -> dict[str, dict]:
    """lang -> the first `train` example whose id starts with the language's name."""
    out: dict[str, dict] = {}
    by_name = {name: lang for lang, name in LANGUAGES.items()}
    for row in _rows("train", data_dir):
        lang = by_name.get(row["id"].split("-", 1)[0])
        if lang is not None and lang not in out and row["answers"]:
            out[lang] = row
        if len(out) == len(LANGUAGES):
            break
    missing = sorted(set(LANGUAGES) - set(out))
    if missing:
        raise ValueError(
            f"{TFDS_NAME} train has no example for {missing} (ids must start with the "
            f"language's name, e.g. 'finnish-...'); is the dataset the GoldP task?"
        )
    return out


def _block(row: dict, answer: str | None) -> str:
    text = f"Passage: {row['context']}\nQuestion: {row['question']}\nAnswer:"
    return text if answer is None else f"{text} {answer}"


def tydiqa_examples(split: str, *, lang: str, data_dir: str | None = None) -> list[dict]:
    """The language's GoldP questions, one-shot: {"inputs", "targets" (first gold answer),
    "answers" (every gold answer, joined by ANSWER_SEPARATOR)}."""
    shot = exemplars(data_dir)[lang]
    prefix = f"{INSTRUCTION}\n\n{_block(shot, shot['answers'][0])}\n\n"
    return [
        {
            "inputs": prefix + _block(row, None),
            "targets": row["answers"][0],
            "answers": ANSWER_SEPARATOR.join(row["answers"]),
        }
        for row in _rows(f"validation-{lang}", data_dir)
        if row["answers"]
    ]


def tydiqa_answer(text, example=None, is_target: bool = False):
    """A prediction: its first line, stripped. A target: every gold answer of the example."""
    if is_target and example is not None and "answers" in example:
        answers = example["answers"]
        answers = answers.decode("utf-8") if isinstance(answers, bytes) else str(answers)
        return answers.split(ANSWER_SEPARATOR)
    text = text.decode("utf-8") if isinstance(text, bytes) else text
    return text.strip().split("\n", 1)[0].strip()


def register(vocabulary: seqio.Vocabulary | None = None, data_dir: str | None = None) -> list[str]:
    """Registers `tydiqa_goldp_1shot_<lang>` for the 11 languages and their mixture."""
    if vocabulary is None:
        from flan_jax.data.vocab import get_vocabulary

        vocabulary = get_vocabulary("t5")
    names = [task_name(lang) for lang in LANGUAGES]
    for lang, name in zip(LANGUAGES, names):
        benchmarks._add_task(
            name,
            functools.partial(tydiqa_examples, lang=lang, data_dir=data_dir),
            splits=["validation"],
            template_type="fs_noopt",
            cluster="tydiqa",
            postprocess_fn=tydiqa_answer,
            vocabulary=vocabulary,
            metric_fns=[squad],
            extra_columns=("answers",),
        )
    benchmarks._add_mixture(MIXTURE, names)
    return [*names, MIXTURE]
