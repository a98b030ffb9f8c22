"""Templates: parsing, strict rendering, set validation, and every template set in the repo."""

import pathlib

import pytest
import yaml

from flan_jax.data import templates
from flan_jax.data.templates import Template, TemplateSet

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_placeholders_and_escapes():
    assert templates.placeholders("Q: {question}\n{{not a field}} {answer}") == {
        "question",
        "answer",
    }
    assert templates.render("{a} + {b} = {{x}}", {"a": "2", "b": "3"}) == "2 + 3 = {x}"


def test_render_missing_field_names_it():
    with pytest.raises(KeyError, match="needs field 'b'"):
        templates.render("{a} {b}", {"a": "1"})


@pytest.mark.parametrize(
    "text, match",
    [("{a!r}", "only plain"), ("{a:>3}", "only plain"), ("{0}", "only plain"), ("{a", "malformed")],
)
def test_bad_placeholders(text, match):
    with pytest.raises(ValueError, match=match):
        Template(inputs=text, targets="x")


def test_set_validation_errors():
    t = Template(inputs="{premise}", targets="{answer}")
    with pytest.raises(ValueError, match="template set 'nli' is empty"):
        TemplateSet(name="nli", fields=("premise",), templates=())
    with pytest.raises(ValueError, match=r"'nli', template 1: placeholder \{hypo\}"):
        TemplateSet(
            name="nli",
            fields=("premise", "answer"),
            templates=(t, Template(inputs="{hypo}", targets="{answer}")),
        )
    with pytest.raises(ValueError, match="field 'hypothesis' is declared but no template uses"):
        TemplateSet(name="nli", fields=("premise", "hypothesis", "answer"), templates=(t,))


def test_check_task_templates_names_task_index_and_field():
    tset = templates.template_set_from_dict(
        {"templates": [{"inputs": "{q}", "targets": "{a}"}, {"inputs": "{q}?", "targets": "{b}"}]},
        name="qa",
    )
    with pytest.raises(ValueError, match=r"task 'my_qa': template 1 of set 'qa' uses \{b\}"):
        templates.check_task_templates("my_qa", ["q", "a"], [tset])
    with pytest.raises(ValueError, match="task 'my_qa': field 'c' is never used"):
        templates.check_task_templates("my_qa", ["q", "a", "b", "c"], [tset])
    templates.check_task_templates("my_qa", ["q", "a", "b"], [tset])


def test_load_template_set_from_yaml(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "fields": ["x", "answer"],
                "templates": [
                    {"inputs": "Double {x}.", "targets": "{answer}"},
                    {"inputs": "{answer} is double what?", "targets": "{x}", "inverted": True},
                ],
            }
        )
    )
    tset = templates.load_template_set(path)
    assert tset.name == "toy"
    assert tset.fields == ("x", "answer")
    assert tset.templates[1] == Template(
        inputs="{answer} is double what?", targets="{x}", inverted=True
    )
    path.write_text(yaml.safe_dump({"templates": [{"inputs": "{x}", "target": "y"}]}))
    with pytest.raises(ValueError, match="template set 'toy', template 0: expected a mapping"):
        templates.load_template_set(path)


def _repo_template_sets():
    return sorted((REPO / "tasks" / "templates").glob("*.yaml"))


@pytest.mark.parametrize("path", _repo_template_sets(), ids=lambda p: p.stem)
def test_every_repo_template_set_is_valid(path):
    tset = templates.load_template_set(path)  # validates placeholders and field use
    assert len(tset) >= 1


def _repo_task_specs():
    from flan_jax.data import tasks

    return tasks.task_spec_files(REPO / "tasks")


@pytest.mark.parametrize("path", _repo_task_specs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_repo_task_spec_validates(path):
    from flan_jax.data import tasks

    spec = tasks.load_task_spec(path)  # placeholders exist, every task field is used
    used = set().union(*(t.fields for t in spec.templates.templates))
    if spec.cot_templates is not None:
        used |= set().union(*(t.fields for t in spec.cot_templates.templates))
    assert set(spec.fields) - {spec.options_field} <= used


def test_every_shipped_collection_shares_one_taxonomy():
    """FLAN 2021, T0, Flan 2022's other sources and flan_tiny name categories alike."""
    from flan_jax.data import categories

    clusters = {yaml.safe_load(p.read_text())["cluster"] for p in _repo_task_specs()}
    assert categories.unknown_categories(clusters) == []
    assert {"struct_to_text", "reading_comprehension", "topic_classification"} <= clusters
    assert categories.unknown_categories({"nli", "structure_to_text"}) == ["structure_to_text"]
