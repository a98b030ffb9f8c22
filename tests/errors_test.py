"""Bad input on every subcommand: one or two lines naming the problem and the fix, exit code 2,
no traceback. Most cases call `flan_jax.cli.main` in-process; two run the console script."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import cli
from flan_jax.cli import gin_flags
from flan_jax.model import models
from flan_jax.model.decoding import DecodeConfig

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = ["--gin_file=test/tiny_t5.gin", "--gin_file=runs/finetune.gin"]
REQUIRED = [
    "--gin.MIXTURE_OR_TASK_NAME='flan_tiny'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
    "--gin.TRAIN_STEPS=1",
    "--gin.INITIAL_CHECKPOINT_PATH=None",
    "--gin.BATCH_SIZE=8",  # conftest: 8 CPU devices
]


def fails(capsys, *argv: str) -> str:
    """Runs `flan-jax ARGV` in-process; asserts exit code 2 and a two-line report; returns it."""
    code = cli.main(list(argv))
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if not line.startswith(("I0000", "WARNING: All"))]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) <= 2, err
    return lines[0]


def train_args(tmp_path, *more: str) -> list[str]:
    return ["train", *TINY, f"--gin.MODEL_DIR='{tmp_path}/run'", *REQUIRED, *more]


def test_gin_parse_error_names_flag_and_binding(capsys, tmp_path):
    err = fails(capsys, *train_args(tmp_path, "--gin.TRAIN_STEPS=(2"))
    assert "--gin.TRAIN_STEPS=(2: cannot parse gin binding 'TRAIN_STEPS = (2'" in err
    err = fails(capsys, *train_args(tmp_path, "--gin_bindings=trian.RunConfig.seed = 1"))
    assert "--gin_bindings=trian.RunConfig.seed = 1: cannot parse gin binding" in err
    assert "No configurable matching 'trian.RunConfig'" in err


def test_unknown_gin_file_lists_closest_names(capsys):
    err = fails(capsys, "eval", "--gin_file=models/t5_1_1/smal.gin")
    assert err.startswith("flan-jax eval: error: --gin_file=models/t5_1_1/smal.gin: no such")
    assert "closest: ['models/t5_1_1/small.gin'" in err
    err = fails(capsys, "infer", "--gin_file=tiny_decoder.gin")
    assert "'test/tiny_decoder.gin'" in err  # the same name in a folder of the search path


def test_generate_without_a_run_folder(capsys, tmp_path):
    err = fails(capsys, "generate", "--model_dir", str(tmp_path / "nothing"), "Hello")
    assert err.startswith("flan-jax generate: ") and str(tmp_path / "nothing") in err


def test_unused_macro_is_an_error_with_close_names(capsys, tmp_path):
    err = fails(capsys, *train_args(tmp_path, "--gin.BATCH_SIZ=4"))
    assert "--gin.BATCH_SIZ=4: no loaded gin file defines or uses macro 'BATCH_SIZ'" in err
    assert "closest: ['BATCH_SIZE'" in err
    err = fails(capsys, "demo", "--gin_file=experiments/flan_tiny_t5.gin", "--gin.HELD_OUT='x'")
    assert "closest: ['HELD_OUT_CLUSTER']" in err


def test_macros_of_included_files_and_other_bindings_are_known():
    # DROPOUT_RATE: used (%DROPOUT_RATE) only in models/t5_1_1/tiny.gin, an include of an
    # include; MY_SEED: used only by another binding.
    args = gin_flags.parse(
        [
            "--gin_file=experiments/flan_tiny_t5.gin",
            "--gin.DROPOUT_RATE=0.25",
            "--gin_bindings=train.RunConfig.seed = %MY_SEED",
            "--gin.MY_SEED=7",
        ],
        "flan-jax train",
    )
    import gin

    assert args.gin_file == ["experiments/flan_tiny_t5.gin"]
    assert gin.query_parameter("%DROPOUT_RATE") == 0.25
    assert gin.query_parameter("%MY_SEED") == 7


def test_unknown_mixture_names_the_spec_folder(capsys, tmp_path, monkeypatch):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "quiz.yaml").write_text("name: my_quiz\ncluster: x\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLAN_JAX_SPECS", raising=False)
    args = train_args(tmp_path, "--gin.MIXTURE_OR_TASK_NAME='my_quiz'")
    err = fails(capsys, *args)
    assert "MIXTURE_OR_TASK_NAME 'my_quiz' is not registered" in err
    assert "it is defined in 'specs/quiz.yaml': export FLAN_JAX_SPECS=specs" in err
    assert "(FLAN_JAX_SPECS is unset)" in err
    err = fails(capsys, "mixture", "stats", "my_quiz")
    assert "unknown mixture or task 'my_quiz'" in err and "--specs specs" in err
    err = fails(capsys, "tasks", "show", "flan_tin")
    assert "if it is defined in a YAML folder, --specs DIR" in err


def test_vocabulary_larger_than_embedding_fails_before_compiling(capsys, tmp_path):
    err = fails(capsys, *train_args(tmp_path, "--gin.network.TransformerConfig.vocab_size=200"))
    assert "'flan_tiny' inputs vocabulary has 259 ids but the model's embedding has 200" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_truncating_feature_lengths_warn_with_share_and_suggestion():
    import seqio

    from flan_jax.data import stats

    task, lengths = "tiny_topic_zs_opt", {"inputs": 128, "targets": 8}
    warnings = stats.truncation_warnings(task, lengths, sample=100)
    # the same 100 examples as seqio's own pipeline renders them (byte vocabulary: + EOS)
    ds = seqio.get_mixture_or_task(task).get_dataset(lengths, shuffle=False)
    want = {"inputs": [], "targets": []}
    for ex in ds.take(100).as_numpy_iterator():
        for key, values in want.items():
            values.append(len(ex[f"{key}_pretokenized"]) + 1)
    assert len(warnings) == 2
    for warning, key in zip(warnings, ("inputs", "targets")):
        values = np.asarray(want[key])
        share, p99 = (values > lengths[key]).mean(), np.percentile(values, 99)
        assert share > 0.02 and p99 > lengths[key]
        assert warning == (
            f"TASK_FEATURE_LENGTHS[{key!r}] = {lengths[key]} truncates {share:.1%} of 100 "
            f"sampled {task!r} {key} (p99 {p99:.0f} tokens); consider "
            f"{stats.suggested_length(values)}"
        )
    assert stats.suggested_length(np.array([100, 130])) == 192  # p99 130 -> 3 x 64
    assert stats.suggested_length(np.array([5, 30])) == 32  # below 64: multiples of 8
    assert stats.truncation_warnings(task, {"inputs": 1024, "targets": 1024}, sample=100) == []


def test_malformed_training_file_names_file_and_line(capsys, tmp_path):
    data = ['{"q": "one", "a": "1"}', '{"q": "two", "a": "2"}', '{"q": "three", "a": 3']
    (tmp_path / "bad.jsonl").write_text("\n".join(data) + "\n")
    (tmp_path / "bad.yaml").write_text(
        "name: bad_file\ncluster: x\nsource: {type: jsonl, splits: {train: bad.jsonl}}\n"
        "fields: {question: q, answer: a}\nformats: [zs_noopt]\nvocabulary: byte\n"
        "templates: [{inputs: '{question}', targets: '{answer}'}]\n"
    )
    (tmp_path / "mix.yaml").write_text("name: bad_mix\nmembers: [bad_file]\n")
    err = fails(capsys, "mixture", "stats", "bad_mix", "--specs", str(tmp_path))
    assert f"{tmp_path / 'bad.jsonl'}:3: malformed JSON line" in err


def test_hf_checkpoint_with_unread_tensors_is_refused(capsys, tmp_path):
    torch = pytest.importorskip("torch", reason="needs the `hf` extra")
    transformers = pytest.importorskip("transformers", reason="needs the `hf` extra")
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, num_hidden_layers=1, max_position_embeddings=32,
    )  # fmt: skip
    transformers.Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen")
    relabelled = json.loads((tmp_path / "qwen" / "config.json").read_text())
    relabelled.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (tmp_path / "qwen" / "config.json").write_text(json.dumps(relabelled))
    capsys.readouterr()  # save_pretrained's progress bar
    err = fails(capsys, "convert", "hf-to-flan", str(tmp_path / "qwen"), str(tmp_path / "out"))
    assert "3 tensor(s) would be dropped by the conversion" in err
    for name in ("k_proj", "q_proj", "v_proj"):
        assert f"'model.layers.0.self_attn.{name}.bias'" in err
    assert "model_type 'llama'" in err and not (tmp_path / "out").exists()


def test_decoder_only_left_padded_prompts_decode_like_right_padded():
    from tiny_configs import LLAMA

    model = models.DecoderOnlyModel(LLAMA)
    shapes = {"decoder_input_tokens": (1, 8)}
    params = jax.jit(lambda r: model.get_initial_variables(r, shapes)["params"])(jax.random.key(0))
    from flax import linen as nn

    params = nn.unbox(params)
    right = jnp.array([[0, 7, 9, 4, 0, 0], [0, 5, 0, 0, 0, 0]], jnp.int32)
    right_mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], jnp.int32)
    left = jnp.array([[0, 0, 0, 7, 9, 4], [0, 0, 0, 0, 0, 5]], jnp.int32)
    left_mask = jnp.array([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]], jnp.int32)
    decode = DecodeConfig(max_decode_len=6, eos_id=-1)
    predict = jax.jit(lambda p, b: model.predict_batch(p, b, decode=decode))
    want = predict(params, {"decoder_input_tokens": right, "decoder_causal_attention": right_mask})
    got = predict(params, {"decoder_input_tokens": left, "decoder_causal_attention": left_mask})
    np.testing.assert_array_equal(got, want)
    assert len(set(np.asarray(want).ravel().tolist())) > 1  # a real decode, not a constant


def _console(*argv: str, cwd=REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    script = pathlib.Path(sys.executable).with_name("flan-jax")
    return subprocess.run(
        [str(script), *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_console_bad_binding_is_two_lines_and_exit_2(tmp_path):
    done = _console(*train_args(tmp_path, "--gin.LEARNING_RATE=1e-3)"))
    assert done.returncode == 2, done.stderr
    first, second = done.stderr.splitlines()
    assert first.startswith(
        "flan-jax train: error: --gin.LEARNING_RATE=1e-3): cannot parse gin binding "
        "'LEARNING_RATE = 1e-3)': "
    )
    assert second == "(set FLAN_JAX_TRACEBACK=1 for the traceback)"


def test_console_convert_missing_folder_is_two_lines_and_exit_2(tmp_path):
    done = _console("convert", "hf-to-flan", str(tmp_path / "nothing"), str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 2
    assert done.stderr.startswith("flan-jax convert: error: ") and "nothing" in done.stderr
