"""OPT-IML's output separators: one drawn per example (seeded), exact rendered inputs."""

import pytest

from flan_jax.data import formats
from flan_jax.data.templates import Template

TEMPLATES = (Template(inputs="Translate to French: {text}", targets="{answer}"),)
EXAMPLES = [{"text": f"w{i}", "answer": f"a{i}"} for i in range(8)]


def _settings(fmt="zs_noopt", separators=formats.OPT_IML_SEPARATORS, **kw):
    return formats.RenderSettings(
        task="t", format=fmt, templates=TEMPLATES, output_separators=separators, seed=3, **kw
    )


def test_zero_shot_draws_a_separator_per_example_from_the_seed():
    got = [formats.render_example(ex, i, "train", _settings()).inputs
           for i, ex in enumerate(EXAMPLES[:6])]  # fmt: skip
    assert got == [
        "Translate to French: w0 ",
        "Translate to French: w1 ",
        "Translate to French: w2\nA:",
        "Translate to French: w3\nOutput:",
        "Translate to French: w4\n",
        "Translate to French: w5\nA:",
    ]
    again = [formats.render_example(ex, i, "train", _settings()).inputs
             for i, ex in enumerate(EXAMPLES[:6])]  # fmt: skip
    assert again == got
    target = formats.render_example(EXAMPLES[2], 2, "train", _settings()).targets
    assert target == "a2"


def test_few_shot_demonstrations_use_the_drawn_separator_and_the_query_ends_with_it():
    settings = _settings(
        "fs_noopt", ("\nOutput:", " =>"), few_shot=formats.FewShotConfig(num_exemplars=2)
    )
    got = [formats.render_example(EXAMPLES[i], i, "train", settings, pool=EXAMPLES).inputs
           for i in range(3)]  # fmt: skip
    assert got == [
        "Translate to French: w5\nOutput:a5\n\nTranslate to French: w3\nOutput:a3\n\n"
        "Translate to French: w0\nOutput:",
        "Translate to French: w5\nOutput:a5\n\nTranslate to French: w2\nOutput:a2\n\n"
        "Translate to French: w1\nOutput:",
        "Translate to French: w7 =>a7\n\nTranslate to French: w5 =>a5\n\n"
        "Translate to French: w2 =>",
    ]


def test_without_separators_rendering_is_unchanged():
    for fmt in ("zs_noopt", "fs_noopt"):
        plain = _settings(fmt, ())
        r = formats.render_example(EXAMPLES[1], 1, "train", plain, pool=EXAMPLES)
        assert not r.inputs.endswith(("\n", " ", ":"))
    assert formats.render_example(EXAMPLES[1], 1, "train", _settings(separators=())).inputs == (
        "Translate to French: w1"
    )


def test_a_string_instead_of_a_list_is_refused():
    with pytest.raises(ValueError, match=r"output_separators must be a list.*write \['\\n'\]"):
        _settings(separators="\n")
