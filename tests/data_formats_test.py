"""Formats: options blocks (fixed and seeded-random), template assignment, few-shot, CoT."""

import pytest

from flan_jax.data import formats
from flan_jax.data.formats import FewShotConfig, RenderSettings, render_example
from flan_jax.data.templates import Template

NLI = (
    Template(inputs='{premise}\nIs "{hypothesis}" true?\n{options_}', targets="{answer}"),
    Template(inputs="Premise: {premise}\nHypothesis: {hypothesis}", targets="Answer: {answer}"),
    Template(
        inputs="Write a claim that is '{answer}' given: {premise}",
        targets="{hypothesis}",
        inverted=True,
    ),
)
EX = {"premise": "Ann is 9.", "hypothesis": "Ann is a child.", "answer": "yes"}
OPTIONS = ("yes", "no", "maybe")


def settings(**kw) -> RenderSettings:
    return RenderSettings(
        **{"task": "nli", "format": "zs_opt", "templates": NLI, "options": OPTIONS, **kw}
    )


def test_fixed_options_block_and_rank_targets():
    out = render_example(EX, 0, "validation", settings())
    assert out.inputs == 'Ann is 9.\nIs "Ann is a child." true?\nOPTIONS:\n- yes\n- no\n- maybe'
    assert out.targets == "yes"
    assert (out.template_idx, out.template_type) == (0, "zs_opt")
    assert out.options == ["yes", "no", "maybe"]
    # A template without {options_} gets the block appended after a blank line.
    out = render_example(EX, 1, "validation", settings())
    assert out.inputs == (
        "Premise: Ann is 9.\nHypothesis: Ann is a child.\n\nOPTIONS:\n- yes\n- no\n- maybe"
    )
    assert out.options == ["Answer: yes", "Answer: no", "Answer: maybe"]


def test_no_options_strips_block_and_inverted_has_no_options():
    out = render_example(EX, 0, "validation", settings(format="zs_noopt"))
    assert out.inputs == 'Ann is 9.\nIs "Ann is a child." true?'
    assert out.options == []
    out = render_example(EX, 2, "validation", settings())
    assert (out.inputs, out.targets) == (
        "Write a claim that is 'yes' given: Ann is 9.",
        "Ann is a child.",
    )
    assert (out.template_type, out.options) == ("zs_opt_inverted", [])


def test_random_options_are_seeded_and_markers_become_targets():
    s = settings(options_style="random", seed=3)
    got = [render_example(EX, i, "validation", s) for i in (0, 1, 3)]
    assert got[0].inputs == (
        'Ann is 9.\nIs "Ann is a child." true?\nAvailable choices:\nA. yes\nB. no\nC. maybe'
    )
    assert (got[0].targets, got[0].options) == ("A.", ["A.", "B.", "C."])
    assert got[1].inputs.endswith("\n\nSelect from the following.\n(a) yes\n(b) no\n(c) maybe")
    assert got[1].targets == "Answer: (a)"
    assert got[2].inputs.endswith("\nOPTIONS:\n(A) yes\n(B) no\n(C) maybe")
    assert got[2].targets == "(A)"
    # Same seed, same strings; the answer "no" takes the second marker.
    again = render_example(dict(EX, answer="no"), 3, "validation", s)
    assert again.inputs == got[2].inputs and again.targets == "(B)"
    # Over many examples, several headers and markers appear, all from the tables.
    many = [render_example(EX, i, "validation", s).inputs for i in range(0, 300, 3)]
    headers = {x.split("\n")[2] for x in many}
    assert len(headers) >= 5 and headers <= set(formats.OPTION_HEADERS)


def test_answer_outside_options_is_an_error():
    s = settings(options_style="random", seed=3)
    with pytest.raises(ValueError, match=r"answer 'perhaps' is not one of the options"):
        render_example(dict(EX, answer="perhaps"), 0, "validation", s)


def test_template_assignment():
    idx = lambda s: [render_example(EX, i, "train", s).template_idx for i in range(7)]
    assert idx(settings()) == [0, 1, 2, 0, 1, 2, 0]
    assert idx(settings(template_index=1)) == [1] * 7
    rand = idx(settings(assignment="random", seed=5))
    assert rand == idx(settings(assignment="random", seed=5))
    assert rand != idx(settings(assignment="random", seed=6)) and set(rand) == {0, 1, 2}


POOL = [{"q": f"{i}+{i}?", "a": str(2 * i)} for i in range(4)]
QA = (Template(inputs="{q}", targets="{a}"),)


def test_few_shot_assembly_prefixes_and_never_itself():
    cfg = FewShotConfig(
        num_exemplars=2,
        inputs_prefix="Q: ",
        targets_prefix="A: ",
        exemplar_separator="\n---\n",
        input_target_separator="\n",
    )
    s = RenderSettings(task="add", format="fs_noopt", templates=QA, few_shot=cfg, seed=0)
    out = render_example(POOL[1], 1, "train", s, pool=POOL)
    shots = [x for x in out.shots]
    assert out.query == "Q: 1+1?\nA:"
    assert out.inputs == "\n---\n".join(shots + ["Q: 1+1?\nA:"])
    assert len(shots) == 2 and "Q: 1+1?\nA: 2" not in shots
    assert all(x in [f"Q: {i}+{i}?\nA: {2 * i}" for i in (0, 2, 3)] for x in shots)
    # Exact and reproducible: the draw depends only on (seed, task, split, index).
    assert out == render_example(POOL[1], 1, "train", s, pool=POOL)
    for i in range(4):  # a two-example pool: the exemplar is always the other example
        two = render_example(POOL[i % 2], i, "validation", s, pool=POOL[:2])
        assert two.shots == [f"Q: {(i + 1) % 2}+{(i + 1) % 2}?\nA: {2 * ((i + 1) % 2)}"]


def test_few_shot_pruning_to_budget():
    shots = ["1+1?\n2", "22+22?\n44", "333+333?\n666"]
    join = lambda fits: formats.join_few_shot(shots, "4+4?", FewShotConfig(), fits)
    assert join(None) == "1+1?\n2\n\n22+22?\n44\n\n333+333?\n666\n\n4+4?"
    assert join(lambda t: len(t) <= 30) == "1+1?\n2\n\n22+22?\n44\n\n4+4?"
    assert join(lambda t: len(t) <= 15) == "1+1?\n2\n\n4+4?"
    assert join(lambda t: len(t) <= 3) == "4+4?"  # the query alone is kept even if too long


def test_few_shot_task_definition_comes_first():
    """OPT-IML / NIv2 order: definition, then the demonstrations, then the instance."""
    cfg = FewShotConfig(num_exemplars=1, definition="Add the two numbers.", inputs_prefix="Q: ")
    s = RenderSettings(task="add", format="fs_noopt", templates=QA, few_shot=cfg, seed=0)
    out = render_example(POOL[1], 1, "validation", s, pool=POOL[:2])
    assert out.inputs == "Add the two numbers.\n\nQ: 0+0?\n0\n\nQ: 1+1?"
    shots = ["1+1?\n2", "22+22?\n44"]
    join = lambda fits: formats.join_few_shot(shots, "4+4?", cfg, fits)
    assert join(lambda t: len(t) <= 40) == "Add the two numbers.\n\n1+1?\n2\n\n4+4?"


def test_few_shot_with_options_repeats_the_block_per_exemplar():
    pool = [dict(EX, premise="Bo is 40.", answer="no")]
    s = settings(format="fs_opt", few_shot=FewShotConfig(num_exemplars=1))
    out = render_example(EX, 0, "validation", s, pool=pool)
    block = "OPTIONS:\n- yes\n- no\n- maybe"
    assert out.shots == [f'Bo is 40.\nIs "Ann is a child." true?\n{block}\nno']
    assert out.inputs == f'{out.shots[0]}\n\nAnn is 9.\nIs "Ann is a child." true?\n{block}'
    assert out.options == ["yes", "no", "maybe"] and out.template_type == "fs_opt"


COT = (
    Template(inputs="{question}", targets="{rationale} So the answer is {answer}."),
    Template(
        inputs="The answer is {answer}. {rationale} What was the question?",
        targets="{question}",
        inverted=True,
    ),
)
PROBLEM = {
    "question": "Tom has 3 pens and buys 2. How many?",
    "rationale": "3 + 2 = 5.",
    "answer": "5",
}


def test_chain_of_thought_and_inverted_cot():
    s = RenderSettings(task="wp", format="cot", templates=COT)
    out = render_example(PROBLEM, 0, "train", s)
    assert (out.inputs, out.targets) == (
        "Tom has 3 pens and buys 2. How many?",
        "3 + 2 = 5. So the answer is 5.",
    )
    assert out.template_type == "cot"
    inv = render_example(PROBLEM, 1, "train", s)
    assert inv.inputs == "The answer is 5. 3 + 2 = 5. What was the question?"
    assert (inv.targets, inv.template_type) == (PROBLEM["question"], "cot_inverted")
    fs = RenderSettings(
        task="wp", format="fs_cot", templates=COT, few_shot=FewShotConfig(num_exemplars=1)
    )
    other = {"question": "2 cats and 2 dogs: pets?", "rationale": "2 + 2 = 4.", "answer": "4"}
    out = render_example(PROBLEM, 0, "train", fs, pool=[PROBLEM, other])
    assert out.inputs == (
        "2 cats and 2 dogs: pets?\n2 + 2 = 4. So the answer is 4.\n\n"
        "Tom has 3 pens and buys 2. How many?"
    )


def test_bad_settings():
    with pytest.raises(ValueError, match="format 'zero_shot' is not one of"):
        settings(format="zero_shot")
    with pytest.raises(ValueError, match="options_style 'shuffled'"):
        settings(options_style="shuffled")
    with pytest.raises(ValueError, match="num_exemplars must be >= 1, got 0"):
        FewShotConfig(num_exemplars=0)


def test_per_example_options_field():
    qa = (Template(inputs="{question}\n{options_}", targets="{answer}"),)
    s = RenderSettings(
        task="mc",
        format="zs_opt",
        templates=qa,
        options_field="choices",
        options_style="random",
        seed=1,
    )
    ex = {"question": "2+2?", "choices": ["3", "4", "5"], "answer": "4"}
    outs = [render_example(ex, i, "test", s) for i in range(40)]
    for out in outs:
        header, *items = out.inputs.split("\n")[1:]
        assert header in formats.OPTION_HEADERS and len(items) == 3
        markers = [item.rsplit(" ", 1)[0] for item in items]
        assert [item.rsplit(" ", 1)[1] for item in items] == ["3", "4", "5"]
        # Label markers ("(B)", "2.") become the target; "-" and "*" keep the option text.
        want = markers[1] if markers[1] not in ("-", "*") else "4"
        assert out.targets == want
        assert out.options == [
            m if m not in ("-", "*") else o for m, o in zip(markers, ["3", "4", "5"])
        ]
    assert {o.targets for o in outs} >= {"4", "(B)", "B.", "2."}


# ------------------------------------------------------------ input inversion (Flan 2022)


def test_inversion_share_picks_a_seeded_share_of_examples():
    s = settings(format="zs_noopt", inversion_share=0.25)
    rows = [render_example(EX, i, "train", s) for i in range(16)]
    inverted = [i for i, r in enumerate(rows) if r.template_type == "zs_noopt_inverted"]
    assert inverted == [0, 13]  # seed 0, task "nli", split train
    assert inverted == [i for i in range(16) if formats.is_inverted(0, "nli", "train", i, 0.25)]
    assert [r.template_idx for r in rows[:4]] == [2, 1, 0, 1]  # forward: i % 2 over 0, 1
    assert (rows[0].inputs, rows[0].targets) == (
        "Write a claim that is 'yes' given: Ann is 9.",
        "Ann is a child.",
    )
    other_seed = RenderSettings(**{**vars(s), "seed": 1})
    assert [
        i for i in range(16) if render_example(EX, i, "train", other_seed).template_idx == 2
    ] == [0, 4, 6, 8]
    many = sum(formats.is_inverted(0, "nli", "train", i, 0.1) for i in range(2000))
    assert 160 < many < 240  # about a tenth


def test_inversion_share_bounds_and_default():
    # None (the default): inverted templates rotate with the others, as in FLAN 2021.
    assert render_example(EX, 2, "train", settings(format="zs_noopt")).template_idx == 2
    never = settings(format="zs_noopt", inversion_share=0.0)
    always = settings(format="zs_noopt", inversion_share=1.0)
    assert all(render_example(EX, i, "train", never).template_idx < 2 for i in range(20))
    assert all(render_example(EX, i, "train", always).template_idx == 2 for i in range(20))
    with pytest.raises(ValueError, match=r"inversion_share must be in \[0, 1\], got 1.5"):
        settings(inversion_share=1.5)
    with pytest.raises(ValueError, match=r"needs templates with `inverted: true`"):
        settings(templates=NLI[:2], inversion_share=0.1)


def test_t0_specs_invert_a_tenth_with_the_prompt_as_target():
    from flan_jax.data.task_spec import load_task_spec  # no TensorFlow import
    from flan_jax.specs import spec_dir

    spec = load_task_spec(spec_dir("tasks") / "t0" / "t0_glue_mrpc_paraphrase.yaml")
    assert spec.inversion_share == 0.1
    s = spec.render_settings("zs_noopt")
    ex = {"prompt": "Is 'A' a paraphrase of 'B'? yes or no", "completion": "no"}
    rows = [render_example(ex, i, "train", s) for i in range(40)]
    assert [i for i, r in enumerate(rows) if r.template_type.endswith("_inverted")] == [
        0, 2, 26, 31, 39,
    ]  # fmt: skip
    assert (rows[0].inputs, rows[0].targets) == (
        "no\n\nThe text above answers a request. Write that request.",
        ex["prompt"],
    )
    assert (rows[31].inputs, rows[31].targets) == (  # 31 % 2: the second inverted one
        "Answer: no\n\nWhat was the question or instruction that led to this answer?",
        ex["prompt"],
    )
    assert (rows[1].inputs, rows[1].targets) == (ex["prompt"], "no")
