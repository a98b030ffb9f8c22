"""`flan-jax generate`: streamed text equals predict_batch decoded, from a trainer-style run."""

import io
import json

import jax
import numpy as np
import optax
import pytest
import seqio
from flax import linen as nn

import gin
from flan_jax.checkpoints import manager as checkpoints
from flan_jax.cli import generate as gen
from flan_jax.cli import gin_flags
from flan_jax.evaluation import inference
from flan_jax.model.decoding import DecodeConfig

VOCAB = seqio.ByteVocabulary()
PROMPTS = ["what is 2 + 3?", "héllo wörld", "a"]


def make_run_dir(model_dir: str, model_gin: str) -> tuple:
    """Writes config.gin the way `flan-jax train` does and a step-3 checkpoint of a random init."""
    gin_flags.parse(
        [
            f"--gin_file={model_gin}",
            "--gin_file=runs/finetune.gin",
            f"--gin.MODEL_DIR='{model_dir}'",
            "--gin.MIXTURE_OR_TASK_NAME='tiny_topic'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 8}",
            "--gin.TRAIN_STEPS=3",
            "--gin.INITIAL_CHECKPOINT_PATH=None",
        ],
        "test",
    )
    gin_flags.write_config(model_dir, gin.config_str())
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    gin.clear_config()
    shapes = {"encoder_input_tokens": (1, 24), "decoder_input_tokens": (1, 8)}
    params = jax.jit(lambda r: nn.unbox(model.get_initial_variables(r, shapes)["params"]))(
        jax.random.key(1)
    )
    state = {"step": np.int32(3), "params": params, "opt_state": optax.adafactor(1e-3).init(params)}
    ckpt = checkpoints.Checkpointer(model_dir, checkpoints.CheckpointConfig(async_save=False))
    ckpt.save(3, state)
    ckpt.close()
    return model, params


@pytest.fixture(scope="module", params=["test/tiny_t5.gin", "test/tiny_decoder.gin"])
def run(request, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("run"))
    model, params = make_run_dir(model_dir, request.param)
    return model_dir, model, params


def _predicted(model, params, prompt, decode, rng=None):
    batch = gen.prompt_batch(model, prompt, VOCAB, {"inputs": 24, "targets": 8})
    tokens = model.predict_batch(params, batch, rng, decode=decode)
    return inference.decode_tokens(np.asarray(tokens[0]), VOCAB)


def test_main_streams_greedy_decodes_of_args_and_stdin(run, capsys, monkeypatch):
    model_dir, model, params = run
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PROMPTS[1]}\n\n{PROMPTS[2]}\n"))
    argv = ["--model_dir", model_dir, "--vocabulary", "byte", "--max_decode_len", "10"]
    assert gen.main([*argv, PROMPTS[0], "-"]) == 0
    out = capsys.readouterr()
    want = [_predicted(model, params, p, DecodeConfig(max_decode_len=10)) for p in PROMPTS]
    assert out.out == "".join(w + "\n" for w in want)
    assert any(want) and "checkpoint step 3" in out.err


class _Recorder(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


@pytest.mark.parametrize(
    "decode",
    [
        DecodeConfig(max_decode_len=10),
        DecodeConfig(method="sample", temperature=2.0, top_k=20, top_p=0.9, max_decode_len=10),
    ],
    ids=["greedy", "sample"],
)
def test_generate_text_writes_token_by_token_what_predict_batch_returns(run, decode):
    _, model, params = run
    rng = jax.random.key(7)
    out = _Recorder()
    text = gen.generate_text(
        model, params, PROMPTS[0], VOCAB, {"inputs": 24, "targets": 8}, decode, rng=rng, out=out
    )
    assert text == _predicted(model, params, PROMPTS[0], decode, rng)
    assert out.getvalue() == text + "\n"
    assert len(out.writes) == len(text.encode()) + 1  # one write per byte token, then "\n"


def test_beam_search_prints_the_best_beam(run):
    _, model, params = run
    decode = DecodeConfig(method="beam", num_beams=3, max_decode_len=6)
    out = io.StringIO()
    lengths = {"inputs": 24, "targets": 8}
    rng = jax.random.key(0)
    text = gen.generate_text(model, params, "abc", VOCAB, lengths, decode, rng=rng, out=out)
    assert out.getvalue() == text + "\n" == _predicted(model, params, "abc", decode) + "\n"


def test_decode_config_from_flags():
    parse = gen.make_parser().parse_args
    assert gen.decode_config(parse(["--model_dir", "d", "p"])) == DecodeConfig(
        max_decode_len=64, num_beams=1
    )
    assert gen.decode_config(
        parse(["--model_dir", "d", "--temperature", "0.5", "--top_p", "0.8", "p"])
    ) == DecodeConfig(method="sample", temperature=0.5, top_p=0.8, max_decode_len=64, num_beams=1)
    assert gen.decode_config(parse(["--model_dir", "d", "--num_beams", "4", "p"])).method == "beam"


def test_missing_run_dir_is_a_clear_error(tmp_path, capsys):
    assert gen.main(["--model_dir", str(tmp_path), "--vocabulary", "byte", "x"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/config.gin does not exist" in err and "MODEL_DIR" in err


def test_config_gin_gives_model_lengths_and_task(run):
    model_dir, model, _ = run
    loaded = gen.load_run_model(model_dir)
    gin.clear_config()
    assert loaded.model.config == model.config and type(loaded.model) is type(model)
    assert loaded.feature_lengths == {"inputs": 24, "targets": 8}
    assert (loaded.task, loaded.task_module) == ("tiny_topic", "flan_jax.registry")
    assert json.loads(json.dumps(loaded.feature_lengths))  # plain dict, JSON-able


def test_operative_config_written_by_train_loads(tmp_path):
    """`flan-jax train` rewrites config.gin with the operative config, whose model bindings
    are MODEL/-scoped; generate (and eval, infer) must build the same model from it."""
    gin_flags.parse(
        [
            "--gin_file=test/tiny_t5.gin",
            "--gin_file=runs/finetune.gin",
            "--gin.MODEL_DIR='x'",
            "--gin.MIXTURE_OR_TASK_NAME='tiny_topic'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 8}",
            "--gin.TRAIN_STEPS=3",
            "--gin.INITIAL_CHECKPOINT_PATH=None",
        ],
        "test",
    )
    model = gin_flags.macro_value("MODEL")
    text = gin.operative_config_str()
    gin.clear_config()
    assert "MODEL/network.TransformerConfig.emb_dim = 32" in text
    (tmp_path / "config.gin").write_text(text)
    loaded = gen.load_run_model(str(tmp_path))
    gin.clear_config()
    assert loaded.model.config == model.config and loaded.model.config.emb_dim == 32
