"""`flan-jax infer`: JSONL predictions and scores equal predict_batch / score_batch directly."""

import json

import jax
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf
from flax import linen as nn

from flan_jax.checkpoints import manager as checkpoints
from flan_jax.cli import infer as infer_cli
from flan_jax.evaluation import infer, inference
from flan_jax.model import models, network
from flan_jax.model.decoding import DecodeConfig

VOCAB = seqio.ByteVocabulary()
LENGTHS = {"inputs": 16, "targets": 8}
CONFIG = network.TransformerConfig(
    vocab_size=264, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
    num_encoder_layers=1, num_decoder_layers=1,
)  # fmt: skip
MODEL_GIN = """from __gin__ import dynamic_registration
from flan_jax.model import models
from flan_jax.model import network
MODEL = @models.EncoderDecoderModel()
models.EncoderDecoderModel.config = @network.TransformerConfig()
network.TransformerConfig:
  vocab_size = 264
  emb_dim = 32
  num_heads = 2
  head_dim = 16
  mlp_dim = 64
  num_encoder_layers = 1
  num_decoder_layers = 1
"""
ROWS = [{"inputs": "two plus two", "targets": "four"}, {"inputs": "sky?", "targets": "blue"}]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    model = models.EncoderDecoderModel(CONFIG)
    shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)}
    params = jax.jit(lambda r: nn.unbox(model.get_initial_variables(r, shapes)["params"]))(
        jax.random.key(2)
    )
    state = {"step": np.int32(4), "params": params, "opt_state": optax.adafactor(0.1).init(params)}
    ckpt = checkpoints.Checkpointer(
        str(root / "run"), checkpoints.CheckpointConfig(async_save=False)
    )
    ckpt.save(4, state)
    ckpt.close()
    (root / "model.gin").write_text(MODEL_GIN)
    with open(root / "in.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in ROWS))
    return root, model, params


def _batch(text_in, text_out=""):
    enc = np.zeros((1, LENGTHS["inputs"]), np.int32)
    ids = VOCAB.encode(text_in) + [1]
    enc[0, : len(ids)] = ids
    tgt = np.zeros((1, LENGTHS["targets"]), np.int32)
    ids = VOCAB.encode(text_out) + [1] if text_out else []
    tgt[0, : len(ids)] = ids
    dec_in = np.concatenate([np.zeros((1, 1), np.int32), tgt[:, :-1]], 1)
    weights = (tgt > 0).astype(np.int32)
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
            "decoder_target_tokens": tgt, "decoder_loss_weights": weights}  # fmt: skip


def _main(root, *extra):
    return infer_cli.main([
        f"--gin_file={root / 'model.gin'}", "--gin_file=runs/infer.gin",
        f"--gin.CHECKPOINT_PATH='{root / 'run'}'", "--gin.MIXTURE_OR_TASK_MODULE=None",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=8", "--gin.VOCABULARY='byte'",
        "--gin.MAX_DECODE_LEN=6", f"--input_file={root / 'in.jsonl'}",
        "--compilation_cache_dir=none", *extra,  # leave this process's JAX config as it was
    ])  # fmt: skip


def test_predict_mode_writes_greedy_decodes(run, tmp_path):
    root, model, params = run
    out = tmp_path / "pred.jsonl"
    assert _main(root, f"--output_file={out}") == 0
    lines = [json.loads(x) for x in open(out)]
    decode = DecodeConfig(max_decode_len=6)
    want = [
        inference.decode_tokens(
            np.asarray(model.predict_batch(params, _batch(r["inputs"]), decode=decode)[0]), VOCAB
        )
        for r in ROWS
    ]
    assert lines == [
        {"input": r["inputs"], "target": r["targets"], "prediction": w} for r, w in zip(ROWS, want)
    ]


def test_score_mode_writes_target_log_likelihoods_to_stdout(run, capsys):
    root, model, params = run
    assert _main(root, "--mode", "score") == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    score = jax.jit(model.score_batch)
    want = [float(score(params, _batch(r["inputs"], r["targets"]))[0]) for r in ROWS]
    assert [(x["input"], x["target"]) for x in lines] == [(r["inputs"], r["targets"]) for r in ROWS]
    np.testing.assert_allclose([x["score"] for x in lines], want, atol=1e-5)


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"inputs": "ok", "targets": "x"}\n{"input": "typo"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*lacks string field\(s\) \['inputs'\]"):
        infer.read_jsonl_inputs(str(path), need_targets=False)
    path.write_text('{"inputs": "no target"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*\['targets'\]"):
        infer.read_jsonl_inputs(str(path), need_targets=True)


def test_checkpoint_step_of_each_path_kind(run, tmp_path):
    root, _, _ = run
    assert checkpoints.checkpoint_step(str(root / "run")) == 4
    assert checkpoints.checkpoint_step(str(root / "run" / "checkpoints" / "4")) == 4
    assert checkpoints.checkpoint_step(str(root / "run" / "checkpoints" / "4" / "default")) == 4
    assert checkpoints.checkpoint_step("/t5x/checkpoint_1000000") == 1000000
    tf.io.gfile.makedirs(str(tmp_path / "converted" / "default"))
    assert checkpoints.checkpoint_step(str(tmp_path / "converted")) == 0
