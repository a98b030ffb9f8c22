"""The train -> eval -> infer -> generate -> convert journey on one relative MODEL_DIR, and the
demo journey (reduced: 2 steps, one task per group, 2 examples per task), as subprocesses.

The commands come from README.md (tests/journeys_test.py's `readme_command`).
"""

from __future__ import annotations

import ast
import io
import json
import shlex
import shutil

import jax
import numpy as np
import pytest
from journeys_test import (
    REPO,
    RUN,
    SMALL_EVAL,
    SMALL_TRAIN,
    STEPS,
    TMP,
    flan_jax,
    readme_command,
)

pytestmark = pytest.mark.xdist_group("journeys")


@pytest.fixture(scope="module")
def trained_run():
    """The README's first train command, a few steps, into a relative MODEL_DIR."""
    shutil.rmtree(REPO / TMP, ignore_errors=True)
    done = flan_jax(readme_command("flan-jax train --gin_file=experiments/flan_tiny_t5.gin"))
    yield done
    shutil.rmtree(REPO / TMP, ignore_errors=True)


def _records(model_dir: str) -> list[dict]:
    return [json.loads(x) for x in (REPO / model_dir / "metrics.jsonl").read_text().splitlines()]


def _restore(model_dir: str):
    """(model, params, vocabulary, lengths) of the run, in this process (as generate reads it)."""
    from flan_jax.cli import generate
    from flan_jax.evaluation import inference

    run = generate.load_run_model(str(REPO / model_dir))
    vocab = generate.run_vocabulary(run, None)
    params, step = inference.restore_params(run.model, str(REPO / model_dir))
    assert step == STEPS
    return run.model, params, vocab, run.feature_lengths


def test_train_writes_a_relative_model_dir(trained_run):
    assert f"step {STEPS}/{STEPS} loss" in trained_run.stdout
    assert (REPO / RUN / "checkpoints" / str(STEPS)).is_dir()
    assert not list((REPO / RUN / "checkpoints").glob("*tmp*"))
    records = _records(RUN)
    assert {r["kind"] for r in records} == {"train"} and records[-1]["step"] == STEPS
    assert f"MODEL_DIR = '{RUN}'" in (REPO / RUN / "config.gin").read_text()


def test_eval_reads_the_run_and_logs_what_it_prints(trained_run):
    done = flan_jax(readme_command("flan-jax eval --gin_file=runs/eval.gin") + " " + SMALL_EVAL)
    (record,) = [r for r in _records(RUN) if r["kind"] == "infer_eval"]
    assert record["step"] == STEPS
    printed = {}  # task -> {metric: value} from the printed per-task table
    lines = done.stdout.splitlines()
    header = lines[1].split()
    assert header[0] == "task"
    for line in lines[3:]:
        if not line.strip():
            break
        name, *values = line.split()
        printed[name] = {m: float(v) for m, v in zip(header[1:], values) if v != "-"}
    assert list(printed) == ["tiny_topic_zs_opt"]
    logged = {
        (k.split("/")[1], k.split("/")[2]): v for k, v in record.items() if k.startswith("eval/")
    }
    assert logged == pytest.approx(
        {(t, m): v for t, ms in printed.items() for m, v in ms.items()}, abs=0.006
    )
    task = next(iter(printed))
    rows = (REPO / RUN / "eval" / str(STEPS) / f"{task}.jsonl").read_text().splitlines()
    assert len(rows) == 2


def test_infer_uses_the_runs_vocabulary_and_decodes(trained_run):
    """The README's infer on a task, then on a JSONL file (tokenized with the run's byte
    vocabulary, not the T5 default); both equal greedy decodes computed here."""
    import seqio

    from flan_jax.evaluation import infer, inference
    from flan_jax.model.decoding import DecodeConfig

    flan_jax(readme_command("flan-jax infer --gin_file=runs/infer.gin") + " --gin.MAX_DECODE_LEN=8")
    by_task = [json.loads(x) for x in (REPO / RUN / "infer.jsonl").read_text().splitlines()]
    prompts = ["Reverse the word: jax", "Is the sky blue?"]
    lines = "".join(json.dumps({"inputs": p}) + "\n" for p in prompts)
    (REPO / TMP / "prompts.jsonl").write_text(lines)
    flan_jax(
        f"flan-jax infer --gin_file=runs/infer.gin --gin.CHECKPOINT_PATH=\"'{RUN}'\" "
        f"--input_file={TMP}/prompts.jsonl --output_file={TMP}/out.jsonl --gin.MAX_DECODE_LEN=8"
    )
    by_file = [json.loads(x) for x in (REPO / TMP / "out.jsonl").read_text().splitlines()]
    model, params, vocab, lengths = _restore(RUN)
    assert type(vocab).__name__ == "ByteVocabulary"  # flan_tiny's
    decode = DecodeConfig(max_decode_len=8)
    examples = inference.load_examples(
        seqio.get_mixture_or_task("tiny_topic_zs_noopt"), None, lengths, 4
    )
    want = inference.generate(model, params, examples, vocab, lengths, decode, batch_size=8)
    assert [r["prediction"] for r in by_task] == want and len(want) == 4
    assert [r["input"] for r in by_task] == [
        inference.as_text(e["inputs_pretokenized"]) for e in examples
    ]
    rows = [
        {"inputs": infer.encode_text(p, vocab, lengths["inputs"]), "targets": [1]} for p in prompts
    ]
    want = inference.generate(model, params, rows, vocab, lengths, decode, batch_size=8)
    assert [r["prediction"] for r in by_file] == want and [r["input"] for r in by_file] == prompts


def test_generate_is_the_greedy_decode(trained_run):
    from flan_jax.cli import generate
    from flan_jax.model.decoding import DecodeConfig

    command = readme_command("flan-jax generate --model_dir runs/flan_tiny_t5")
    done = flan_jax(command + " --max_decode_len 8")
    model, params, vocab, lengths = _restore(RUN)
    prompt = shlex.split(command)[-1]
    assert prompt == "Reverse the word: jax"
    want = generate.generate_text(
        model, params, prompt, vocab, lengths, DecodeConfig(max_decode_len=8),
        rng=jax.random.fold_in(jax.random.key(0), 0), out=io.StringIO(),
    )  # fmt: skip
    assert done.stdout == want + "\n"
    assert f"checkpoint step {STEPS} of {RUN}" in done.stderr


def test_flan_to_hf_export_matches_the_flan_model(trained_run):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import jax.numpy as jnp

    done = flan_jax(readme_command("flan-jax convert flan-to-hf runs/ft/checkpoints/1000"))
    assert "encoder_decoder -> HF" in done.stdout
    hf_model = transformers.T5ForConditionalGeneration.from_pretrained(
        REPO / TMP / "exported_hf", local_files_only=True
    ).eval()
    model, params, _, _ = _restore(RUN)
    enc = np.array([[5, 6, 7, 8, 9, 1, 0, 0]], np.int32)
    dec_in = np.array([[0, 12, 13, 14, 15, 0]], np.int32)
    dec_tgt = np.array([[12, 13, 14, 15, 1, 0]], np.int32)
    with torch.no_grad():
        want = hf_model(
            input_ids=torch.tensor(enc, dtype=torch.long),
            attention_mask=torch.tensor(enc > 0, dtype=torch.long),
            decoder_input_ids=torch.tensor(dec_in, dtype=torch.long),
            decoder_attention_mask=torch.tensor(dec_tgt > 0, dtype=torch.long),
        ).logits.numpy()
    batch = {
        "encoder_input_tokens": jnp.asarray(enc),
        "decoder_input_tokens": jnp.asarray(dec_in),
        "decoder_target_tokens": jnp.asarray(dec_tgt),
    }
    got = np.asarray(model._logits(params, batch, None))
    real = dec_tgt > 0
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=1e-4)


def test_opt_iml_recipe_trains():
    """The README's OPT-IML command (OPT-shaped decoder, AdamW, opt_iml_tiny_train): AdamW's
    warm-up sets the logged learning rate, and the checkpoint holds Adam's two moments for
    every parameter (Adafactor would hold factored rows and columns)."""
    model_dir = f"{TMP}/opt"
    command = readme_command("flan-jax train --gin_file=experiments/flan_tiny_opt.gin")
    command = command.replace(f"--gin.MODEL_DIR=\"'{RUN}'\"", f"--gin.MODEL_DIR=\"'{model_dir}'\"")
    assert "opt_iml_tiny_train" in command and f"'{model_dir}'" in command
    shutil.rmtree(REPO / model_dir, ignore_errors=True)
    done = flan_jax(command)
    assert f"step {STEPS}/{STEPS} loss" in done.stdout
    (record,) = [r for r in _records(model_dir) if r["kind"] == "train"]
    assert record["learning_rate"] == pytest.approx(1e-3 * STEPS / 20)  # LR x step / WARMUP
    meta = json.loads(
        (REPO / model_dir / "checkpoints" / str(STEPS) / "default" / "_METADATA").read_text()
    )
    paths = [ast.literal_eval(k) for k in meta["tree_metadata"]]  # "('params', ...)"
    params = {p[1:] for p in paths if p[0] == "params"}
    moments = {
        name: {p[4:] for p in paths if p[:2] == ("opt_state", "1") and p[3:4] == (name,)}
        for name in ("mu", "nu")
    }
    assert len(params) > 20 and moments == {"mu": params, "nu": params}
    shutil.rmtree(REPO / model_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- the demo

DEMO = (
    f"flan-jax demo --gin.MODEL_DIR=\"'{TMP}/demo'\" {SMALL_TRAIN} "
    "--gin.demo.DemoConfig.max_examples=2 --gin.demo.DemoConfig.eval_batch_size=2 "
    "--gin.demo.DemoConfig.tasks_per_group=1"
)


def test_demo_trains_then_restores_and_prints_its_json():
    """`make demo` runs `flan-jax demo`: here 2 steps, one task per group, 2 examples, twice."""
    from flan_jax.cli import demo

    shutil.rmtree(REPO / TMP / "demo", ignore_errors=True)
    try:
        first = flan_jax(DEMO)
        results = json.loads((REPO / TMP / "demo" / "demo_results.json").read_text())
        assert results["train_steps"] == STEPS
        assert [r["group"] for r in results["rows"] if r["cluster"] != "-"] == [
            "held-in",
            "unseen instructions",
            "unseen task",
            "held-out (nli)",
        ]
        table = demo.format_rows(results["rows"])
        assert table in first.stdout
        assert f"step {STEPS}/{STEPS} loss" in first.stdout
        second = flan_jax(DEMO)
        assert f"restoring checkpoint step {STEPS}" in second.stdout
        assert f"step {STEPS}/{STEPS} loss" not in second.stdout  # no step was trained again
        again = json.loads((REPO / TMP / "demo" / "demo_results.json").read_text())
        assert again["rows"] == results["rows"] and table in second.stdout
        kinds = {(r["kind"], r["step"]) for r in _records(f"{TMP}/demo")}
        assert {("train", STEPS), ("infer_eval", 0), ("infer_eval", STEPS)} <= kinds
    finally:
        shutil.rmtree(REPO / TMP / "demo", ignore_errors=True)
