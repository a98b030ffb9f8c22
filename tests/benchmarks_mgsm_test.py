"""MGSM: answer extraction in every language from the real exemplars, prompts, oracle checks."""

import ast
import os

import pytest
import seqio
from conftest import DATA_DIR, needs_data

from flan_jax.evaluation import benchmarks_mgsm as mgsm
from flan_jax.metrics import accuracy, mgsm_answer

MGSM_DIR = os.path.join(DATA_DIR, "mgsm")
# Native decimal digits of the languages that have them (their zeros), to rewrite exemplars.
NATIVE_ZERO = {"bn": 0x09E6, "te": 0x0C66, "th": 0x0E50}


def _file_literal(name):
    """A top-level literal of exemplars.py, read independently of the module under test."""
    with open(os.path.join(MGSM_DIR, "exemplars.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    (node,) = [n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == name]
    return ast.literal_eval(node.value)


@pytest.fixture(scope="module")
def registered():
    return set(mgsm.register(seqio.ByteVocabulary()))


@needs_data
@pytest.mark.parametrize("lang", mgsm.MGSM_LANGUAGES)
def test_every_exemplar_chain_extracts_to_its_number(lang):
    numbers = [str(n) for n in _file_literal("EXEMPLAR_NUMBER_ANSWERS")]
    chains = [shot["a"] for shot in mgsm.load_exemplars(f"{MGSM_DIR}/exemplars.py")[lang]]
    assert [mgsm_answer(chain) for chain in chains] == numbers
    if lang in NATIVE_ZERO:  # the same chains written in the language's own digits
        native = str.maketrans({str(i): chr(NATIVE_ZERO[lang] + i) for i in range(10)})
        assert [mgsm_answer(chain.translate(native)) for chain in chains] == numbers
    # a model running on into the next exemplar: the first answer counts
    assert mgsm_answer(chains[0] + "\n\n" + chains[1]) == numbers[0]


@pytest.mark.parametrize(
    "text, want",
    [
        ("5 + 6 = 11. The answer is 2,125.", "2125"),
        ("Die Antwort lautet 2.125.", "2125"),
        ("La réponse est 2\u202f125.", "2125"),
        ("La respuesta es 3,50 dólares.", "3.5"),
        ("So 4 * 5 = 20. The answer is $1,000.50.", "1000.5"),
        ("答えは39個です。", "39"),
        ("答案是 １８。", "18"),
        ("Ответ: 7.", "7"),
        ("దశలవారీగా సమాధానం: 5+6=11. సమాధానం 11.", "11"),
        ("উত্তর হল ১,০০০।", "1000"),
        ("คำตอบคือ ๑๘", "18"),
        ("20 - 12 = 8", "8"),  # no marker: the last number
        ("18", "18"),  # a gold target
        ("no idea", "no idea"),
    ],
)
def test_answer_extraction_table(text, want):
    assert mgsm_answer(text) == want


def test_loader_error_names_file_line_and_format(tmp_path):
    path = tmp_path / "mgsm_xx.tsv"
    path.write_text("How many?\t12\nAnd now?\ttwelve\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"mgsm_xx\.tsv:2: expected 'question<TAB>number'"):
        mgsm.load_mgsm_tsv(str(path))


@needs_data
def test_prompts_native_english_and_zero_shot(registered):
    assert len(registered) == 4 * (11 + 1)
    zh = mgsm.mgsm_examples("test", lang="zh", shots=8)[0]
    assert zh["inputs"].startswith("问题：罗杰有 5 个网球。")
    assert zh["inputs"].count("答案是") == 8 and zh["inputs"].endswith("\n逐步解答：")
    assert zh["targets"] == "18"
    en_shots = mgsm.mgsm_examples("test", lang="zh", shots=8, english=True)[0]
    assert en_shots["inputs"].count("The answer is") == 8
    assert en_shots["inputs"].endswith(
        "珍妮特的鸭子每天下 16 颗蛋。"
        + zh["inputs"]
        .split("鸭子每天下 16 颗蛋。")[-1]
        .replace("逐步解答：", "Step-by-Step Answer:")
    )
    fr = mgsm.mgsm_examples("test", lang="fr", shots=0)[0]
    assert fr["inputs"].startswith("Question : ") and fr["inputs"].endswith(
        "\nRéponse étape par étape :"
    )
    ds = seqio.get_mixture_or_task("mgsm_bn_8shot_cot").get_dataset(
        {"inputs": 8192, "targets": 8}, split="test", shuffle=False
    )
    ex = next(ds.as_numpy_iterator())
    want = mgsm.mgsm_examples("test", lang="bn", shots=8)[0]
    assert ex["inputs_pretokenized"].decode() == want["inputs"]
    assert ex["_cluster"].decode() == "mgsm" and "options" not in ex


@needs_data
def test_oracle_gold_scores_100_and_a_constant_scores_chance(registered):
    with open(f"{MGSM_DIR}/mgsm_en.tsv", encoding="utf-8") as f:
        golds = [line.rstrip("\n").split("\t")[1].replace(",", "") for line in f]
    chance = 100.0 * golds.count("5") / len(golds)
    assert len(golds) == 250 and chance == pytest.approx(3.2)
    markers = {lang: shots["1"]["a"] for lang, shots in _file_literal("MGSM_EXEMPLARS").items()}
    for name in sorted(n for n in registered if n.split("_")[1] in mgsm.MGSM_LANGUAGES):
        task = seqio.get_mixture_or_task(name)
        lang, variant = name[len("mgsm_") :].split("_", 1)
        rows = mgsm.mgsm_examples(
            "test", lang=lang, shots=int(variant[0]), english=variant.endswith("_en")
        )
        targets = [task.postprocess_fn(r["targets"], is_target=True) for r in rows]
        assert accuracy(targets, targets)["accuracy"] == 100.0, name
        # the language's own first exemplar chain, its answer 11 replaced by 5
        constant = task.postprocess_fn(markers[lang].replace("11", "5"))
        got = accuracy(targets, [constant] * len(targets))["accuracy"]
        assert got == pytest.approx(chance), name
    summary = mgsm.mgsm_summary(
        {mgsm.task_name(lang): {"accuracy": 10.0 * i} for i, lang in enumerate(mgsm.MGSM_LANGUAGES)}
    )
    assert summary["en"] == 0.0 and summary["zh"] == 100.0 and summary["average"] == 50.0
