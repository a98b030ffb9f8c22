"""JSONL inference: predictions or scores, JSONL out, for a task or a JSONL file of
`{"inputs": ...}` lines.

`run_inference` (a gin configurable) is what the entry point flan_jax.cli.infer runs; the
batched core (scoring, rank classification, decoding) is flan_jax.evaluation.inference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import jax
import seqio
import tensorflow as tf
from jax.sharding import Mesh

from flan_jax.data import vocab as vocab_lib
from flan_jax.data.sources import read_jsonl
from flan_jax.evaluation.inference import (
    as_text,
    generate,
    load_examples,
    restore_params,
    score_rows,
)
from flan_jax.model.decoding import DecodeConfig

MODES = ("predict", "score")


@dataclasses.dataclass(frozen=True, kw_only=True)
class InferConfig:
    """How `run_inference` batches, decodes and scores.

    Attributes:
      split: the task split to read (task inputs only; None: the task's own eval split,
        validation, else test).
      batch_size: model batch; must divide by the mesh's data*fsdp.
      max_examples: at most this many examples (None: all).
      length_normalize: `score` mode gives the mean instead of the summed log-likelihood.
      decode: decoding of `predict` mode (greedy by default; the best decode is written).
      seed: seed of the sampling rng.
    """

    split: str | None = None
    batch_size: int = 8
    max_examples: int | None = None
    length_normalize: bool = False
    decode: DecodeConfig = DecodeConfig()
    seed: int = 0

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"InferConfig.batch_size is {self.batch_size}; it must be >= 1")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"InferConfig.max_examples is {self.max_examples}; use None or >= 1")


def encode_text(text: str, vocab: seqio.Vocabulary, length: int) -> list[int]:
    """Token ids of `text` trimmed to `length - 1`, then EOS (seqio's append_eos_after_trim)."""
    return list(vocab.encode(text))[: length - 1] + [vocab.eos_id]


def read_jsonl_inputs(path: str, *, need_targets: bool) -> list[dict[str, str]]:
    """`{"inputs": str[, "targets": str]}` lines of a JSONL file (blank lines skipped).

    Raises:
      ValueError naming the file and line of a line that is not such an object.
    """
    rows = []
    keys = ("inputs", "targets") if need_targets else ("inputs",)
    for number, row in read_jsonl(path, opener=tf.io.gfile.GFile):
        bad = [k for k in keys if not isinstance(row.get(k), str)]
        if bad:
            raise ValueError(
                f"{path}:{number}: {json.dumps(row)[:80]!r} lacks string field(s) {bad}; expected "
                '{"inputs": "...", "targets": "..."} (targets needed by --mode score)'
            )
        rows.append({k: row[k] for k in ("inputs", "targets") if k in row})
    return rows


def _file_rows(path, vocab, feature_lengths, config, mode):
    texts = read_jsonl_inputs(path, need_targets=mode == "score")[: config.max_examples]
    return [
        {
            "inputs": encode_text(t["inputs"], vocab, feature_lengths["inputs"]),
            "targets": encode_text(t["targets"], vocab, feature_lengths["targets"])
            if "targets" in t
            else [vocab.eos_id],
            "input": t["inputs"],
            **({"target": t["targets"]} if "targets" in t else {}),
        }
        for t in texts
    ]


def _task_rows(name, feature_lengths, config):
    task = seqio.get_mixture_or_task(name)
    examples = load_examples(task, config.split, feature_lengths, config.max_examples)
    rows = [
        {
            "inputs": ex["inputs"],
            "targets": ex["targets"],
            "input": as_text(ex["inputs_pretokenized"]),
            "target": as_text(ex["targets_pretokenized"]),
        }
        for ex in examples
    ]
    return rows, task.output_features["targets"].vocabulary


def infer_rows(model, params, rows, vocab, feature_lengths, config, *, mode, mesh=None):
    """Records `{input[, target], prediction | score}` for token rows, in order."""
    if mode == "score":
        values = score_rows(
            model, params, rows, feature_lengths, batch_size=config.batch_size, mesh=mesh,
            length_normalize=config.length_normalize,
        )  # fmt: skip
        outputs = [{"score": float(v)} for v in values]
    else:
        rng = jax.random.key(config.seed)
        texts = generate(
            model, params, rows, vocab, feature_lengths, config.decode,
            batch_size=config.batch_size, mesh=mesh, rng=rng,
        )  # fmt: skip
        outputs = [{"prediction": t} for t in texts]
    keep = ("input", "target")
    return [{**{k: r[k] for k in keep if k in r}, **o} for r, o in zip(rows, outputs)]


def run_inference(
    *,
    model: Any,
    checkpoint_path: str,
    feature_lengths: dict[str, int],
    mixture_or_task_name: str | None = None,
    input_file: str | None = None,
    output_file: str = "-",
    mode: str = "predict",
    config: InferConfig = InferConfig(),
    vocabulary: str | None = None,
    vocabulary_task: str | None = None,
    mesh: Mesh | None = None,
    mixture_or_task_module: str | None = None,
) -> int:
    """Writes one JSON line per example of a task (or of `input_file`) to `output_file`.

    `input_file` is tokenized with `vocabulary` (a `flan_jax.data.vocab` name), else with the
    targets vocabulary of `vocabulary_task` (`flan-jax infer` passes the task the checkpoint's
    run trained on), else with T5's; a task uses its own. Returns the number of lines
    written ("-": stdout).
    """
    if mode not in MODES:
        raise ValueError(f"infer mode {mode!r} is unknown; use one of {MODES}")
    if (mixture_or_task_name is None) == (input_file is None):
        raise ValueError(
            f"give exactly one of MIXTURE_OR_TASK_NAME ({mixture_or_task_name!r}) and "
            f"--input_file ({input_file!r})"
        )
    if mixture_or_task_module:
        importlib.import_module(mixture_or_task_module)
    if input_file is not None:
        vocab = (
            seqio.get_mixture_or_task(vocabulary_task).output_features["targets"].vocabulary
            if vocabulary is None and vocabulary_task
            else vocab_lib.get_vocabulary(vocabulary or "t5")  # T5's for converted checkpoints
        )
        rows = _file_rows(input_file, vocab, feature_lengths, config, mode)
    else:
        rows, vocab = _task_rows(mixture_or_task_name, feature_lengths, config)
    params, _ = restore_params(model, checkpoint_path, mesh)
    records = infer_rows(model, params, rows, vocab, feature_lengths, config, mode=mode, mesh=mesh)
    with _open_output(output_file) as out:
        out.write("".join(json.dumps(r) + "\n" for r in records))
    return len(records)


@contextlib.contextmanager
def _open_output(path: str) -> Iterator[TextIO]:
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    if os.path.dirname(path):
        tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        yield f
