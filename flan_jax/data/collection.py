"""Per-dataset preprocessors of the FLAN collection: raw TFDS example -> template fields.

A task spec names one with `preprocessor: "flan_jax.data.collection:<fn>"`; it runs on each
raw example as `sources.iter_examples` yields it (plain Python: str, int, float, lists, nested
dicts) before the spec's `fields` renaming. Datasets whose features are already flat strings
with a class label need none: their specs use `fields` + `label_map` alone.

Example (ARC): {"question": "Which gas do plants absorb?", "choices": {"text": ["oxygen",
"carbon dioxide"], "label": [0, 1]}, "answerKey": 1} -> {"question": "Which gas do plants
absorb?", "options": ["oxygen", "carbon dioxide"], "answer": "carbon dioxide"}.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from flan_jax.types import Example

LANGUAGE_NAMES = {
    "cs": "Czech",
    "de": "German",
    "en": "English",
    "es": "Spanish",
    "fi": "Finnish",
    "fr": "French",
    "ro": "Romanian",
    "ru": "Russian",
    "tr": "Turkish",
}


def _first_or(values: Sequence[str], default: str) -> str:
    """values[0], or `default` for an empty list (SQuAD v2.0's unanswerable questions)."""
    return values[0] if len(values) else default


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text).strip()


def _labelled(options: list[str], label: int, **fields: str) -> Example:
    if not 0 <= label < len(options):
        raise ValueError(
            f"label {label} is out of range for {len(options)} options {options}; "
            "the source example is malformed (labels index the options from 0)"
        )
    return {**fields, "options": options, "answer": options[label]}


# ---------------------------------------------------------------- question answering


def squad(ex: Example) -> Example:
    """SQuAD v1.1/v2.0: the first gold span; v2.0's impossible questions -> "unanswerable"."""
    answer = _first_or(ex["answers"]["text"], "unanswerable")
    return {"context": ex["context"], "question": ex["question"], "answer": answer}


def drop(ex: Example) -> Example:
    return {"context": ex["passage"], "question": ex["question"], "answer": ex["answer"]}


def quac(ex: Example) -> Example:
    """QuAC: one question per example; "CANNOTANSWER" is kept as the answer when given."""
    context = f"{ex['title']}: {ex['section_title']}. {ex['background']}\n\n{ex['context']}"
    return {"context": context, "question": ex["question"], "answer": ex["orig_answer"]["text"]}


def natural_questions(ex: Example) -> Example:
    """NQ-open: questions come lower-cased without "?"; the first of the gold answers."""
    return {"question": ex["question"] + "?", "answer": _first_or(ex["answer"], "")}


def trivia_qa(ex: Example) -> Example:
    return {"question": ex["question"], "answer": ex["answer"]["value"]}


def arc(ex: Example) -> Example:
    return _labelled(list(ex["choices"]["text"]), ex["answerKey"], question=ex["question"])


def openbookqa(ex: Example) -> Example:
    q = ex["question"]
    options = [q["choice_A"], q["choice_B"], q["choice_C"], q["choice_D"]]
    return _labelled(options, ex["answerKey"], context=ex["fact1"], question=q["stem"])


def cosmos_qa(ex: Example) -> Example:
    options = [ex["answer0"], ex["answer1"], ex["answer2"], ex["answer3"]]
    return _labelled(options, ex["label"], context=ex["context"], question=ex["question"])


def multirc(ex: Example) -> Example:
    return {
        "paragraph": ex["paragraph"],
        "question": ex["question"],
        "response": ex["answer"],
        "label": ex["label"],
    }


def record(ex: Example) -> Example:
    """ReCoRD: the query's "@placeholder" becomes a blank; the candidate entities are the options.

    The passage's "@highlight" summary lines are dropped (they restate the answer).
    """
    return {
        "passage": ex["passage"].split("\n@highlight")[0].strip(),
        "query": ex["query"].replace("@placeholder", "___"),
        "options": list(ex["entities"]),
        "answer": _first_or(ex["answers"], ""),
    }


def coqa(ex: Example) -> Example:
    """CoQA: the whole conversation as numbered questions -> numbered answers (FLAN's form)."""
    pairs = list(zip(ex["questions"], ex["answers"]["input_text"]))
    return {
        "story": ex["story"],
        "questions": "\n".join(f"{i}. {q}" for i, (q, _) in enumerate(pairs, 1)),
        "answers": "\n".join(f"{i}. {a}" for i, (_, a) in enumerate(pairs, 1)),
    }


# ------------------------------------------------------------------- commonsense, coref


def copa(ex: Example) -> Example:
    options = [ex["choice1"], ex["choice2"]]
    return _labelled(options, ex["label"], premise=ex["premise"], relation=ex["question"])


def endings(ex: Example) -> Example:
    """HellaSwag / StoryCloze: a context and its candidate endings, `label` the right one."""
    return _labelled(list(ex["endings"]), ex["label"], context=ex["context"])


def piqa(ex: Example) -> Example:
    return _labelled([ex["sol1"], ex["sol2"]], ex["label"], goal=ex["goal"])


def definite_pronoun_resolution(ex: Example) -> Example:
    return _labelled(
        list(ex["candidates"]), ex["label"], sentence=ex["sentence"], pronoun=ex["pronoun"]
    )


def wsc273(ex: Example) -> Example:
    options = [ex["option1_normalized"], ex["option2_normalized"]]
    return _labelled(options, ex["label"], sentence=ex["text"], pronoun=ex["pronoun_text"])


def winogrande(ex: Example) -> Example:
    return _labelled([ex["option1"], ex["option2"]], ex["label"], sentence=ex["sentence"])


# ----------------------------------------------------------- generation and misc


def stsb(ex: Example) -> Example:
    """STS-B: the 0-5 similarity rounded to a whole score, one of six options "0".."5"."""
    score = min(5, max(0, int(round(float(ex["label"])))))
    return {"sentence1": ex["sentence1"], "sentence2": ex["sentence2"], "answer": str(score)}


def common_gen(ex: Example) -> Example:
    return {"concepts": ", ".join(ex["concepts"]), "target": ex["target"]}


def dart(ex: Example) -> Example:
    return {"data": "; ".join(ex["tripleset"]), "target": ex["target"]}


def web_nlg(ex: Example) -> Example:
    return {"data": "; ".join(ex["input"]), "target": ex["target"]}


def e2e_nlg(ex: Example) -> Example:
    return {"data": ex["meaning_representation"], "target": ex["target"]}


def cnn_dailymail(ex: Example) -> Example:
    return {"document": ex["article"], "summary": _one_line(ex["highlights"])}


def newsroom(ex: Example) -> Example:
    return {"document": ex["text"], "summary": ex["summary"]}


def aeslc(ex: Example) -> Example:
    return {"email": ex["email_body"], "subject": _one_line(ex["subject_line"])}


def _sentences(pairs: Example) -> str:
    """A TFDS `Sequence({key, value})` of sentences, in its order, as one paragraph."""
    return " ".join(v.strip() for v in pairs["value"] if v.strip())


def rotten_tomatoes(ex: Example) -> Example:
    """Opinion abstracts (Rotten Tomatoes): the critics' reviews -> the critic consensus."""
    return {
        "topic": ex["_movie_name"],
        "opinions": _sentences(ex["_critics"]),
        "abstract": _one_line(ex["_critic_consensus"]),
    }


def idebate(ex: Example) -> Example:
    """Opinion abstracts (idebate): an argument's sentences -> the claim they support."""
    return {
        "topic": ex["_debate_name"],
        "opinions": _sentences(ex["_argument_sentences"]),
        "abstract": _one_line(ex["_claim"]),
    }


def wiki_lingua(ex: Example) -> Example:
    """GEM WikiLingua (English): a how-to article -> its summary."""
    return {"document": ex["source"], "summary": _one_line(ex["target"])}


def ag_news(ex: Example) -> Example:
    return {"title": ex["title"], "text": ex["description"], "label": ex["label"]}


def fix_punct(ex: Example) -> Example:
    """An English sentence, lower-cased with its punctuation stripped -> the original."""
    text = ex["en"]
    bare = re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text)).strip().lower()
    return {"text": bare, "target": text}


def translation(source: str, target: str) -> Callable[[Example], Example]:
    """A preprocessor for one direction of a WMT pair: `translation("de", "en")`."""

    def fn(ex: Example) -> Example:
        return {
            "source_language": LANGUAGE_NAMES[source],
            "target_language": LANGUAGE_NAMES[target],
            "source": ex[source],
            "target": ex[target],
        }

    fn.__name__ = f"translate_{source}_{target}"
    return fn


# One task per WMT pair, other language -> English; inverted templates give English -> other.
translate_cs_en = translation("cs", "en")
translate_de_en = translation("de", "en")
translate_fi_en = translation("fi", "en")
translate_fr_en = translation("fr", "en")
translate_ro_en = translation("ro", "en")
translate_ru_en = translation("ru", "en")
translate_tr_en = translation("tr", "en")
# ParaCrawl's pair is named English-first (`para_crawl/enes`): English -> Spanish here.
translate_en_es = translation("en", "es")


# ------------------------------------------------------------------------ chain of thought

# e-SNLI's ClassLabel order (TFDS `esnli`): entailment, neutral, contradiction.
ESNLI_ANSWERS = ("yes", "it is not possible to tell", "no")


def esnli(ex: Example) -> Example:
    """e-SNLI as a CoT question: premise + hypothesis -> first explanation, then the answer.

    Example: {"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": 0,
    "explanation_1": "A dog is an animal."} -> {"question": 'Premise: "A dog runs."\n
    Hypothesis: "An animal moves."\nDoes the premise entail the hypothesis? Answer yes, no,
    or it is not possible to tell.', "rationale": "A dog is an animal.", "answer": "yes"}.
    """
    label = ex["label"]
    if not 0 <= label < len(ESNLI_ANSWERS):
        raise ValueError(
            f"e-SNLI label {label} is not 0 (entailment), 1 (neutral) or 2 (contradiction); "
            "is this TFDS esnli?"
        )
    question = (
        f'Premise: "{ex["premise"].strip()}"\nHypothesis: "{ex["hypothesis"].strip()}"\n'
        "Does the premise entail the hypothesis? Answer yes, no, or it is not possible to tell."
    )
    rationale = _one_line(ex["explanation_1"])
    return {"question": question, "rationale": rationale, "answer": ESNLI_ANSWERS[label]}


def qed(ex: Example) -> Example:
    """QED (our TFDS `qed`) as a CoT question: passage + question -> selected sentence, answer.

    The answer is the annotated answer span (several, as for list questions, joined with ", "),
    else the first NQ annotator's. Example: {"title_text": "Moon", "paragraph_text": "The Moon
    orbits Earth .", "question_text": "what does the moon orbit", "original_nq_answers":
    ["Earth"], "annotation": {"selected_sentence": "The Moon orbits Earth . ", "answer":
    ["Earth"]}} -> {"question": "Moon\nThe Moon orbits Earth .\n\nBased on the passage above,
    what does the moon orbit?", "rationale": "The relevant sentence in the passage is: The Moon
    orbits Earth .", "answer": "Earth"}.
    """
    annotation = ex["annotation"]
    answer = ", ".join(annotation["answer"]) or _first_or(ex["original_nq_answers"], "")
    if not answer.strip():
        raise ValueError(
            f"QED example {ex['example_id']} has no annotated answer and no NQ answer; "
            "is this TFDS qed (flan_jax.data.tfds_qed), which keeps single-sentence ones only?"
        )
    question = (
        f"{ex['title_text'].strip()}\n{_one_line(ex['paragraph_text'])}\n\n"
        f"Based on the passage above, {ex['question_text'].strip()}?"
    )
    rationale = "The relevant sentence in the passage is: " + _one_line(
        annotation["selected_sentence"]
    )
    return {"question": question, "rationale": rationale, "answer": _one_line(answer)}


# ---------------------------------------------------------------------------------- math


_CALCULATOR_NOTE = re.compile(r"<<[^>]*>>")


def gsm8k(ex: Example) -> Example:
    """GSM8K JSONL: the solution before `#### N` (calculator notes dropped) and N.

    Example: {"question": "Q?", "answer": "48/2 = <<48/2=24>>24 in May.\\n#### 24"} ->
    {"question": "Q?", "rationale": "48/2 = 24 in May.", "answer": "24"}.
    """
    solution, marker, number = ex["answer"].rpartition("####")
    if not marker or not number.strip():
        raise ValueError(
            f"GSM8K answer must end with '#### N', got {ex['answer'][-80:]!r}; "
            "is this the grade_school_math train/test JSONL?"
        )
    rationale = " ".join(_CALCULATOR_NOTE.sub("", solution).split())
    return {"question": ex["question"], "rationale": rationale, "answer": number.strip()}
