"""Deterministic generators of the embedded `flan_tiny` collection (no files, no download).

Each task is a seeded generator of short examples (dicts of template fields to strings) that
a 1-5M-parameter byte-level model can learn on CPU; `generate` is its `type: function` source.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from flan_jax.types import Example

NAMES = (
    "Ana Ben Cora Dan Eli Fay Gus Hana Ivo Jon Kim Leo Mia Ned Ola Pam Raj Sam Tia Uma "
    "Vic Wes Yan Zoe"
).split()
ITEMS = "apples pens books shells cards coins stickers cookies marbles stamps".split()
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
WORDS = (
    "cat dog tree house river apple chair light music paper stone green happy quick table "
    "garden window bread cloud storm silver orange candle pencil rocket forest island winter "
    "summer yellow basket button ladder mirror pillow planet rabbit spoon tiger violin wagon"
).split()
PRODUCTS = "phone lamp kettle backpack jacket blender mouse headset watch umbrella".split()
DISHES = "soup pasta pizza salad curry burger noodles cake pie stew".split()
GOOD = "great lovely excellent wonderful superb solid perfect fantastic".split()
BAD = "awful terrible poor useless broken cheap disappointing dreadful".split()
CITIES = {
    "Paris": "France",
    "Lyon": "France",
    "Rome": "Italy",
    "Milan": "Italy",
    "Madrid": "Spain",
    "Seville": "Spain",
    "Berlin": "Germany",
    "Munich": "Germany",
    "Tokyo": "Japan",
    "Osaka": "Japan",
    "Lima": "Peru",
    "Cusco": "Peru",
}
PETS = {"dog": "Rex Max Buddy Rocky".split(), "cat": "Tom Luna Misty Kiki".split()}
PETS |= {"fish": "Bubbles Finn Goldie".split(), "bird": "Kiwi Sunny Pip".split()}
JOBS = "baker nurse farmer pilot teacher painter doctor driver".split()
TOWNS = "Oakton Riverby Hillford Lakeside Stonebridge Elmwood".split()
TOPICS = {
    "sports": (
        "The striker|The coach|The goalkeeper|The team|The runner",
        "scored|won|trained for|lost|played",
        "the final match|a late goal|the league title|the relay race|the cup game",
    ),
    "science": (
        "The chemist|The lab|The biologist|The telescope|The researcher",
        "measured|discovered|observed|tested|studied",
        "a new molecule|distant stars|the cell samples|a strange fossil|the gene",
    ),
    "food": (
        "The chef|The bakery|The cook|Grandma|The cafe",
        "baked|served|cooked|tasted|seasoned",
        "fresh bread|spicy noodles|a lemon tart|the tomato soup|roast vegetables",
    ),
    "music": (
        "The band|The pianist|The singer|The choir|The drummer",
        "performed|recorded|rehearsed|sang|composed",
        "a new album|the old ballad|a loud song|the jazz tune|a sad melody",
    ),
    "weather": (
        "The forecast|The storm|The wind|Heavy rain|The cold front",
        "brought|predicted|caused|moved toward|covered",
        "thick fog|strong gusts|the coast|freezing nights|sunny skies",
    ),
}
NLI_OPTIONS = ("yes", "it is not possible to tell", "no")


def _pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))


def _word(rng: random.Random) -> str:
    return rng.choice(WORDS) if rng.random() < 0.3 else _pseudo_word(rng)


def _word_problems(rng: random.Random) -> Example:
    name, friend = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    a, b = rng.randint(2, 20), rng.randint(1, 15)
    c = rng.randint(1, a + b)
    total = a + b
    question = (
        f"{name} has {a} {item}. {name} gets {b} more and then gives {c} to {friend}. "
        f"How many {item} does {name} have now?"
    )
    rationale = f"{name} starts with {a}. {a} + {b} = {total}. {total} - {c} = {total - c}."
    return {"question": question, "rationale": rationale, "answer": str(total - c)}


def _arithmetic(rng: random.Random) -> Example:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    if rng.random() < 0.5:
        return {"expression": f"{a} + {b}", "answer": str(a + b)}
    a, b = max(a, b), min(a, b)
    return {"expression": f"{a} - {b}", "answer": str(a - b)}


def _reverse_word(rng: random.Random) -> Example:
    word = _word(rng)
    return {"word": word, "answer": word[::-1]}


def _uppercase(rng: random.Random) -> Example:
    text = " ".join(_word(rng) for _ in range(rng.randint(1, 3)))
    return {"text": text, "answer": text.upper()}


def _remove_letter(rng: random.Random) -> Example:
    word = _word(rng)
    letter = rng.choice(word)
    return {"word": word, "letter": letter, "answer": word.replace(letter, "")}


def _count_letter(rng: random.Random) -> Example:
    word = _word(rng)
    letter = rng.choice(word) if rng.random() < 0.85 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    return {"word": word, "letter": letter, "answer": str(word.count(letter))}


def _count_words(rng: random.Random) -> Example:
    sentence = " ".join(_word(rng) for _ in range(rng.randint(1, 9)))
    return {"sentence": sentence, "answer": str(len(sentence.split()))}


def _review(rng: random.Random, things: list[str], extras: tuple[str, str]) -> Example:
    positive = rng.random() < 0.5
    adj, adj2 = rng.sample(GOOD if positive else BAD, 2)
    opener = rng.choice(["The", "My", "This", "Our"])
    first = f"{opener} {rng.choice(things)} was {adj}."
    second = extras[0] if positive else extras[1]
    review = f"{first} {second.format(adj=adj2)}"
    return {"review": review, "answer": "positive" if positive else "negative"}


def _product_reviews(rng: random.Random) -> Example:
    extras = rng.choice(
        [
            ("I would buy it again.", "I want a refund."),
            ("Quality is {adj}.", "Quality is {adj}."),
            ("It works every day.", "It stopped working in a week."),
        ]
    )
    return _review(rng, PRODUCTS, extras)


def _restaurant_reviews(rng: random.Random) -> Example:
    extras = rng.choice(
        [
            ("We will come back.", "We will never return."),
            ("The service was {adj} too.", "The service was {adj} too."),
            ("The staff smiled a lot.", "The staff ignored us."),
        ]
    )
    return _review(rng, DISHES, extras)


def _height_nli(rng: random.Random) -> Example:
    a, b, c = rng.sample(NAMES, 3)
    word, opposite = rng.choice([("taller", "shorter"), ("older", "younger")])
    label = rng.choice(NLI_OPTIONS)
    if label == "it is not possible to tell":
        premise = f"{a} is {word} than {b}. {c} is {word} than {b}."
        return {"premise": premise, "hypothesis": f"{a} is {word} than {c}.", "answer": label}
    premise = f"{a} is {word} than {b}. {b} is {word} than {c}."
    rel = rng.choice([word, opposite])
    x, y = (a, c) if (label == "yes") == (rel == word) else (c, a)
    return {"premise": premise, "hypothesis": f"{x} is {rel} than {y}.", "answer": label}


def _location_nli(rng: random.Random) -> Example:
    a, b = rng.sample(NAMES, 2)
    city = rng.choice(sorted(CITIES))
    label = rng.choice(NLI_OPTIONS)
    country = CITIES[city]
    if label == "no":
        country = rng.choice(sorted(set(CITIES.values()) - {country}))
    person = b if label == "it is not possible to tell" else a
    verb = rng.choice(["lives in", "works in", "was born in", "is staying in"])
    premise = f"{a} {verb} {city}."
    return {"premise": premise, "hypothesis": f"{person} {verb} {country}.", "answer": label}


def _pet_stories(rng: random.Random) -> Example:
    owners = rng.sample(NAMES, 3)
    kinds = rng.sample(sorted(PETS), 3)
    pets = [rng.choice(PETS[k]) for k in kinds]
    paragraph = " ".join(f"{o} has a {k} named {p}." for o, k, p in zip(owners, kinds, pets))
    i = rng.randrange(3)
    if rng.random() < 0.5:
        return {
            "paragraph": paragraph,
            "question": f"What is the name of {owners[i]}'s {kinds[i]}?",
            "answer": pets[i],
        }
    return {"paragraph": paragraph, "question": f"Who has a {kinds[i]}?", "answer": owners[i]}


def _town_stories(rng: random.Random) -> Example:
    people, jobs, towns = rng.sample(NAMES, 2), rng.sample(JOBS, 2), rng.sample(TOWNS, 2)
    paragraph = " ".join(
        f"{p} lives in {t} and works as a {j}." for p, t, j in zip(people, towns, jobs)
    )
    i = rng.randrange(2)
    if rng.random() < 0.5:
        return {
            "paragraph": paragraph,
            "question": f"Where does {people[i]} live?",
            "answer": towns[i],
        }
    return {"paragraph": paragraph, "question": f"What is {people[i]}'s job?", "answer": jobs[i]}


def _paraphrase(rng: random.Random) -> Example:
    a, b, c = rng.sample(NAMES, 3)
    thing, other = rng.sample(ITEMS, 2)
    n = rng.randint(2, 9)
    s1 = f"{a} gave {n} {thing} to {b}."
    same = rng.random() < 0.5
    if same:
        s2 = rng.choice([f"{b} got {n} {thing} from {a}.", f"{b} was given {n} {thing} by {a}."])
    else:
        s2 = rng.choice(
            [f"{a} got {n} {thing} from {b}.", f"{c} was given {n} {thing} by {a}."]
            + [f"{b} got {n} {other} from {a}.", f"{b} got {n + 1} {thing} from {a}."]
        )
    return {"sentence1": s1, "sentence2": s2, "answer": "yes" if same else "no"}


def _topic(rng: random.Random) -> Example:
    topic = rng.choice(sorted(TOPICS))
    subject, verb, obj = (rng.choice(part.split("|")) for part in TOPICS[topic])
    when = rng.choice(
        ["", " yesterday", " last week", " on Sunday", " this morning", " again", " today"]
    )
    return {"text": f"{subject} {verb} {obj}{when}.", "answer": topic}


def _compare_numbers(rng: random.Random) -> Example:
    a, b = rng.sample(range(1000), 2)
    return {"first": str(a), "second": str(b), "answer": str(max(a, b))}


def _sort_numbers(rng: random.Random) -> Example:
    numbers = rng.sample(range(100), rng.randint(3, 5))
    return {
        "numbers": ", ".join(map(str, numbers)),
        "answer": ", ".join(map(str, sorted(numbers))),
    }


# task name -> (generator, cluster, train examples); validation and test hold EVAL_EXAMPLES.
TASKS: dict[str, tuple[Callable[[random.Random], Example], str, int]] = {
    "word_problems": (_word_problems, "math", 3000),
    "arithmetic": (_arithmetic, "math", 3000),
    "reverse_word": (_reverse_word, "string_edit", 2000),
    "uppercase": (_uppercase, "string_edit", 1500),
    "remove_letter": (_remove_letter, "string_edit", 2000),
    "count_letter": (_count_letter, "counting", 2000),
    "count_words": (_count_words, "counting", 2000),
    "product_reviews": (_product_reviews, "sentiment", 1500),
    "restaurant_reviews": (_restaurant_reviews, "sentiment", 1500),
    "height_nli": (_height_nli, "nli", 2500),
    "location_nli": (_location_nli, "nli", 1500),
    "pet_stories": (_pet_stories, "reading_comprehension", 2500),
    "town_stories": (_town_stories, "reading_comprehension", 2000),
    "paraphrase": (_paraphrase, "paraphrase", 2500),
    "topic": (_topic, "topic_classification", 1500),
    "compare_numbers": (_compare_numbers, "comparison", 2000),
    "sort_numbers": (_sort_numbers, "comparison", 2000),
}
EVAL_EXAMPLES = 150
SPLITS = ("train", "validation", "test")
_MAX_DRAWS_PER_EXAMPLE = 200


def split_of(task: str, example: Example) -> str:
    """The one split an example belongs to, from a hash of its content (seed independent).

    Hashing the content, not the draw, keeps train/validation/test disjoint for every seed:
    90% of the example space is train, 5% validation, 5% test.
    """
    key = task + "\x00" + "\x00".join(f"{k}={example[k]}" for k in sorted(example))
    bucket = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 20
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def default_num_examples(task: str, split: str) -> int:
    """Default number of examples of `task` in `split`."""
    _check(task, split)
    return TASKS[task][2] if split == "train" else EVAL_EXAMPLES


def generate(
    split: str, *, task: str, seed: int = 0, num_examples: int | None = None
) -> list[Example]:
    """Generates the examples of one flan_tiny task split, deterministically from `seed`.

    Example: `generate("train", task="arithmetic", num_examples=1)` gives one dict such as
    `{"expression": "97 - 9", "answer": "88"}`; the same arguments always give the same list.

    Args:
        split: "train", "validation" or "test" (disjoint: see `split_of`).
        task: a name in `TASKS`.
        seed: sampling seed; a different seed gives a different sample of the same split.
        num_examples: how many distinct examples; defaults to `default_num_examples(task, split)`.

    Returns:
        A list of distinct examples, each a dict of template field -> string.
    """
    _check(task, split)
    count = default_num_examples(task, split) if num_examples is None else num_examples
    if count < 0:
        raise ValueError(f"num_examples must be >= 0, got {count} for flan_tiny task {task!r}")
    maker = TASKS[task][0]
    rng = random.Random(f"flan_tiny:{task}:{split}:{seed}")
    seen: set[tuple[tuple[str, str], ...]] = set()
    examples: list[Example] = []
    for _ in range(_MAX_DRAWS_PER_EXAMPLE * max(count, 1)):
        if len(examples) == count:
            return examples
        example = maker(rng)
        key = tuple(sorted(example.items()))
        if key not in seen and split_of(task, example) == split:
            seen.add(key)
            examples.append(example)
    if len(examples) == count:
        return examples
    raise ValueError(
        f"flan_tiny task {task!r} produced only {len(examples)} distinct {split} examples of "
        f"the {count} asked for; ask for fewer (num_examples) or widen its generator"
    )


def _check(task: str, split: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown flan_tiny task {task!r}; known tasks: {sorted(TASKS)}")
    if split not in SPLITS:
        raise ValueError(
            f"unknown split {split!r} for flan_tiny task {task!r}; expected one of {SPLITS}"
        )
