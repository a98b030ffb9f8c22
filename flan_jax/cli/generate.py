"""`flan-jax generate --model_dir D "prompt"`: decode from a run's latest checkpoint, streaming.

The model comes from MODEL_DIR/config.gin (written by the trainer); decoding uses the KV
cache through `flan_jax.model.decoding.decode`, and a host callback in the step function hands each
token to the host as soon as it is chosen, so text appears while the model decodes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import jax
import numpy as np
import seqio

from flan_jax.cli import gin_flags
from flan_jax.data import vocab as vocab_lib
from flan_jax.evaluation import infer, inference
from flan_jax.model import decoding
from flan_jax.model.decoding import DecodeConfig

DEFAULT_LENGTHS = {"inputs": 512, "targets": 128}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunModel:
    """What generate reads from MODEL_DIR/config.gin.

    Attributes:
      model: the run's MODEL.
      feature_lengths: TASK_FEATURE_LENGTHS (prompts are trimmed and padded to `inputs`).
      task: MIXTURE_OR_TASK_NAME (its vocabulary tokenizes prompts), or None.
      task_module: MIXTURE_OR_TASK_MODULE that registers the task, or None.
    """

    model: Any
    feature_lengths: dict[str, int]
    task: str | None = None
    task_module: str | None = None


class TokenStream:
    """Writes text as token ids arrive: decodes all ids so far and writes what is new.

    Decoding the whole prefix (not token by token) keeps SentencePiece spaces and multi-byte
    characters right; `finish` writes what the last tokens add and a newline.
    """

    def __init__(self, vocab: seqio.Vocabulary, out: TextIO):
        self.vocab, self.out = vocab, out
        self.ids: list[int] = []
        self.written = ""
        self.calls = 0

    def push(self, tokens: np.ndarray) -> None:
        """Called with the [1] token fed to each decoding step; the first is the start token."""
        self.calls += 1
        if self.calls == 1:
            return
        self.ids.append(int(np.asarray(tokens).reshape(-1)[0]))
        self._write(inference.decode_tokens(np.asarray(self.ids), self.vocab))

    def finish(self, tokens: np.ndarray) -> str:
        """Writes the rest of the final decode [max_decode_len] and a newline; returns the text."""
        text = inference.decode_tokens(tokens, self.vocab)
        self._write(text)
        self.out.write("\n")
        self.out.flush()
        return text

    def _write(self, text: str) -> None:
        if text.startswith(self.written) and len(text) > len(self.written):
            self.out.write(text[len(self.written) :])
            self.out.flush()
            self.written = text


_STREAMS: list[TokenStream] = []  # the stream the running decode's callback writes to


def _emit(tokens: np.ndarray) -> None:
    _STREAMS[-1].push(tokens)


@functools.lru_cache(maxsize=16)
def _streaming_decode(model: Any, decode: DecodeConfig):
    """`decode(params, batch, rng) -> [batch, max_decode_len]`, jitted once per model / config."""

    def run(params, batch, rng):
        # the model's cache setup (a public `decoding_setup` on the model would be cleaner)
        step_fn, cache, first = model._decoding_setup(params, batch, decode.max_decode_len)

        def streaming_step(tokens, cache):
            jax.debug.callback(_emit, tokens, ordered=True)
            return step_fn(tokens, cache)

        tokens, _ = decoding.decode(decode, streaming_step, cache, first, rng)
        return tokens[:, 0]

    return jax.jit(run)


def prompt_batch(
    model: Any, prompt: str, vocab: seqio.Vocabulary, feature_lengths: dict[str, int]
) -> dict[str, np.ndarray]:
    """The model's [1, length] batch for one prompt (trimmed, EOS, padded like seqio)."""
    row = {"inputs": infer.encode_text(prompt, vocab, feature_lengths["inputs"]), "targets": []}
    batch, _ = next(inference.model_batches(model, [row], feature_lengths, 1))
    return batch


def generate_text(
    model: Any,
    params: Any,
    prompt: str,
    vocab: seqio.Vocabulary,
    feature_lengths: dict[str, int],
    decode: DecodeConfig,
    *,
    rng: jax.Array,
    out: TextIO | None = None,
) -> str:
    """Decodes one prompt, writing text to `out` (stdout) as it comes (beam search: at the end)."""
    out = sys.stdout if out is None else out
    batch = prompt_batch(model, prompt, vocab, feature_lengths)
    stream = TokenStream(vocab, out)
    if decode.method == "beam":  # beams reorder as they go: nothing final until the end
        tokens = inference.jitted_predict(model, decode)(params, batch, rng)
        return stream.finish(np.asarray(tokens[0]))
    _STREAMS.append(stream)
    try:
        tokens = _streaming_decode(model, decode)(params, batch, rng)
        jax.effects_barrier()  # every callback has run before the final write
    finally:
        _STREAMS.pop()
    return stream.finish(np.asarray(tokens[0]))


def load_run_model(model_dir: str) -> RunModel:
    """MODEL, TASK_FEATURE_LENGTHS and the task of MODEL_DIR/config.gin (entry points only)."""
    import gin

    path = os.path.join(model_dir, "config.gin")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist; --model_dir must be a `flan-jax train` MODEL_DIR"
        )
    gin.clear_config()
    gin.parse_config_file(path)
    macro = gin_flags.macro_value  # MODEL in its own scope: train's MODEL/-scoped bindings apply
    if macro("MODEL") is None:
        raise ValueError(f"{path} sets no MODEL; --model_dir must be a `flan-jax train` MODEL_DIR")
    return RunModel(
        model=macro("MODEL"),
        feature_lengths=dict(macro("TASK_FEATURE_LENGTHS") or DEFAULT_LENGTHS),
        task=macro("MIXTURE_OR_TASK_NAME"),
        task_module=macro("MIXTURE_OR_TASK_MODULE"),
    )


def run_vocabulary(run: RunModel, name: str | None) -> seqio.Vocabulary:
    """`--vocabulary` if given, else the targets vocabulary of the run's task."""
    if name:
        return vocab_lib.get_vocabulary(name)
    if run.task is None:
        raise ValueError("config.gin names no MIXTURE_OR_TASK_NAME; pass --vocabulary (t5|byte|F)")
    importlib.import_module(run.task_module or "flan_jax.registry")
    return seqio.get_mixture_or_task(run.task).output_features["targets"].vocabulary


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    """Beam search with --num_beams > 1, sampling with --temperature > 0, else greedy."""
    method = "beam" if args.num_beams > 1 else "sample" if args.temperature > 0 else "greedy"
    return DecodeConfig(
        method=method,
        temperature=args.temperature if method == "sample" else 1.0,
        top_k=args.top_k,
        top_p=args.top_p,
        num_beams=max(args.num_beams, 1),
        max_decode_len=args.max_decode_len,
    )


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flan-jax generate", description=__doc__.split("\n")[0])
    p.add_argument("prompts", nargs="+", help="prompts; '-' reads stdin, one prompt per line")
    p.add_argument("--model_dir", required=True, help="a `flan-jax train` MODEL_DIR")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top_k", type=int, default=0, help="sample from the k best (0: all)")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus mass (1: all)")
    p.add_argument("--max_decode_len", type=int, default=64)
    p.add_argument("--num_beams", type=int, default=1, help=">1: beam search (not streamed)")
    gin_flags.add_compilation_cache_flag(p)
    p.add_argument("--vocabulary", default=None, help="t5 | byte | F.model (default: the run's)")
    p.add_argument("--seed", type=int, default=0)
    return p


def read_prompts(prompts: Iterable[str], stdin: TextIO) -> Iterable[str]:
    """The prompts, with '-' replaced by stdin's non-empty lines (read as they come)."""
    for prompt in prompts:
        if prompt == "-":
            yield from (line.rstrip("\n") for line in stdin if line.strip())
        else:
            yield prompt


def main(argv: list[str] | None = None) -> int:
    """`flan-jax generate --model_dir D [options] PROMPT... | -`; returns the exit code."""
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    gin_flags.enable_compilation_cache(args)  # before anything compiles
    try:
        decode = decode_config(args)
        run = load_run_model(args.model_dir)
        vocab = run_vocabulary(run, args.vocabulary)
        if not os.path.isdir(os.path.join(args.model_dir, "checkpoints")):
            raise FileNotFoundError(f"{args.model_dir}/checkpoints does not exist; train first")
        params, step = inference.restore_params(run.model, args.model_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"flan-jax generate: {e}", file=sys.stderr)
        return 2
    print(f"flan-jax generate: checkpoint step {step} of {args.model_dir}", file=sys.stderr)
    rng = jax.random.key(args.seed)
    for i, prompt in enumerate(read_prompts(args.prompts, sys.stdin)):
        generate_text(
            run.model, params, prompt, vocab, run.feature_lengths, decode,
            rng=jax.random.fold_in(rng, i),
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
