"""Tests of the embedded flan_tiny collection: generators, splits, answers, specs, templates."""

import collections
import functools
import pathlib
import re

import pytest
import yaml

from flan_jax.data import templates, tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPEC_DIR = ROOT / "tasks" / "flan_tiny"
TEMPLATE_DIR = ROOT / "tasks" / "templates"


@functools.cache
def _examples(task: str, split: str) -> tuple[dict[str, str], ...]:
    return tuple(tiny.generate(split, task=task))


@functools.cache
def _spec(task: str) -> dict:
    with open(SPEC_DIR / f"{task}.yaml") as f:
        return yaml.safe_load(f)


def _template_set(task: str, key: str = "templates") -> templates.TemplateSet:
    return templates.load_template_set(TEMPLATE_DIR / f"{_spec(task)[key]}.yaml")


def test_collection_has_16_tasks_in_8_clusters():
    clusters = collections.Counter(cluster for _, cluster, _ in tiny.TASKS.values())
    assert len(tiny.TASKS) >= 16
    assert len(clusters) >= 8
    assert clusters["math"] == 2 and clusters["string_edit"] == 3


def test_same_seed_same_examples_other_seed_differs():
    first = tiny.generate("train", task="paraphrase", seed=3, num_examples=50)
    assert tiny.generate("train", task="paraphrase", seed=3, num_examples=50) == first
    other = tiny.generate("train", task="paraphrase", seed=4, num_examples=50)
    assert other != first
    assert len({tuple(sorted(e.items())) for e in first}) == 50


def test_golden_first_examples_stay_stable():
    # A change here changes every flan_tiny run: bump deliberately, never by accident.
    assert tiny.generate("train", task="arithmetic", num_examples=2) == [
        {"expression": "97 - 9", "answer": "88"},
        {"expression": "93 - 89", "answer": "4"},
    ]


@pytest.mark.parametrize("task", sorted(tiny.TASKS))
def test_splits_disjoint_and_sized(task):
    splits = {s: {tuple(sorted(e.items())) for e in _examples(task, s)} for s in tiny.SPLITS}
    for split, keys in splits.items():
        assert len(keys) == tiny.default_num_examples(task, split) == len(_examples(task, split))
        assert _spec(task)["num_examples"][split] == len(keys)
        assert all(tiny.split_of(task, dict(k)) == split for k in keys)
    assert not splits["train"] & splits["validation"]
    assert not splits["train"] & splits["test"]
    assert not splits["validation"] & splits["test"]


def _check_answer(task: str, ex: dict[str, str]) -> None:
    answer = ex["answer"]
    if task == "arithmetic":
        a, op, b = ex["expression"].split()
        assert int(answer) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
    elif task == "word_problems":
        a, b, c = map(int, re.findall(r"\d+", ex["question"]))
        assert int(answer) == a + b - c >= 0
        for x, op, y, z in re.findall(r"(\d+) ([+-]) (\d+) = (\d+)", ex["rationale"]):
            assert int(z) == (int(x) + int(y) if op == "+" else int(x) - int(y))
        assert ex["rationale"].endswith(f"= {answer}.")
    elif task == "count_letter":
        assert int(answer) == sum(ch == ex["letter"] for ch in ex["word"])
    elif task == "count_words":
        assert int(answer) == len(ex["sentence"].split(" "))
    elif task == "reverse_word":
        assert answer == "".join(reversed(ex["word"]))
    elif task == "uppercase":
        assert answer == ex["text"].upper() and answer != ex["text"]
    elif task == "remove_letter":
        assert ex["letter"] in ex["word"] and ex["letter"] not in answer
        assert len(answer) == len(ex["word"]) - ex["word"].count(ex["letter"])
    elif task == "compare_numbers":
        assert int(answer) == max(int(ex["first"]), int(ex["second"]))
    elif task == "sort_numbers":
        assert answer == ", ".join(str(n) for n in sorted(int(n) for n in ex["numbers"].split(",")))
    elif task == "location_nli":
        name, verb, city = re.fullmatch(r"(\w+) (.+) (\w+)\.", ex["premise"]).groups()
        who, country = re.fullmatch(rf"(\w+) {verb} (\w+)\.", ex["hypothesis"]).groups()
        expected = "yes" if tiny.CITIES[city] == country else "no"
        assert answer == (expected if who == name else "it is not possible to tell")
    elif task == "height_nli":
        facts = re.findall(r"(\w+) is (\w+) than (\w+)", ex["premise"] + ex["hypothesis"])
        assert answer == _transitive_label(facts)


def _transitive_label(facts: list[tuple[str, str, str]]) -> str:
    """Entailment of the last fact from the others, by closing `x > y` under transitivity."""
    flip = {"shorter": "taller", "younger": "older"}
    edges = {(x, y) if rel not in flip else (y, x) for x, rel, y in facts[:-1]}
    while True:
        more = {(a, d) for a, b in edges for c, d in edges if b == c} - edges
        if not more:
            break
        edges |= more
    x, rel, y = facts[-1]
    claim = (x, y) if rel not in flip else (y, x)
    if claim in edges:
        return "yes"
    return "no" if claim[::-1] in edges else "it is not possible to tell"


@pytest.mark.parametrize("task", sorted(tiny.TASKS))
def test_answers_are_correct(task):
    for split in tiny.SPLITS:
        for ex in _examples(task, split):
            _check_answer(task, ex)


def test_reading_comp_answers_come_from_the_paragraph():
    for ex in _examples("pet_stories", "train"):
        kind = re.search(r"(dog|cat|fish|bird)", ex["question"]).group(1)
        owner, name = re.search(rf"(\w+) has a {kind} named (\w+)", ex["paragraph"]).groups()
        assert ex["answer"] == (owner if ex["question"].startswith("Who") else name)
    for ex in _examples("town_stories", "train"):
        person = re.search(r"(?:does |is )(\w+?)(?:'s| live)", ex["question"]).group(1)
        town, job = re.search(
            rf"{person} lives in (\w+) and works as a (\w+)", ex["paragraph"]
        ).groups()
        assert ex["answer"] == (town if ex["question"].startswith("Where") else job)


def test_paraphrase_and_topic_labels_follow_the_text():
    for ex in _examples("paraphrase", "train"):
        giver, n, thing, taker = re.fullmatch(
            r"(\w+) gave (\d+) (\w+) to (\w+)\.", ex["sentence1"]
        ).groups()
        same = ex["sentence2"] in (
            f"{taker} got {n} {thing} from {giver}.",
            f"{taker} was given {n} {thing} by {giver}.",
        )
        assert ex["answer"] == ("yes" if same else "no")
    for ex in _examples("topic", "train"):
        subject = next(
            s for s in tiny.TOPICS[ex["answer"]][0].split("|") if ex["text"].startswith(s)
        )
        assert subject


@pytest.mark.parametrize("task", sorted(t for t in tiny.TASKS if "options" in _spec(t)))
def test_classification_labels_balanced_and_in_options(task):
    counts = collections.Counter(ex["answer"] for ex in _examples(task, "train"))
    assert set(counts) == set(_spec(task)["options"])
    # Every class within 0.6x-1.4x of uniform: a model cannot win by guessing one label.
    uniform = len(_examples(task, "train")) / len(counts)
    assert all(0.6 * uniform <= c <= 1.4 * uniform for c in counts.values()), counts


@pytest.mark.parametrize("task", sorted(tiny.TASKS))
def test_spec_matches_generator(task):
    spec = _spec(task)
    assert spec["name"] == f"tiny_{task}"
    assert spec["cluster"] == tiny.TASKS[task][1]
    assert spec["source"] == {
        "type": "function",
        "fn": "flan_jax.data.tiny:generate",
        "args": {"task": task},
        "splits": ["train", "validation", "test"],
    }
    assert set(spec["fields"]) == set(_examples(task, "train")[0])
    assert ("zs_opt" in spec["formats"]) == ("options" in spec)
    assert ("cot" in spec["formats"]) == ("rationale" in spec["fields"])


@pytest.mark.parametrize("task", sorted(tiny.TASKS))
def test_every_template_renders_every_example(task):
    sets = [
        _template_set(task, key) for key in ("templates", "cot_templates") if key in _spec(task)
    ]
    templates.check_task_templates(task, _spec(task)["fields"], sets)
    assert all(len(s) >= 10 and any(t.inverted for t in s.templates) for s in sets)
    has_options = "options" in _spec(task)
    for t in (t for s in sets for t in s.templates):
        # Options go in every forward classification template, never in an inverted one.
        assert (templates.OPTIONS_FIELD in t.fields) == (has_options and not t.inverted)
    lengths = collections.defaultdict(list)
    options = "OPTIONS:\n- " + "\n- ".join(_spec(task).get("options", []))
    for ex in _examples(task, "validation"):
        values = {**ex, templates.OPTIONS_FIELD: options if has_options else ""}
        for t in (t for s in sets for t in s.templates):
            inputs, targets = (
                templates.render(t.inputs, values),
                templates.render(t.targets, values),
            )
            assert "{" not in inputs + targets and inputs and targets
            if not t.inverted and "rationale" not in t.fields:
                lengths["inputs"].append(len(inputs.encode()))
                lengths["targets"].append(len(targets.encode()))
    # Byte-level vocabulary: keep 95% of forward inputs < 200 bytes and targets < 40 bytes.
    for key, limit in (("inputs", 200), ("targets", 40)):
        values = sorted(lengths[key])
        assert values[int(0.95 * len(values))] < limit, (key, values[-5:])


def test_cot_templates_end_with_the_answer_sentence():
    cot_set = _template_set("word_problems", "cot_templates")
    forward = [t for t in cot_set.templates if not t.inverted]
    assert len(forward) >= 8
    assert all(t.targets == "{rationale} So the answer is {answer}." for t in forward)
    assert all("rationale" in t.fields for t in cot_set.templates)
    assert not any("rationale" in t.fields for t in _template_set("word_problems").templates)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown flan_tiny task 'nope'.*arithmetic"):
        tiny.generate("train", task="nope")
    with pytest.raises(ValueError, match=r"unknown split 'dev'.*'validation'"):
        tiny.generate("dev", task="topic")
    with pytest.raises(ValueError, match=r"produced only \d+ distinct test examples of the 300"):
        tiny.generate("test", task="topic", num_examples=300)


@pytest.fixture(scope="module")
def registered():
    from flan_jax.data import mixtures, tasks

    for path in sorted(SPEC_DIR.glob("*.yaml")):
        tasks.register_task_spec(path)
    return mixtures.register_mixture_spec(ROOT / "mixtures" / "flan_tiny.yaml")


def test_mixture_and_held_out_splits(registered):
    from flan_jax.data import mixtures

    clusters = sorted({cluster for _, cluster, _ in tiny.TASKS.values()})
    assert registered == ["flan_tiny"] + [f"flan_tiny_minus_{c}" for c in clusters]
    rates = mixtures.mixture_rates("flan_tiny")
    assert len(rates) == 6 * 4 + 10 * 2 + 4  # classification / generative / word problems
    assert rates["tiny_word_problems_cot"] == 2000.0  # 3000 train examples, capped
    assert rates["tiny_topic_zs_opt"] == 1500.0
    minus_math = mixtures.mixture_rates("flan_tiny_minus_math")
    assert set(rates) - set(minus_math) == {
        "tiny_word_problems_zs_noopt",
        "tiny_word_problems_fs_noopt",
        "tiny_word_problems_cot",
        "tiny_word_problems_fs_cot",
        "tiny_arithmetic_zs_noopt",
        "tiny_arithmetic_fs_noopt",
    }


def test_seqio_variant_renders_and_byte_tokenizes(registered):
    import seqio

    task = seqio.get_mixture_or_task("tiny_height_nli_zs_opt")
    ds = task.get_dataset({"inputs": 512, "targets": 32}, split="validation", shuffle=False)
    first = next(ds.as_numpy_iterator())
    ex = tiny.generate("validation", task="height_nli")[0]
    template = _template_set("height_nli").templates[0]  # round-robin: example 0 -> template 0
    options = "OPTIONS:\n- yes\n- it is not possible to tell\n- no"
    expected = templates.render(template.inputs, {**ex, "options_": options})
    assert first["inputs_pretokenized"].decode() == expected
    assert first["targets_pretokenized"].decode() == ex["answer"]
    # ByteVocabulary: id = byte + 3 (pad 0, eos 1, unk 2), then EOS.
    assert first["inputs"].tolist() == [b + 3 for b in expected.encode()] + [1]
    assert first["_cluster"] == b"nli" and first["_template_idx"] == 0
    assert [o.decode() for o in first["options"]] == list(tiny.NLI_OPTIONS)
