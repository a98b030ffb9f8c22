"""Natural-Instructions v2 and dialog loaders (exact prompts on the shipped samples), their task
specs, and `tasks.check_recorded_sizes` (recorded split sizes vs present data, mock TFDS)."""

from __future__ import annotations

import json
import os

import pytest
import seqio
import tensorflow_datasets as tfds
from conftest import needs_data

from flan_jax.data import dialog, formats, niv2, tasks
from flan_jax.specs import spec_dir

NIV2_SAMPLE = "niv2/sample/task001_example.json"
DIALOG_SAMPLE = "dialog/sample/dialogs.jsonl"
DEFINITION = (
    "Task: You are given the name of a country. Reply with the name of its capital city and "
    "nothing else."
)
INVERTED_NIV2_TRAIN = [24]  # of train indices 0-39, seed 0, task niv2_task001_example
EXPECTED_NIV2_INVERTED = (
    f"{DEFINITION}\n\nThis is the output for one input of the task:\nTokyo\n\nWrite that input.",
    "Japan",
)
SPEC_FILES = sorted((spec_dir("tasks") / "niv2").glob("*.yaml"))
SPEC_FILES += sorted((spec_dir("tasks") / "dialog").glob("*.yaml"))


# ------------------------------------------------------------------------------------- niv2


def test_niv2_zero_shot_exact():
    train = niv2.examples("train", path=NIV2_SAMPLE)
    assert train[0] == {
        "id": "task001-1",
        "prompt": f"{DEFINITION}\n\nYour turn\nInput: Japan\nOutput:",
        "completion": "Tokyo",
        "definition": DEFINITION.removeprefix("Task: "),
        "input": "Japan",
    }
    chile = next(ex for ex in train if ex["id"] == "task001-5")
    assert chile["completion"] == "Santiago"  # the first of the gold outputs


def test_niv2_few_shot_exact():
    (test_example,) = niv2.examples("test", path=NIV2_SAMPLE, num_positive=2)
    assert test_example == {
        "id": "task001-2",
        "prompt": (
            f"{DEFINITION}\n\n"
            "Solved example 1\nInput: France\nOutput: Paris\n\n"
            "Solved example 2\nInput: Kenya\nOutput: Nairobi\n\n"
            "Your turn\nInput: Canada\nOutput:"
        ),
        "completion": "Ottawa",
        "definition": DEFINITION.removeprefix("Task: "),
        "input": "Canada",
    }


def test_niv2_split_is_a_deterministic_hash_of_the_id():
    ids = {s: [ex["id"] for ex in niv2.examples(s, path=NIV2_SAMPLE)] for s in niv2.SPLITS}
    assert ids == {
        "train": [f"task001-{i}" for i in (1, 4, 5, 6, 8, 9, 10, 11, 12)],
        "validation": ["task001-3", "task001-7"],
        "test": ["task001-2"],
    }
    assert niv2.split_of("task001-2") == "test"
    assert niv2.split_of("task001-2", validation_percent=0, test_percent=0) == "train"


def _write(tmp_path, data, name="task.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _task(**overrides):
    data = {
        "Definition": ["Say hi."],
        "Positive Examples": [{"input": "a", "output": "hi", "explanation": "e"}],
        "Negative Examples": [],
        "Instances": [{"id": "x-1", "input": "b", "output": ["hi"]}],
    }
    return {k: v for k, v in (data | overrides).items() if v is not None}


@pytest.mark.parametrize(
    "data,message",
    [
        (_task(Instances=None), r"task\.json: missing key 'Instances'"),
        (_task(Definition="Say hi."), r"'Definition' must be a non-empty list of strings"),
        (
            _task(Instances=[{"id": "x-1", "input": "b", "output": ["hi"]}, {"id": "x-2"}]),
            r"task\.json: 'Instances'\[1\] has no 'input' key",
        ),
        (
            _task(Instances=[{"id": "x-1", "input": "b", "output": "hi"}]),
            r"'Instances'\[0\]: 'output' must be a non-empty list of strings, got 'hi'",
        ),
        (
            _task(Instances=[{"id": "x-1", "input": "b", "output": ["hi"]}] * 2),
            r"'Instances'\[1\] repeats id 'x-1' of 'Instances'\[0\]",
        ),
        (_task(**{"Positive Examples": [{"input": "a"}]}), r"'Positive Examples'\[0\] must be"),
        ('{"Definition": [', r"task\.json:1: malformed JSON"),
    ],
)
def test_niv2_validation_names_file_and_problem(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=message):
        niv2.examples("train", path=str(path))


def test_niv2_rejects_more_positives_than_the_file_has(tmp_path):
    path = _write(tmp_path, _task())
    with pytest.raises(ValueError, match=r"num_positive 2 must be between 0 and the file's 1"):
        niv2.examples("train", path=str(path), num_positive=2)
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        niv2.examples("train", path=str(tmp_path / "missing.json"))


# ----------------------------------------------------------------------------------- dialog


def test_dialog_exact_examples():
    rows = dialog.examples("train", paths={"train": DIALOG_SAMPLE}, max_context_turns=4)
    assert [r["response"] for r in rows] == [
        "How about Pebble?",
        "Then try Sir Reginald Whiskerton.",
        "Door to door it often takes longer, but you sleep on the way.",
        "144.",
        "72.",
    ]  # the leading System turn has no context; the trailing User turn is no target
    assert rows[1]["context"] == (
        "User: Can you suggest a name for a grey cat?\n"
        "Assistant: How about Pebble?\n"
        "User: Something longer, please.\n"
        "Assistant:"
    )
    assert rows[2]["context"] == (
        "System: You help people plan trips by train.\n"
        "User: Is the night train to Vienna faster than flying?\n"
        "Assistant:"
    )


def test_dialog_turn_limit_and_speakers():
    rows = dialog.examples("train", paths={"train": DIALOG_SAMPLE}, max_context_turns=1)
    assert rows[1] == {
        "context": "User: Something longer, please.\nAssistant:",
        "response": "Then try Sir Reginald Whiskerton.",
    }
    user_rows = dialog.examples("train", paths={"train": DIALOG_SAMPLE}, model_speakers=["user"])
    assert user_rows[0] == {
        "context": (
            "User: Can you suggest a name for a grey cat?\nAssistant: How about Pebble?\nUser:"
        ),
        "response": "Something longer, please.",
    }
    with pytest.raises(ValueError, match=r"max_context_turns must be an int >= 1, got 0"):
        dialog.examples("train", paths={"train": DIALOG_SAMPLE}, max_context_turns=0)
    with pytest.raises(ValueError, match=r"split 'test' has no file.*\['train'\]"):
        dialog.examples("test", paths={"train": DIALOG_SAMPLE})


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"turns": [', r"d\.jsonl:3: malformed JSON line"),
        (
            '{"messages": []}',
            r"d\.jsonl:3: expected an object with a \"turns\" list, got \['messages'\]",
        ),
        ('{"turns": []}', r"d\.jsonl:3: \"turns\" must be a non-empty list"),
        (
            '{"turns": [{"speaker": "User", "text": "hi"}, {"text": "yo"}]}',
            r"d\.jsonl:3: turn 1 must be an object with \"speaker\" and \"text\"",
        ),
        (
            '{"turns": [{"speaker": "", "text": "hi"}]}',
            r"d\.jsonl:3: turn 0 needs a non-empty string speaker",
        ),
    ],
)
def test_dialog_validation_names_file_and_line(tmp_path, line, message):
    good = '{"turns": [{"speaker": "User", "text": "hi"}, {"speaker": "Assistant", "text": "yo"}]}'
    path = _write(tmp_path, f"{good}\n\n{line}\n", name="d.jsonl")
    with pytest.raises(ValueError, match=message):
        dialog.examples("train", paths={"train": str(path)})


# ------------------------------------------------------------------------------------ specs


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_specs_render_and_match_recorded_sizes(path):
    spec = tasks.load_task_spec(path)
    assert spec.vocabulary == "t5" and spec.source.type == "function"
    assert tasks.check_recorded_sizes(spec) == spec.num_examples
    settings = spec.render_settings("zs_noopt")
    examples = tasks.get_examples(spec, "train")
    first = formats.render_example(examples[0], 0, "train", settings)
    assert first.inputs.endswith(":") and first.targets and "{" not in first.inputs


@needs_data  # the T5 SentencePiece model
def test_niv2_spec_through_seqio():
    tasks.register_task_spec(spec_dir("tasks") / "niv2" / "niv2_task001_example_pos2.yaml")
    ds = seqio.get_mixture_or_task("niv2_task001_example_pos2_zs_noopt").get_dataset(
        {"inputs": 256, "targets": 16}, split="test", shuffle=False, use_cached=False
    )
    (ex,) = list(ds.as_numpy_iterator())
    assert ex["targets_pretokenized"].decode() == "Ottawa"
    assert ex["inputs_pretokenized"].decode().endswith("Input: Canada\nOutput:")
    assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1  # EOS


# ------------------------------------------------------------------- recorded split sizes


def _tfds_spec(num_train: int) -> tasks.TaskSpec:
    return tasks.load_task_spec(
        {
            "name": "rte_size_check",
            "cluster": "nli",
            "source": {
                "type": "tfds",
                "name": "super_glue/rte:1.0.2",
                "splits": {"train": "train"},
            },
            "num_examples": {"train": num_train},
            "fields": {"premise": "premise"},
            "templates": [{"inputs": "{premise}", "targets": "x"}],
            "formats": ["zs_noopt"],
        }
    )


def test_check_recorded_sizes_against_mock_tfds():
    with tfds.testing.mock_data(num_examples=7):
        assert tasks.check_recorded_sizes(_tfds_spec(7)) == {"train": 7}
        with pytest.raises(ValueError) as err:
            tasks.check_recorded_sizes(_tfds_spec(2490))
    assert "task 'rte_size_check': split 'train': recorded num_examples 2490, data has 7" in str(
        err.value
    )


def test_check_recorded_sizes_skips_missing_data_and_flags_file_mismatch(tmp_path):
    spec = tasks.load_task_spec(spec_dir("tasks") / "dialog" / "dialog_sample.yaml")
    wrong = tasks.load_task_spec(
        {**{f: getattr(spec, f) for f in ("name", "cluster", "fields")},
         "source": spec.source, "templates": spec.templates, "formats": ["zs_noopt"],
         "num_examples": {"train": 6}}
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"'train': recorded num_examples 6, data has 5"):
        tasks.check_recorded_sizes(wrong)
    missing = {
        "name": "missing_file",
        "cluster": "x",
        "source": {"type": "jsonl", "splits": {"train": str(tmp_path / "none.jsonl")}},
        "num_examples": {"train": 3},
        "fields": {"a": "a"},
        "templates": [{"inputs": "{a}", "targets": "b"}],
        "formats": ["zs_noopt"],
    }
    assert tasks.check_recorded_sizes(tasks.load_task_spec(missing)) == {}


def _fake_clone(root):
    """A natural-instructions clone in miniature: two task files and the default split."""
    for name, definition in [("task001_caps", "Give the capital."), ("task002_sum", "Add.")]:
        data = {
            "Definition": [definition],
            "Positive Examples": [{"input": f"{name} ex{i}", "output": f"out{i}"} for i in (1, 2)],
            "Instances": [
                {"id": f"{name}-{i}", "input": f"q{i}", "output": [f"a{i}"]} for i in range(40)
            ],
        }
        (root / "tasks").mkdir(exist_ok=True)
        (root / "tasks" / f"{name}.json").write_text(json.dumps(data))
    (root / "splits" / "default").mkdir(parents=True)
    (root / "splits" / "default" / "train_tasks.txt").write_text("task001_caps\n")
    (root / "splits" / "default" / "test_tasks.txt").write_text("task002_sum\n")


def test_registry_reads_a_natural_instructions_clone(tmp_path):
    """With $FLAN_JAX_NIV2_DIR, flan2022_niv2 mixes the clone's train tasks (both renderings)
    and niv2_test holds its test tasks; prompts are definition (+ 2 positives) + instance."""
    import subprocess
    import sys

    _fake_clone(tmp_path)
    code = (
        "import flan_jax.registry, seqio, json; from flan_jax.data import tasks; "
        "names = lambda m: sorted(t.name for t in seqio.get_mixture_or_task(m).tasks); "
        "ex = tasks.get_examples(tasks.get_task_spec('niv2_task001_caps_pos2'), 'train')[0]; "
        "print(json.dumps([names('flan2022_niv2'), names('niv2_test'), ex['prompt'], "
        "tasks.get_task_spec('niv2_task001_caps').stand_in_for]))"
    )
    env = dict(os.environ, FLAN_JAX_NIV2_DIR=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    train, test, prompt, stand_in = json.loads(done.stdout.strip().splitlines()[-1])
    assert train == ["niv2_task001_caps_pos2_zs_noopt", "niv2_task001_caps_zs_noopt"]
    assert test == ["niv2_task002_sum_pos2_zs_noopt", "niv2_task002_sum_zs_noopt"]
    assert prompt.startswith(
        "Task: Give the capital.\n\nSolved example 1\nInput: task001_caps ex1\nOutput: out1\n\n"
        "Solved example 2\nInput: task001_caps ex2\nOutput: out2\n\nYour turn\nInput: q"
    )
    assert stand_in is None  # the real corpus: nothing to refuse


def test_clone_without_splits_names_the_variable(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\$FLAN_JAX_NIV2_DIR=.* has no splits/default"):
        niv2.clone_task_names(tmp_path)


def test_flan2022_refuses_the_shipped_samples_unless_smoke_test():
    import flan_jax.registry  # noqa: F401
    from flan_jax.data import stats
    from flan_jax.training import train
    from flan_jax.training.input_pipeline import DataConfig

    stand_ins = stats.stand_in_tasks("flan2022")
    assert sorted(stand_ins) == [
        "dialog_sample_zs_noopt",
        "niv2_task001_example_pos2_zs_noopt",
        "niv2_task001_example_zs_noopt",
    ]
    lengths = {"inputs": 8, "targets": 8}
    data = DataConfig(mixture_or_task_name="flan2022", task_feature_lengths=lengths, batch_size=8)
    with pytest.raises(ValueError, match=r"'flan2022' would train on 3 task\(s\) that read a "
                       r"shipped sample.*FLAN_JAX_NIV2_DIR.*allow_sample_data=True"):  # fmt: skip
        train._check_data(None, data, sample=0)
    smoke = DataConfig(
        mixture_or_task_name="flan2022", task_feature_lengths=lengths, batch_size=8,
        allow_sample_data=True,
    )  # fmt: skip
    train._check_data(None, smoke, sample=0)
    assert stats.stand_in_tasks("flan2021") == {}


def test_niv2_input_inversion_exact():
    """Flan 2022's input inversion on the shipped spec: a seeded tenth of the instances ask
    for an input given the definition and an output (niv2_instance's inverted templates)."""
    spec = tasks.load_task_spec(spec_dir("tasks") / "niv2" / "niv2_task001_example.yaml")
    assert spec.inversion_share == niv2.INVERSION_SHARE == 0.1
    settings = spec.render_settings("zs_noopt")
    flags = [formats.is_inverted(0, spec.name, "train", i, 0.1) for i in range(40)]
    assert [i for i, f in enumerate(flags) if f] == INVERTED_NIV2_TRAIN
    ex = tasks.get_examples(spec, "train")[0]  # Japan -> Tokyo
    row = formats.render_example(ex, INVERTED_NIV2_TRAIN[0], "train", settings)
    assert row.template_type == "zs_noopt_inverted"
    assert (row.inputs, row.targets) == EXPECTED_NIV2_INVERTED
    forward = formats.render_example(ex, 0, "train", settings)
    assert (forward.inputs, forward.targets) == (ex["prompt"], "Tokyo")
