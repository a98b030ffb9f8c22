"""Evaluation with a tiny random T5: rank classification, generation, outputs, mesh parity."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf
from flax import linen as nn

from flan_jax.cli import evaluate as evaluate_cli
from flan_jax.evaluation import evaluate, inference
from flan_jax.model import models, network
from flan_jax.model.decoding import DecodeConfig
from flan_jax.partitioning import make_mesh

VOCAB = seqio.ByteVocabulary()
LENGTHS = {"inputs": 24, "targets": 8}
CONFIG = network.TransformerConfig(
    vocab_size=264,
    emb_dim=32,
    num_heads=2,
    head_dim=16,
    mlp_dim=64,
    num_encoder_layers=1,
    num_decoder_layers=1,
)
DECODE = DecodeConfig(max_decode_len=4)  # one decode config: one compile shared by the tests
OPTIONS = ["yes", "no", "maybe"]
QUESTIONS = [f"is {i} even?" for i in range(11)]


def _rows(split, shuffle_files=False, seed=None, options=True):
    cols = {
        "inputs": QUESTIONS,
        "targets": [OPTIONS[i % 3] for i in range(len(QUESTIONS))],
        "_cluster": ["toy"] * len(QUESTIONS),
    }
    if options:
        cols["options"] = [OPTIONS] * len(QUESTIONS)
    return tf.data.Dataset.from_tensor_slices(cols)


def _register(name, options):
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files=False, seed=None: _rows(split, options=options),
            splits=["validation"],
        ),
        output_features={k: seqio.Feature(VOCAB, add_eos=True) for k in ("inputs", "targets")},
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        metric_fns=[evaluate.metrics_lib.accuracy],
    )


@pytest.fixture(scope="module")
def tiny():
    _register("eval_test_cls", options=True)
    _register("eval_test_gen", options=False)
    if "eval_test_mix" in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove("eval_test_mix")
    seqio.MixtureRegistry.add("eval_test_mix", ["eval_test_cls", "eval_test_gen"], default_rate=1.0)
    model = models.EncoderDecoderModel(CONFIG)
    shapes = {"encoder_input_tokens": (1, 24), "decoder_input_tokens": (1, 8)}
    params = jax.jit(lambda r: nn.unbox(model.get_initial_variables(r, shapes)["params"]))(
        jax.random.key(3)
    )
    return model, params


def _direct_score(model, params, inputs, target):
    """Log-likelihood of `target` given `inputs`, one unpadded example, no feature converter."""
    enc = np.array([VOCAB.encode(inputs) + [1]], np.int32)
    tgt = np.array([VOCAB.encode(target) + [1]], np.int32)
    dec_in = np.concatenate([np.zeros((1, 1), np.int32), tgt[:, :-1]], axis=1)
    return float(_forward(model, params, enc, dec_in, tgt))


@jax.jit(static_argnums=0)
def _forward(model, params, enc, dec_in, tgt):
    logits = model.module.apply({"params": params}, enc, dec_in, tgt, enable_dropout=False)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return jnp.take_along_axis(logp, tgt[..., None], axis=-1).sum()


def test_rank_classification_scores_every_option_like_a_direct_forward_pass(tiny):
    model, params = tiny
    cfg = evaluate.EvalConfig(batch_size=8)
    result = evaluate.evaluate_task(
        model, params, "eval_test_cls", split="validation", feature_lengths=LENGTHS, config=cfg
    )
    assert len(result.records) == 11
    for q, record in zip(QUESTIONS[:4], result.records):  # 4 same-length inputs: 3 compiles
        want = [_direct_score(model, params, q, o) for o in OPTIONS]
        np.testing.assert_allclose(record["option_scores"], want, atol=1e-4)
        assert record["prediction"] == OPTIONS[int(np.argmax(want))]
        assert record["input"] == q and record["score"] == max(record["option_scores"])
    hits = sum(r["prediction"] == r["target"] for r in result.records)
    assert result.metrics == {"accuracy": pytest.approx(100.0 * hits / 11)}
    assert result.cluster == "toy"
    normed = evaluate.EvalConfig(batch_size=8, length_normalize=True, max_examples=3)
    norm = evaluate.evaluate_task(
        model, params, "eval_test_cls", split="validation", feature_lengths=LENGTHS, config=normed
    )
    for raw, record in zip(result.records, norm.records):
        lengths = [len(o) + 1 for o in OPTIONS]  # bytes + EOS
        np.testing.assert_allclose(
            record["option_scores"], np.divide(raw["option_scores"], lengths), rtol=1e-5
        )


def test_generation_decodes_greedily_and_scores_the_gold_target(tiny):
    model, params = tiny
    cfg = evaluate.EvalConfig(batch_size=8, max_examples=5, decode=DECODE)
    result = evaluate.evaluate_task(
        model, params, "eval_test_gen", split="validation", feature_lengths=LENGTHS, config=cfg
    )
    for q, record in zip(QUESTIONS, result.records):
        enc = np.zeros((1, 24), np.int32)
        ids = VOCAB.encode(q) + [1]
        enc[0, : len(ids)] = ids
        batch = {
            "encoder_input_tokens": enc,
            "decoder_input_tokens": np.zeros((1, 8), np.int32),
            "decoder_target_tokens": np.zeros((1, 8), np.int32),
        }
        tokens = inference.jitted_predict(model, DECODE)(params, batch, None)
        assert record["prediction"] == inference.decode_tokens(np.asarray(tokens[0]), VOCAB)
        np.testing.assert_allclose(
            record["score"], _direct_score(model, params, q, record["target"]), atol=1e-4
        )
    hits = sum(r["answer"] == r["target"] for r in result.records)
    assert result.metrics["accuracy"] == pytest.approx(100.0 * hits / 5)


def test_self_consistency_majority_votes_sampled_answers(tiny):
    model, params = tiny
    cfg = evaluate.EvalConfig(batch_size=8, max_examples=4, num_samples=3, decode=DECODE)
    result = evaluate.evaluate_task(
        model, params, "eval_test_gen", split="validation", feature_lengths=LENGTHS, config=cfg
    )
    for record in result.records:
        assert (
            len(record["samples"]) == 3 and record["answers"] == record["samples"]
        )  # no postprocessor
        counts = {a: record["answers"].count(a) for a in record["answers"]}
        assert counts[record["answer"]] == max(counts.values())
    assert any(len(set(r["samples"])) > 1 for r in result.records)  # really sampled


def _inverted_rows(split, shuffle_files=False, seed=None):
    """8 examples; 3 and 7 are inverted (no options), 5 and 6 offer only a wrong option."""
    targets = ["yes", "no", "yes", "nope!", "no", "yes", "no", "nope!"]
    options = [["yes"], ["no"], ["yes"], [], ["no"], ["no"], ["yes"], []]
    return tf.data.Dataset.from_tensor_slices(
        {
            "inputs": QUESTIONS[:8],
            "targets": targets,
            "options": tf.ragged.constant(options, dtype=tf.string),
            "_cluster": ["toy"] * 8,
        }
    )


def test_examples_without_options_are_generated_and_reported_apart(tiny):
    model, params = tiny
    name = "eval_test_inverted"
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_inverted_rows, splits=["validation"]),
        output_features={k: seqio.Feature(VOCAB, add_eos=True) for k in ("inputs", "targets")},
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        metric_fns=[evaluate.metrics_lib.accuracy],
    )
    cfg = evaluate.EvalConfig(batch_size=8, decode=DECODE)
    result = evaluate.evaluate_task(
        model, params, name, split="validation", feature_lengths=LENGTHS, config=cfg
    )
    modes = [r["mode"] for r in result.records]
    assert modes == ["rank_classification"] * 3 + ["generation"] + ["rank_classification"] * 3 + [
        "generation"
    ]
    # 4 of the 6 ranked examples offer only their target; decodes of 4 bytes never equal "nope!"
    assert result.metrics == {"accuracy": pytest.approx(400 / 6), "generated_accuracy": 0.0}
    assert [r["prediction"] for r in result.records if r["mode"] != "generation"] == [
        "yes", "no", "yes", "no", "no", "yes"
    ]  # fmt: skip
    inverted = result.records[3]
    assert inverted["target"] == "nope!" and len(inverted["prediction"]) <= 4
    np.testing.assert_allclose(
        inverted["score"], _direct_score(model, params, QUESTIONS[3], "nope!"), atol=1e-4
    )
    examples = inference.load_examples(seqio.get_mixture_or_task(name), "validation", LENGTHS, 4)
    with pytest.raises(ValueError, match="example 3 has an empty `options` list"):
        inference.rank_classify(model, params, examples, VOCAB, LENGTHS, batch_size=8)


def test_mixture_on_8_devices_scores_like_1_device(tiny):
    model, params = tiny
    kwargs = dict(
        split="validation",
        feature_lengths=LENGTHS,
        config=evaluate.EvalConfig(batch_size=8, max_examples=9, decode=DECODE),
    )
    one = evaluate.run_evaluation(model, params, ["eval_test_mix"], **kwargs)
    mesh = make_mesh((4, 2, 1))
    eight = evaluate.run_evaluation(model, params, ["eval_test_mix"], mesh=mesh, **kwargs)
    assert list(one) == list(eight) == ["eval_test_cls", "eval_test_gen"]
    for name in one:
        for a, b in zip(one[name].records, eight[name].records):
            assert a["prediction"] == b["prediction"]
            np.testing.assert_allclose(
                a.get("option_scores", a["score"]), b.get("option_scores", b["score"]), atol=1e-5
            )
    with pytest.raises(ValueError, match=r"batch_size \(6\) must be divisible by data\*fsdp \(8\)"):
        evaluate.run_evaluation(
            model,
            params,
            ["eval_test_cls"],
            mesh=mesh,
            split="validation",
            feature_lengths=LENGTHS,
            config=evaluate.EvalConfig(batch_size=6),
        )


def test_write_results_files_metrics_jsonl_and_tensorboard(tiny, tmp_path):
    model, params = tiny
    cfg = evaluate.EvalConfig(batch_size=8, max_examples=3, decode=DECODE)
    results = evaluate.run_evaluation(
        model, params, ["eval_test_mix"], split="validation", feature_lengths=LENGTHS, config=cfg
    )
    scalars = evaluate.write_results(str(tmp_path), 7, results)
    rows = [json.loads(line) for line in open(tmp_path / "eval" / "7" / "eval_test_cls.jsonl")]
    assert [r["input"] for r in rows] == QUESTIONS[:3] and {"target", "prediction", "score"} <= set(
        rows[0]
    )
    line = json.loads(open(tmp_path / "metrics.jsonl").read())
    acc = [results[n].metrics["accuracy"] for n in ("eval_test_cls", "eval_test_gen")]
    assert line == {"kind": "infer_eval", "step": 7, "time": pytest.approx(line["time"]), **scalars}
    assert scalars["eval_cluster/toy/accuracy"] == pytest.approx(sum(acc) / 2)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "eval"))


def test_format_table_aligns_metrics():
    table = evaluate.format_table(
        {"nli": {"accuracy": 50.0}, "qa": {"accuracy": 7.125, "f1": 12.0}}, first_column="held out"
    )
    assert table == (
        "held out  accuracy     f1\n"
        "--------  --------  -----\n"
        "nli          50.00      -\n"
        "qa            7.12  12.00"
    )


# ----------------------------------------------------------------------------- flan-jax eval

EVAL_LENGTHS = {"inputs": 48, "targets": 32}  # every option fits untrimmed


def _save_run_checkpoint(model_dir, params, step):
    """A checkpoint saved the way the trainer saves it: {step, params, opt_state} via orbax."""
    from flan_jax.checkpoints import manager as checkpoints

    state = {
        "step": np.int32(step),
        "params": params,
        "opt_state": optax.adafactor(0.1).init(params),
    }
    ckpt = checkpoints.Checkpointer(model_dir, checkpoints.CheckpointConfig(async_save=False))
    ckpt.save(step, state)
    ckpt.close()


def _score_batch(model, params, inputs_ids, target_ids):
    """model.score_batch on a hand-built [1, length] batch (no feature converter)."""
    enc = np.zeros((1, EVAL_LENGTHS["inputs"]), np.int32)
    enc[0, : len(inputs_ids)] = inputs_ids
    tgt = np.zeros((1, EVAL_LENGTHS["targets"]), np.int32)
    tgt[0, : len(target_ids)] = target_ids
    batch = {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": np.concatenate([np.zeros((1, 1), np.int32), tgt[:, :-1]], 1),
        "decoder_target_tokens": tgt,
        "decoder_loss_weights": (tgt > 0).astype(np.int32),
    }
    return float(jax.jit(model.score_batch)(params, batch)[0])


def test_main_evaluates_a_trainer_checkpoint_and_writes_every_output(tmp_path, capsys):
    from flan_jax import specs
    from flan_jax.data import tasks

    spec = tasks.load_task_spec(specs.spec_dir("tasks") / "flan_tiny" / "height_nli.yaml")
    tasks.register_task_spec(spec)
    model = models.EncoderDecoderModel(CONFIG)
    shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)}
    params = jax.jit(lambda r: nn.unbox(model.get_initial_variables(r, shapes)["params"]))(
        jax.random.key(5)
    )
    _save_run_checkpoint(str(tmp_path / "run"), params, step=12)
    (tmp_path / "model.gin").write_text(
        "from __gin__ import dynamic_registration\n"
        "from flan_jax.model import models\nfrom flan_jax.model import network\n"
        "MODEL = @models.EncoderDecoderModel()\nmodels.EncoderDecoderModel.config = "
        "@network.TransformerConfig()\nnetwork.TransformerConfig:\n"
        + "".join(
            f"  {k} = {getattr(CONFIG, k)!r}\n"
            for k in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim")
        )
        + "  num_encoder_layers = 1\n  num_decoder_layers = 1\n"
    )
    out = str(tmp_path / "out")
    assert evaluate_cli.main([
        f"--gin_file={tmp_path / 'model.gin'}", "--gin_file=runs/eval.gin",
        "--compilation_cache_dir=none",  # leave this process's JAX config as it was
        f"--gin.CHECKPOINT_PATH='{tmp_path / 'run'}'", f"--gin.MODEL_DIR='{out}'",
        "--gin.MIXTURE_OR_TASK_NAME='tiny_height_nli_zs_opt'", "--gin.MIXTURE_OR_TASK_MODULE=None",
        f"--gin.TASK_FEATURE_LENGTHS={EVAL_LENGTHS}", "--gin.BATCH_SIZE=8", "--gin.MAX_EXAMPLES=3",
    ]) == 0  # fmt: skip
    rows = [json.loads(x) for x in open(f"{out}/eval/12/tiny_height_nli_zs_opt.jsonl")]
    task = seqio.get_mixture_or_task("tiny_height_nli_zs_opt")
    examples = inference.load_examples(task, "validation", EVAL_LENGTHS, 3)
    assert [r["input"] for r in rows] == [ex["inputs_pretokenized"].decode() for ex in examples]
    options = ["yes", "it is not possible to tell", "no"]
    for row, ex in zip(rows, examples):
        want = [_score_batch(model, params, ex["inputs"], VOCAB.encode(o) + [1]) for o in options]
        np.testing.assert_allclose(row["option_scores"], want, atol=1e-4)
        assert row["prediction"] == options[int(np.argmax(want))] and row["score"] == max(
            row["option_scores"]
        )
    accuracy = 100.0 * sum(r["prediction"] == r["target"] for r in rows) / 3
    line = json.loads(open(f"{out}/metrics.jsonl").read())
    assert line == {
        "kind": "infer_eval",
        "step": 12,
        "time": line["time"],
        "eval/tiny_height_nli_zs_opt/accuracy": pytest.approx(accuracy),
        "eval_cluster/nli/accuracy": pytest.approx(accuracy),
    }
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(f"{out}/eval"))
    printed = capsys.readouterr().out
    assert "tiny_height_nli_zs_opt" in printed and f"{accuracy:.2f}" in printed


def test_main_names_missing_required_macros():
    with pytest.raises(ValueError, match=r"CHECKPOINT_PATH.*not set"):
        evaluate_cli.main(["--gin_file=test/tiny_t5.gin", "--gin_file=runs/eval.gin"])


# ----------------------------------------------------------------------------- HF parity


def test_rank_classification_matches_transformers_log_likelihoods(tiny, tmp_path):
    torch = pytest.importorskip("torch", reason="needs the `hf` extra (torch)")
    transformers = pytest.importorskip("transformers", reason="needs the `hf` extra")
    from flan_jax import convert
    from flan_jax.convert import hf

    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=264, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
        decoder_start_token_id=0,
    )  # fmt: skip
    hf_model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():  # sharper logits than HF's init, and its own head
        for name, p in hf_model.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in name else p.mul_(2.0)
        hf_model.lm_head.weight = torch.nn.Parameter(torch.randn(264, 32) * 0.5)
    hf_model.save_pretrained(tmp_path / "hf")
    params, architecture, cfg, _ = hf.hf_to_flan(str(tmp_path / "hf"))
    convert.save_converted(str(tmp_path / "flan"), params, architecture, cfg)
    model = convert.make_model(architecture, cfg)
    restored, step = inference.restore_params(model, str(tmp_path / "flan"))
    assert step == 0
    result = evaluate.evaluate_task(
        model, restored, "eval_test_cls", split="validation", feature_lengths=LENGTHS,
        config=evaluate.EvalConfig(batch_size=8, max_examples=6),
    )  # fmt: skip
    chosen = []
    for q, record in zip(QUESTIONS, result.records):
        want = []
        for option in OPTIONS:
            labels = torch.tensor([VOCAB.encode(option) + [1]])
            with torch.no_grad():
                logits = hf_model(
                    input_ids=torch.tensor([VOCAB.encode(q) + [1]]), labels=labels
                ).logits
            logp = torch.log_softmax(logits.double(), -1).gather(-1, labels[..., None])
            want.append(float(logp.sum()))
        np.testing.assert_allclose(record["option_scores"], want, atol=1e-4)
        chosen.append(OPTIONS[int(np.argmax(want))])
    assert [r["prediction"] for r in result.records] == chosen


def test_each_task_is_evaluated_on_its_own_split_unless_one_is_named():
    """EVAL_SPLIT None: validation where a task has it, else test (MMLU, BBH, GSM8K); a named
    split the task lacks is an error naming the splits it has (BBH used to run on test)."""
    from flan_jax.evaluation import benchmarks

    benchmarks.register(vocabulary=VOCAB)
    mmlu = seqio.get_mixture_or_task("mmlu_anatomy_0shot")
    bbh = seqio.get_mixture_or_task("bbh_navigate_direct")
    _register("eval_test_split", options=True)
    flan = seqio.get_mixture_or_task("eval_test_split")
    assert [inference.task_split(t, None) for t in (mmlu, bbh, flan)] == [
        "test",
        "test",
        "validation",
    ]
    assert inference.task_split(mmlu, "test") == "test"
    with pytest.raises(
        ValueError, match=r"'bbh_navigate_direct' has no split 'validation'; it has \['test'\]"
    ):
        inference.task_split(bbh, "validation")
    with pytest.raises(ValueError, match="has no split 'train'"):
        inference.load_examples(flan, "train", {"inputs": 8, "targets": 4}, 1)
