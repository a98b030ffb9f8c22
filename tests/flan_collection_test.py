"""The FLAN 2021 collection (tasks/flan2021): specs, template sets, mock-TFDS rendering, mixtures.

TFDS data cannot be downloaded here: every task runs on `tfds.testing.mock_data`, whose random
integers are first mapped into each dataset's real label domain (see `_sanitize`).
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import random

import pytest
import seqio
import tensorflow_datasets as tfds
from conftest import needs_data

from flan_jax.data import collection, formats, sources, task_examples, tasks
from flan_jax.metrics import postprocessors, scores
from flan_jax.specs import spec_dir

TASK_DIR = spec_dir("tasks") / "flan2021"
MIXTURE_DIR = spec_dir("mixtures")
SPEC_FILES = sorted(TASK_DIR.glob("*.yaml"))
NUM_MOCK = 10  # round-robin over 10 templates: every template renders at least once per format
CLUSTERS = {
    "nli", "reading_comprehension", "closed_book_qa", "commonsense", "sentiment", "paraphrase",
    "coreference", "struct_to_text", "translation", "summarization",
    "read_comp_with_commonsense", "misc",
}  # fmt: skip
# Label keys whose mock values must index a list of the example (plain int32 in TFDS).
_INDEX_LISTS = {
    "hellaswag": ("label", lambda ex: ex["endings"]),
    "story_cloze": ("label", lambda ex: ex["endings"]),
    "ai2_arc": ("answerKey", lambda ex: ex["choices"]["text"]),
    "definite_pronoun_resolution": ("label", lambda ex: ex["candidates"]),
    "wsc273": ("label", lambda ex: [0, 1]),
}


def _specs() -> list[tasks.TaskSpec]:
    return [tasks.load_task_spec(p) for p in SPEC_FILES]


def _sanitize(spec: tasks.TaskSpec, ex: dict) -> dict:
    """Maps a random mock label into the dataset's label domain (mock ints are arbitrary)."""
    base = spec.source.name.split("/")[0].split(":")[0]
    if base in _INDEX_LISTS:
        key, items = _INDEX_LISTS[base]
        ex[key] = ex[key] % max(1, len(items(ex)))
    if base == "super_glue" and "entities" in ex:  # ReCoRD: the answer is one of the entities
        ex["answers"] = ex["entities"][:1]
    answer_key = spec.fields.get("answer")
    if spec.label_map and answer_key in ex and not spec.preprocessor:
        keys = sorted(spec.label_map, key=int)
        ex[answer_key] = int(keys[int(ex[answer_key]) % len(keys)])
    return ex


@pytest.fixture(scope="module")
def mocked(request):
    """Mock TFDS for the module, with labels mapped into range; registers every spec."""
    by_source = {}
    original = sources.iter_examples

    def iter_examples(spec, split):
        task_spec = by_source.get(id(spec))
        for ex in original(spec, split):
            yield _sanitize(task_spec, ex) if task_spec else ex

    mp = pytest.MonkeyPatch()
    mp.setattr(sources, "iter_examples", iter_examples)
    with tfds.testing.mock_data(num_examples=NUM_MOCK):
        specs = {}
        for spec in _specs():
            tasks.unregister_task_spec(spec.name)
            tasks.register_task_spec(spec)
            registered = tasks.get_task_spec(spec.name)
            by_source[id(registered.source)] = registered
            specs[spec.name] = registered
        yield specs
    mp.undo()
    for name in specs:
        tasks.unregister_task_spec(name)


# ------------------------------------------------------------------------------------ specs


def test_collection_covers_flan2021_clusters_and_datasets():
    specs = _specs()
    assert len(specs) == 67
    by_cluster = collections.Counter(s.cluster for s in specs)
    assert set(by_cluster) == CLUSTERS
    assert by_cluster["nli"] == 10  # ANLI r1-r3, RTE, CB, SNLI, MNLI m/mm, QNLI, WNLI
    assert by_cluster["translation"] == 8  # 7 WMT pairs + ParaCrawl en-es
    assert by_cluster["summarization"] == 11  # + opinion abstracts x2, WikiLingua


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_spec_is_complete_and_pinned(path: pathlib.Path):
    spec = tasks.load_task_spec(path)
    assert spec.name == path.stem
    assert spec.source.type == "tfds"
    name, _, version = spec.source.name.partition(":")
    assert version.count(".") == 2, f"{path.name}: TFDS version not pinned in {spec.source.name!r}"
    builder = tfds.builder(spec.source.name)  # the pinned version exists in this tfds
    assert str(builder.version) == version
    assert spec.vocabulary == "t5"
    assert set(spec.num_examples) == set(spec.source.splits)
    assert "train" in spec.num_examples and all(n > 0 for n in spec.num_examples.values())
    assert spec.metrics and all(m in scores.METRICS for m in spec.metrics)
    assert spec.postprocessor is None or spec.postprocessor in postprocessors.POSTPROCESSORS
    assert len(spec.templates) >= 10
    assert any(t.inverted for t in spec.templates.templates)
    if spec.is_classification:
        assert set(spec.formats) == {"zs_opt", "zs_noopt", "fs_opt", "fs_noopt"}
        assert spec.options or spec.options_field
        if spec.label_map:
            assert set(spec.label_map.values()) == set(spec.options)
    else:
        assert set(spec.formats) == {"zs_noopt", "fs_noopt"}


def test_template_sets_are_own_and_shared():
    sets = collections.defaultdict(list)
    for spec in _specs():
        sets[spec.templates.name].append(spec.name)
    assert sorted(sets["nli"]) == [
        "anli_r1", "anli_r2", "anli_r3", "cb", "mnli_matched", "mnli_mismatched", "rte",
        "snli", "wnli",
    ]  # fmt: skip
    # Never the files another engineer owns (GLUE TSV sets, tiny, CoT, GSM8K).
    owned_elsewhere = {"rte", "sst2", "mrpc", "cola", "qnli"}
    assert not set(sets) & owned_elsewhere
    assert not [s for s in sets if s.startswith(("tiny_", "cot_", "gsm8k"))]


# -------------------------------------------------------------------------- preprocessors


def test_preprocessors_exact_outputs():
    arc = collection.arc(
        {"question": "Which gas do plants absorb?", "answerKey": 1,
         "choices": {"text": ["oxygen", "carbon dioxide"], "label": [0, 1]}}
    )  # fmt: skip
    assert arc == {
        "question": "Which gas do plants absorb?",
        "options": ["oxygen", "carbon dioxide"],
        "answer": "carbon dioxide",
    }
    v2 = collection.squad({"context": "c", "question": "q?", "answers": {"text": []}})
    assert v2 == {"context": "c", "question": "q?", "answer": "unanswerable"}
    coqa = collection.coqa(
        {"story": "Ann ran.", "questions": ["Who ran?", "Did she?", "extra"],
         "answers": {"input_text": ["Ann", "yes"]}}
    )  # fmt: skip
    assert coqa == {
        "story": "Ann ran.",
        "questions": "1. Who ran?\n2. Did she?",
        "answers": "1. Ann\n2. yes",
    }
    assert collection.stsb({"sentence1": "a", "sentence2": "b", "label": 3.6})["answer"] == "4"
    assert collection.fix_punct({"en": "Hello, World! It's me."}) == {
        "text": "hello world its me",
        "target": "Hello, World! It's me.",
    }
    assert collection.translate_de_en({"de": "Hallo", "en": "Hello"}) == {
        "source_language": "German",
        "target_language": "English",
        "source": "Hallo",
        "target": "Hello",
    }
    record = collection.record(
        {"passage": "Obama spoke.\n@highlight\nObama", "query": "@placeholder said hi",
         "entities": ["Obama", "Biden"], "answers": ["Obama"]}
    )  # fmt: skip
    assert record == {
        "passage": "Obama spoke.",
        "query": "___ said hi",
        "options": ["Obama", "Biden"],
        "answer": "Obama",
    }


def test_preprocessor_rejects_out_of_range_label():
    with pytest.raises(ValueError, match=r"label 2 is out of range for 2 options"):
        collection.piqa({"goal": "g", "sol1": "a", "sol2": "b", "label": 2})


# ------------------------------------------------------------------- mock-data rendering


def _render_all(spec: tasks.TaskSpec, fmt: str, split: str) -> list[formats.Rendered]:
    """Renders a split in Python, exactly as the task's seqio source does (no tf.data)."""
    settings = spec.render_settings(fmt)
    pool = tasks.get_pool(spec) if fmt in formats.FEW_SHOT_FORMATS else ()
    return [
        formats.render_example(ex, i, split, settings, pool=pool)
        for i, ex in enumerate(tasks.get_examples(spec, split))
    ]


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_every_format_and_template_renders_on_mock_data(mocked, path: pathlib.Path):
    spec = mocked[path.stem]
    for fmt in spec.formats:
        rows = _render_all(spec, fmt, "train")
        assert len(rows) == NUM_MOCK, (spec.name, fmt)
        assert sorted(r.template_idx for r in rows) == list(range(NUM_MOCK)), (spec.name, fmt)
        for row in rows:
            assert row.inputs and row.targets and "{" not in row.inputs
            template = spec.templates.templates[row.template_idx]
            assert row.template_type == fmt + ("_inverted" if template.inverted else "")
            if fmt.endswith("_opt") and spec.is_classification and not template.inverted:
                assert "OPTIONS:" in row.inputs
                assert row.targets in row.options
            if fmt.endswith("_noopt"):
                assert "OPTIONS:" not in row.inputs
            if fmt.startswith("fs_"):
                assert len(row.shots) == spec.few_shot.num_exemplars
    for split in spec.source.splits:
        if split != "train":
            assert len(tasks.get_examples(spec, split)) == NUM_MOCK


@needs_data  # the T5 SentencePiece model
@pytest.mark.parametrize("name", ["anli_r1", "squad_v1", "wmt16_translate_de_en", "record"])
def test_seqio_tokenized_dataset(mocked, name):
    """One task per shape through seqio itself: tokenized with the T5 vocabulary, EOS added."""
    spec = mocked[name]
    variant = f"{name}_{spec.formats[0]}"
    ds = seqio.get_mixture_or_task(variant).get_dataset(
        {"inputs": 256, "targets": 64}, split="train", shuffle=False, use_cached=False
    )
    ex = next(ds.as_numpy_iterator())
    assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1  # EOS
    assert len(ex["inputs"]) <= 256


# -------------------------------------------------------------------------------- mixtures


@pytest.fixture(scope="module")
def registered_mixtures():
    """Registers the collection's tasks (and the T0 / CoT / NIv2 / dialog tasks flan2022 uses)
    and mixtures."""
    from flan_jax import registry

    root = spec_dir("tasks")
    task_files = SPEC_FILES + sorted((root / "t0").glob("*.yaml"))
    task_files += sorted((root / "cot").glob("*.yaml"))
    task_files += sorted((root / "niv2").glob("*.yaml")) + sorted((root / "dialog").glob("*.yaml"))
    mixture_files = [
        MIXTURE_DIR / f"{n}.yaml"
        for n in (
            "flan2021",
            "flan2021_30k",
            "flan2022_flan",
            "flan2022_t0",
            "flan2022_niv2",
            "flan2022_cot",
            "flan2022_dialog",
            "flan2022",
        )
    ]
    _, names = registry.register_specs(task_files, mixture_files)
    return names


def _seqio_rates(name: str) -> dict[str, float]:
    mixture = seqio.get_mixture_or_task(name)
    return {t.name: float(mixture.get_rate(t)) for t in mixture.tasks}


@pytest.mark.parametrize("name,cap", [("flan2021", 3000), ("flan2021_30k", 30000)])
def test_flan2021_rates_are_capped_example_counts(registered_mixtures, name, cap):
    rates = _seqio_rates(name)
    assert len(rates) == 67
    for variant, rate in rates.items():
        spec = tasks.get_task_spec(variant)
        assert rate == min(spec.num_examples["train"], cap), variant
    assert rates["cb_zs_opt"] == 250.0 and rates["snli_zs_opt"] == float(cap)
    assert rates["wsc273_zs_opt"] == 273.0 and rates["drop_zs_noopt"] == float(cap)
    shares = {t: r / sum(rates.values()) for t, r in rates.items()}
    assert sum(shares.values()) == pytest.approx(1.0)


def test_flan2021_held_out_cluster_mixtures(registered_mixtures):
    held_out = sorted(n for n in registered_mixtures if n.startswith("flan2021_minus_"))
    assert held_out == sorted(f"flan2021_minus_{c}" for c in CLUSTERS)
    everything = set(_seqio_rates("flan2021"))
    for name in held_out:
        cluster = name.removeprefix("flan2021_minus_")
        members = set(_seqio_rates(name))
        dropped = {t for t in everything if tasks.get_task_spec(t).cluster == cluster}
        assert dropped and members == everything - dropped, name


def test_flan2022_sub_mixture_shares_match_weights(registered_mixtures):
    rates = _seqio_rates("flan2022")
    groups = {
        "flan": set(_seqio_rates("flan2022_flan")),
        "t0": set(_seqio_rates("flan2022_t0")),
        "niv2": set(_seqio_rates("flan2022_niv2")),
        "cot": set(_seqio_rates("flan2022_cot")),
        "dialog": set(_seqio_rates("flan2022_dialog")),
    }
    expected = {"flan": 0.4, "t0": 0.32, "niv2": 0.2, "cot": 0.05, "dialog": 0.03}
    assert set(rates) == set().union(*groups.values())
    # Each member mixes zero-/few-shot with/without options (as in the Flan 2022 recipe).
    assert {
        f
        for t in groups["flan"]
        for f in ["zs_opt", "zs_noopt", "fs_opt", "fs_noopt"]
        if t.endswith(f)
    } == {"zs_opt", "zs_noopt", "fs_opt", "fs_noopt"}
    names = sorted(rates)
    probs = [rates[n] / sum(rates.values()) for n in names]
    drawn = collections.Counter(random.Random(0).choices(names, weights=probs, k=20_000))
    group_of = {t: g for g, members in groups.items() for t in members}
    counts = collections.Counter()
    for task, n in drawn.items():
        counts[group_of[task]] += n
    for group, share in expected.items():
        assert abs(counts[group] / 20_000 - share) < 0.02, (group, counts[group] / 20_000, share)


# ------------------------------------------- the four FLAN 2021 datasets added last, exactly

# One fixed raw example per TFDS config (its real feature names), served by mock_data.
_FIXED = {
    "rotten_tomatoes": {
        "_movie_name": "Night Train",
        "_movie_id": "m/night_train",
        "_critics": {"key": ["c1", "c2"], "value": ["Tense and sharp. ", "A fine thriller."]},
        "_critic_consensus": "A taut thriller\nwith style.",
    },
    "idebate": {
        "_debate_name": "This House would ban homework",
        "_claim_id": "1_0",
        "_argument_sentences": {"key": ["a", "b"], "value": ["Kids tire .", "Play helps ."]},
        "_claim": "homework harms learning",
    },
    "wiki_lingua_english_en": {
        "gem_id": "g0", "gem_parent_id": "g0", "references": ["Boil water. Add tea."],
        "source": "Fill the kettle and boil it. Put a tea bag in a cup.",
        "source_aligned": {"en": "x"}, "target": "Boil water.\nAdd tea.",
        "target_aligned": {"en": "y"},
    },
    "enes": {"en": "The cat sleeps.", "es": "El gato duerme."},
    "esnli": {
        "premise": "A dog runs in a park.", "hypothesis": "An animal is moving.", "label": 0,
        "explanation_1": "A dog is an animal\nand running is moving.",
        "explanation_2": "", "explanation_3": "",
    },
    "qed": {  # as our builder (flan_jax/data/tfds_qed.py) stores it
        "example_id": -7, "title_text": "Moon", "question_text": "what does the moon orbit",
        "paragraph_text": "The Moon is round .\nThe Moon orbits Earth .",
        "original_nq_answers": ["the Earth"],
        "annotation": {"selected_sentence": "The Moon orbits\nEarth . ", "answer": ["Earth"]},
    },
}  # fmt: skip
_EXPECTED = {  # (template 0, the last template: inverted), both zs_noopt
    "opinion_abstracts_rotten_tomatoes": (
        ('Critics on "Night Train":\nTense and sharp. A fine thriller.\n\n'
         "What is the critics' overall verdict?", "A taut thriller with style."),
        ("Consensus: A taut thriller with style.\n\nWhich movie could this verdict be about? "
         "Here are the reviews it summarises: Tense and sharp. A fine thriller.", "Night Train"),
    ),
    "opinion_abstracts_idebate": (
        ("Debate: This House would ban homework\nArgument: Kids tire . Play helps .\n\n"
         "State the claim this argument makes.", "homework harms learning"),
        ("Claim: homework harms learning\n\nDevelop this claim into a paragraph with evidence.",
         "Kids tire . Play helps ."),
    ),
    "wiki_lingua_english_en": (
        ("Fill the kettle and boil it. Put a tea bag in a cup.\n\nSummarise the instructions "
         "above.", "Boil water. Add tea."),
        ("Summary of a guide: Boil water. Add tea.\n\nExpand it into full instructions.",
         "Fill the kettle and boil it. Put a tea bag in a cup."),
    ),
    "para_crawl_enes": (
        ("Translate to Spanish:\n\nThe cat sleeps.", "El gato duerme."),
        ("Spanish: El gato duerme.\nEnglish:", "The cat sleeps."),  # both directions
    ),
}  # fmt: skip


def _fixed_as_dataset(self, split, **kwargs):
    import tensorflow as tf

    ex = _FIXED[self.builder_config.name if self.builder_config else self.name]
    return tf.data.Dataset.from_generator(
        lambda: iter([ex]),
        output_types=self.info.features.dtype,
        output_shapes=self.info.features.shape,
    )


@pytest.mark.parametrize("name", sorted(_EXPECTED))
def test_added_datasets_render_a_fixed_tfds_example_exactly(name):
    spec = tasks.load_task_spec(TASK_DIR / f"{name}.yaml")
    with tfds.testing.mock_data(as_dataset_fn=_fixed_as_dataset):
        examples = list(task_examples.iter_prepared(spec, "train"))
    assert len(examples) == 1
    (ex,) = examples
    settings = spec.render_settings("zs_noopt")
    last = len(spec.templates) - 1
    got = []
    for idx in (0, last):
        one = dataclasses.replace(settings, template_index=idx)
        row = formats.render_example(ex, 0, "train", one)
        got.append((row.inputs, row.targets))
    assert tuple(got) == _EXPECTED[name]
    assert spec.templates.templates[last].inverted


def _cot_row_of_fixed_example(task: str):
    """The `cot` rendering of tasks/cot/<task>.yaml's one example served by mock_data."""
    spec = tasks.load_task_spec(spec_dir("tasks") / "cot" / f"{task}.yaml")
    with tfds.testing.mock_data(as_dataset_fn=_fixed_as_dataset):
        (ex,) = list(task_examples.iter_prepared(spec, "train"))
    return formats.render_example(ex, 0, "train", spec.render_settings("cot"))


def test_cot_esnli_renders_a_fixed_tfds_example_exactly():
    """e-SNLI through TFDS (mock_data serving one fixed example): rationale, then the answer."""
    row = _cot_row_of_fixed_example("cot_esnli")
    assert row.inputs == (
        'Premise: "A dog runs in a park."\nHypothesis: "An animal is moving."\nDoes the premise '
        "entail the hypothesis? Answer yes, no, or it is not possible to tell.\n"
        "Let's think step by step."
    )
    assert row.targets == "A dog is an animal and running is moving. So the answer is yes."
    assert postprocessors.POSTPROCESSORS["cot_answer"](row.targets) == "yes"
    assert collection.esnli(dict(_FIXED["esnli"], label=1))["answer"] == (
        "it is not possible to tell"
    )
    with pytest.raises(ValueError, match=r"e-SNLI label 3 is not 0"):
        collection.esnli(dict(_FIXED["esnli"], label=3))


def test_cot_qed_renders_a_fixed_tfds_example_exactly():
    """QED through our TFDS builder (mock_data serving one fixed example)."""
    row = _cot_row_of_fixed_example("cot_qed")
    assert row.inputs == (
        "Moon\nThe Moon is round . The Moon orbits Earth .\n\n"
        "Based on the passage above, what does the moon orbit?\nLet's think step by step."
    )
    assert row.targets == (
        "The relevant sentence in the passage is: The Moon orbits Earth . So the answer is Earth."
    )
    assert postprocessors.POSTPROCESSORS["cot_answer"](row.targets) == "Earth"


def test_qed_answer_joins_spans_falls_back_to_nq_and_else_names_the_example():
    fixed = _FIXED["qed"]
    both = dict(fixed, annotation=dict(fixed["annotation"], answer=["Lynne", "Zoe"]))
    assert collection.qed(both)["answer"] == "Lynne, Zoe"
    unannotated = dict(fixed, annotation=dict(fixed["annotation"], answer=[]))
    assert collection.qed(unannotated)["answer"] == "the Earth"
    with pytest.raises(ValueError, match=r"QED example -7 has no annotated answer and no NQ"):
        collection.qed(dict(unannotated, original_nq_answers=[]))
