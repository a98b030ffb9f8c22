"""Decode tokens/s with the KV cache: greedy and sampling, batch 1 and 32, tiny and small T5
v1.1, next to Hugging Face `generate` (torch CPU) on the same converted model.

    python -m bench.decode            # short run (tiny, 16 tokens)
    python -m bench.decode --sizes tiny small --max_decode_len 64

Each row decodes exactly `max_decode_len` tokens per example (EOS is disabled on both sides),
so tokens/s = batch * max_decode_len / best wall time. Appends a line to results/decode.jsonl.
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import numpy as np

from bench import common
from flan_jax import convert
from flan_jax.convert import hf
from flan_jax.model.decoding import DecodeConfig

SIZES = {  # T5 v1.1 shapes (gin/models/t5_1_1/{tiny,small}.gin)
    "tiny": dict(d_model=128, d_kv=32, num_heads=4, d_ff=512, num_layers=2),
    "small": dict(d_model=512, d_kv=64, num_heads=6, d_ff=1024, num_layers=8),
}
VOCAB = 384
INPUT_LEN = 32
NO_EOS = -1  # an id that is never produced: every row decodes max_decode_len tokens


def build_hf(size: str, root: str):
    """A random HF T5ForConditionalGeneration of `size`, saved and converted to flan_jax."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=VOCAB, **SIZES[size], feed_forward_proj="gated-gelu",
        tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0,
    )  # fmt: skip
    model = transformers.T5ForConditionalGeneration(config).eval()
    model.save_pretrained(root)
    params, architecture, cfg, _ = hf.hf_to_flan(root)
    return model, convert.make_model(architecture, cfg), params


def flan_tokens_per_s(model, params, batch_size, decode, repeats) -> float:
    rng = np.random.default_rng(0)
    enc = rng.integers(3, VOCAB, (batch_size, INPUT_LEN)).astype(np.int32)
    batch = {"encoder_input_tokens": enc}
    predict = jax.jit(lambda p, b, r: model.predict_batch(p, b, r, decode=decode))
    seconds = common.best_time(
        lambda: predict(params, batch, jax.random.key(0)).block_until_ready(), repeats=repeats
    )
    return batch_size * decode.max_decode_len / seconds


def hf_tokens_per_s(model, batch_size, method, max_len, repeats) -> float:
    import torch

    rng = np.random.default_rng(0)
    ids = torch.tensor(rng.integers(3, VOCAB, (batch_size, INPUT_LEN)))
    kw = dict(do_sample=method == "sample", top_k=0) if method == "sample" else {}

    def run():
        with torch.no_grad():
            model.generate(
                ids, max_new_tokens=max_len, min_new_tokens=max_len, use_cache=True,
                eos_token_id=None, pad_token_id=0, num_beams=1, **kw,
            )  # fmt: skip

    return batch_size * max_len / common.best_time(run, repeats=repeats)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny"], choices=sorted(SIZES))
    p.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 32])
    p.add_argument("--max_decode_len", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no_hf", action="store_true", help="skip the transformers column")
    args = p.parse_args(argv)
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as root:
            hf_model, model, params = build_hf(size, root)
        for method in ("greedy", "sample"):
            decode = DecodeConfig(method=method, max_decode_len=args.max_decode_len, eos_id=NO_EOS)
            for b in args.batch_sizes:
                flan = flan_tokens_per_s(model, params, b, decode, args.repeats)
                row = {"model": size, "method": method, "batch": b, "flan_jax tok/s": flan}
                if not args.no_hf:
                    row["hf tok/s"] = hf_tokens_per_s(
                        hf_model, b, method, args.max_decode_len, args.repeats
                    )
                    row["speedup"] = row["flan_jax tok/s"] / row["hf tok/s"]
                rows.append(row)
    common.print_table(f"decode tokens/s ({args.max_decode_len} tokens, input {INPUT_LEN})", rows)
    common.append_result("decode", {"args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
