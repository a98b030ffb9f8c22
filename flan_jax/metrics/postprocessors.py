"""Answer extraction from decoded text: first line/word, "the answer is X", "#### N", "(B)".

Every postprocessor has seqio's signature `fn(text, example=None, is_target=False) -> str`
and is applied to targets and predictions alike, so both sides are compared in one form.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence
from typing import Any

_ANSWER_IS = re.compile(r"the answer is\s*:?\s*(.*)", re.IGNORECASE | re.DOTALL)
_HASHES = re.compile(r"####\s*(.*)", re.DOTALL)
_NUMBER = re.compile(r"-?[$]?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_LETTER = re.compile(r"^\(?([A-Z])\)?(?:[.:)\s]|$)")


def first_line(text: str, example: Any = None, is_target: bool = False) -> str:
    """The first non-empty line, stripped: "Paris\\nQ: next" -> "Paris"."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def first_word(text: str, example: Any = None, is_target: bool = False) -> str:
    """The first whitespace-separated word without trailing punctuation: "Yes, it" -> "Yes"."""
    words = text.split()
    return words[0].rstrip(".,;:!?") if words else ""


def answer_after_marker(text: str) -> str | None:
    """What follows the first "the answer is" (or "####"), up to the line end, or None.

    The first, because a model may run on into a new exemplar with its own answer:
    "... So the answer is (B).\\n\\nQ: ..." -> "(B)"; "...\\n#### 1,080" -> "1,080".
    """
    for pattern in (_ANSWER_IS, _HASHES):
        match = pattern.search(text)
        if match:
            answer = first_line(match.group(1))
            return answer[:-1].strip() if answer.endswith(".") else answer
    return None


def cot_answer(text: str, example: Any = None, is_target: bool = False) -> str:
    """The answer of a chain of thought ("So the answer is X."), else the first line.

    A gold target without a rationale ("(B)", "valid") comes back unchanged.
    """
    answer = answer_after_marker(text)
    return answer if answer is not None else first_line(text)


def normalize_number(text: str) -> str:
    """The last number in `text`, canonical: "$1,080.00" -> "1080", "-3.50" -> "-3.5".

    Returns the stripped text unchanged when it holds no number.
    """
    matches = _NUMBER.findall(text)
    if not matches:
        return text.strip()
    number = matches[-1].replace(",", "").replace("$", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    if number in ("", "-", "-0"):
        number = "0"
    return number


def gsm8k_answer(text: str, example: Any = None, is_target: bool = False) -> str:
    """The final number of a GSM8K solution ("#### 72") or CoT ("The answer is 72.")."""
    marked = answer_after_marker(text)
    return normalize_number(marked if marked is not None else text)


def choice_letter(text: str, example: Any = None, is_target: bool = False) -> str:
    """A multiple-choice letter: "(B)", "B. 42", "Answer: B", "So the answer is (B)." -> "B"."""
    marked = answer_after_marker(text)
    candidate = (marked if marked is not None else first_line(text)).strip()
    candidate = re.sub(r"^answer\s*:\s*", "", candidate, flags=re.IGNORECASE)
    match = _LETTER.match(candidate)
    return match.group(1) if match else candidate


def bbh_answer(text: str, example: Any = None, is_target: bool = False) -> str:
    """BBH answers in the target's form: "(B)" for options, else the answer text.

    "So the answer is (B)." -> "(B)"; "(C) Eve finished last" -> "(C)";
    "So the answer is } ] >." -> "} ] >"; "valid" -> "valid".
    """
    answer = cot_answer(text)
    match = re.match(r"^\(([A-Z])\)", answer)
    return f"({match.group(1)})" if match else answer


def majority_vote(answers: Sequence[str]) -> str:
    """The most frequent answer (self-consistency); ties go to the earliest answer."""
    if not answers:
        raise ValueError("majority_vote needs at least one answer, got an empty sequence")
    counts = collections.Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


# ----------------------------------------------------------------------------- MGSM

# Each language's "The answer is", as MGSM's translated exemplars end their chains. Telugu's
# word also opens the answer cue "దశలవారీగా సమాధానం:", hence its colon guard.
MGSM_ANSWER_MARKERS = {
    "en": r"the answer is",
    "es": r"la respuesta es",
    "fr": r"la réponse est",
    "de": r"die antwort (?:ist|lautet)",
    "ru": r"ответ\s*[—:–-]",
    "zh": r"答案是",
    "ja": r"答えは",
    "th": r"คำตอบคือ",
    "sw": r"jibu ni",
    "bn": r"উত্তর হল",
    "te": r"సమాధానం(?!\s*[:：])",
}
_MGSM_MARKER = re.compile("|".join(MGSM_ANSWER_MARKERS.values()), re.IGNORECASE)
# Decimal digits of scripts a model may answer in: Devanagari, Bengali, Telugu, Thai,
# Arabic-Indic, extended Arabic-Indic and full-width.
_DIGIT_ZEROS = (0x0966, 0x09E6, 0x0C66, 0x0E50, 0x0660, 0x06F0, 0xFF10)
_TO_ASCII_DIGITS = str.maketrans({chr(z + i): str(i) for z in _DIGIT_ZEROS for i in range(10)})
# A separator followed by exactly three digits groups thousands ("2,125", "2.125", "2 125"
# with a no-break or thin space); another "." or "," is the decimal point ("3,5" -> 3.5).
# MGSM answers are whole numbers (or cents), so this reading holds in every language.
_GROUPED_NUMBER = re.compile(
    r"(?<![\d.,])(-?\d+)((?:[,.\u00a0\u202f\u2009']\d{3}(?!\d))*)(?:[.,](\d+))?"
)


def _canonical(match: re.Match) -> str:
    number = match.group(1) + re.sub(r"\D", "", match.group(2))
    fraction = (match.group(3) or "").rstrip("0")
    number = f"{number}.{fraction}" if fraction else number
    return "0" if number == "-0" else number


def mgsm_answer(text: str, example: Any = None, is_target: bool = False) -> str:
    """The answer of a chain of thought in any MGSM language, as a canonical number.

    The first number after the first answer marker ("The answer is", "答案是", "Jibu ni", ...),
    else the last number of the text; native digits read as ASCII, thousands separators
    dropped: "... উত্তর হল ১১।" -> "11"; "Die Antwort lautet 2.125." -> "2125";
    "答えは39個です。" -> "39". Returns the stripped text when it holds no number.
    """
    text = text.translate(_TO_ASCII_DIGITS)
    marker = _MGSM_MARKER.search(text)
    if marker:
        found = _GROUPED_NUMBER.search(text, marker.end())
        if found:
            return _canonical(found)
    numbers = list(_GROUPED_NUMBER.finditer(text))
    return _canonical(numbers[-1]) if numbers else text.strip()


POSTPROCESSORS = {
    "first_line": first_line,
    "first_word": first_word,
    "cot_answer": cot_answer,
    "gsm8k_answer": gsm8k_answer,
    "choice_letter": choice_letter,
    "bbh_answer": bbh_answer,
    "mgsm_answer": mgsm_answer,
}


def get_postprocessor(name: str | None):
    """Looks up a postprocessor by its spec name (`postprocessor: first_line`); None -> None."""
    if name is None:
        return None
    if name not in POSTPROCESSORS:
        raise ValueError(f"unknown postprocessor {name!r}; known: {sorted(POSTPROCESSORS)}")
    return POSTPROCESSORS[name]
