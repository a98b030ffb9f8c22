"""Data pipeline benchmark: throughput of templating + tokenisation + packing, and packing
efficiency (non-pad share of row slots) of seqio's greedy packing vs best fit.

    python -m bench.data_pipeline                       # flan_tiny (+ GLUE/CoT files if found)
    python -m bench.data_pipeline --num_examples 20000 --mixtures flan_tiny
    python -m bench.data_pipeline --enc_dec_lengths 256/64,512/128 --no_full

Packing efficiency depends on the feature lengths as much as on the packer: encoder-decoder
rows are packed jointly, so a `targets` length that truncates long targets also caps how full
the encoder rows can get. Each enc-dec length pair is therefore its own row of the table, with
the share of examples whose inputs / targets it truncates.

Stages, each timed on its own (tf.data uses every core; per-core = total / host cores):
  tokenize  mixture.get_dataset (source, templates, few-shot, tokenisation, mixing), unpacked
  pack      the converter alone on those examples held in memory (greedy vs best fit)
  full      mixture.get_dataset + best-fit converter, end to end
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from bench import common

ENC_DEC_KEYS = ("encoder_input_tokens", "decoder_target_tokens")
DECODER_KEYS = ("decoder_target_tokens",)
FILE_MIXTURE = "bench_glue_cot"
UNCUT_TARGETS = 1 << 14


def _lengths(text: str) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in (p.split("=") for p in text.split(","))}
    except ValueError as e:
        raise SystemExit(f"feature lengths {text!r} must look like inputs=256,targets=64") from e


def register_file_mixture() -> str | None:
    """GLUE (TSV) and CoT (JSONL/TSV) zero-shot variants, equal rates; None without the data."""
    import seqio

    if not os.environ.get("FLAN_JAX_DATA_DIR"):
        return None
    if FILE_MIXTURE not in seqio.MixtureRegistry.names():
        names = [
            n
            for n in seqio.TaskRegistry.names()
            if (n.startswith("glue_") and n.endswith("_zs_opt"))
            or (n.startswith("cot_") and n.endswith("_cot"))
        ]
        if not names:
            return None
        seqio.MixtureRegistry.add(FILE_MIXTURE, [(n, 1.0) for n in sorted(names)])
    return FILE_MIXTURE


def _length_pairs(text: str) -> list[dict[str, int]]:
    """'256/64,512/128' -> [{'inputs': 256, 'targets': 64}, {'inputs': 512, 'targets': 128}]."""
    try:
        pairs = [tuple(int(x) for x in p.split("/")) for p in text.split(",")]
        return [{"inputs": i, "targets": t} for i, t in pairs]
    except ValueError as e:
        raise SystemExit(f"length pairs {text!r} must look like 256/64,512/128") from e


def _examples(name: str, lengths: Mapping[str, int], n: int) -> tuple[list[dict], float, float]:
    """First `n` tokenized examples (unshuffled), seconds to the first one, seconds for all.

    Few-shot formats fit their exemplars to `lengths["inputs"]` and seqio's tasks cut inputs
    there; targets are left whole (the packers below cut them), so truncation can be counted.
    """
    import seqio

    start = time.perf_counter()
    fetch = {"inputs": lengths["inputs"], "targets": UNCUT_TARGETS}
    ds = seqio.get_mixture_or_task(name).get_dataset(fetch, split="train", shuffle=False, seed=0)
    out, first = [], None
    for ex in ds.take(n).as_numpy_iterator():
        first = first or time.perf_counter() - start
        out.append({"inputs": ex["inputs"], "targets": ex["targets"]})
    return out, first or 0.0, time.perf_counter() - start


def _in_memory(examples: list[dict], lengths: Mapping[str, int]):
    import tensorflow as tf

    cols = {
        k: tf.ragged.constant([e[k][: lengths[k]] for e in examples], dtype=tf.int32)
        for k in lengths
    }
    return tf.data.Dataset.from_tensor_slices(cols).map(lambda ex: dict(ex))


def _converter(kind: str, method: str, buffer_size: int):
    import seqio

    from flan_jax.data import packing

    base = seqio.EncDecFeatureConverter if kind == "enc_dec" else seqio.DecoderFeatureConverter
    return packing.make_feature_converter(
        base, pack=True, config=packing.PackingConfig(method=method, buffer_size=buffer_size)
    )


def _pack(examples, lengths, kind: str, method: str, buffer_size: int) -> dict[str, Any]:
    from flan_jax.data import packing

    keys = ENC_DEC_KEYS if kind == "enc_dec" else DECODER_KEYS
    source = _in_memory(examples, lengths)  # built before the clock starts
    start = time.perf_counter()
    rows = list(_converter(kind, method, buffer_size)(source, lengths).as_numpy_iterator())
    seconds = time.perf_counter() - start
    counts = packing.count_tokens(rows, keys)
    record = {
        "kind": kind,
        "feature_lengths": "/".join(str(v) for v in lengths.values()),
        # inputs at the limit were cut there (or fit exactly); targets over it are cut here
        "full_in": float(np.mean([len(e["inputs"]) >= lengths["inputs"] for e in examples])),
        "cut_tgt": float(np.mean([len(e["targets"]) > lengths["targets"] for e in examples])),
        "packer": method,
        "rows": len(rows),
        "ex_per_row": len(examples) / len(rows),
    }
    for k, (tokens, slots) in counts.items():
        record[f"eff_{k.split('_')[0]}"] = tokens / slots
    record["eff_all"] = sum(a for a, _ in counts.values()) / sum(b for _, b in counts.values())
    record["pack_ex_per_s"] = len(examples) / seconds
    return record


def _full_pipeline(name: str, lengths, n: int, buffer_size: int) -> dict[str, float]:
    """End to end with best fit, timed after the first buffer (startup and fill left out)."""
    import seqio

    ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split="train", shuffle=False, seed=0)
    ds = _converter("enc_dec", "best_fit", buffer_size)(ds.take(n), lengths)
    seen, tokens, start = 0, 0, None
    for row in ds.as_numpy_iterator():
        if start is not None:
            tokens += int((row["encoder_input_tokens"] != 0).sum())
            tokens += int((row["decoder_target_tokens"] != 0).sum())
        seen += int(row["encoder_segment_ids"].max())
        if start is None and seen >= buffer_size:
            start, first = time.perf_counter(), seen
    if start is None or seen == first:
        return {}  # fewer examples than one buffer: nothing left to time
    seconds = time.perf_counter() - start
    cores = common.host_cores()
    return {
        "full_ex_per_s_core": (seen - first) / seconds / cores,
        "full_tokens_per_s_core": tokens / seconds / cores,
    }


def bench_mixture(name: str, args) -> list[dict[str, Any]]:
    cores = common.host_cores()
    rows, full = [], {}
    settings = [("enc_dec", lengths) for lengths in args.enc_dec_lengths]
    settings.append(("decoder", args.decoder_feature_lengths))
    for i, (kind, lengths) in enumerate(settings):
        examples, first_s, total_s = _examples(name, lengths, args.num_examples)
        n = len(examples)
        base = {
            "mixture": name,
            "examples": n,
            "mean_inputs": float(np.mean([len(e["inputs"]) for e in examples])),
            "mean_targets": float(np.mean([len(e["targets"]) for e in examples])),
        }
        if i == 0:  # tokenisation throughput, measured once per mixture (first length pair)
            tokens = sum(len(e["inputs"]) + len(e["targets"]) for e in examples)
            steady = max(total_s - first_s, 1e-9)
            base |= {
                "startup_s": first_s,
                "tok_ex_per_s": n / steady,
                "tok_ex_per_s_core": n / steady / cores,
                "tok_tokens_per_s_core": tokens / steady / cores,
            }
            if args.full:
                full = _full_pipeline(name, lengths, n, args.buffer_size)
        for method in ("greedy", "best_fit"):
            record = {**base, **_pack(examples, lengths, kind, method, args.buffer_size)}
            record["pack_ex_per_s_core"] = record["pack_ex_per_s"] / cores
            if i == 0 and method == "best_fit":
                record.update(full)
            rows.append(record)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mixtures", default="flan_tiny,files", help="comma list; 'files' = GLUE+CoT files"
    )
    parser.add_argument("--num_examples", type=int, default=3000)
    parser.add_argument(
        "--enc_dec_lengths",
        type=_length_pairs,
        default=_length_pairs("256/64,256/128,512/128"),
        help="encoder-decoder inputs/targets length pairs, one table row each",
    )
    parser.add_argument(
        "--decoder_feature_lengths", type=_lengths, default=_lengths("inputs=448,targets=64")
    )
    parser.add_argument("--buffer_size", type=int, default=1000)
    parser.add_argument(
        "--no_full", dest="full", action="store_false", help="skip the end-to-end run"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import flan_jax.registry  # noqa: F401 PLC0415 (registers flan_tiny and the file tasks)

    names = []
    for name in args.mixtures.split(","):
        if name == "files":
            name = register_file_mixture()
            if name is None:
                print(
                    "skipping the GLUE/CoT file mixture: set FLAN_JAX_DATA_DIR to the data folder"
                )
                continue
        names.append(name)
    rows = [r for name in names for r in bench_mixture(name, args)]
    print(
        f"\nhost cores: {common.host_cores()}; per core = total / cores; "
        "eff = non-pad share of row slots"
    )
    common.print_table(
        "Packing efficiency (non-pad share) and packing-only throughput",
        rows,
        [
            "mixture",
            "kind",
            "feature_lengths",
            "full_in",
            "cut_tgt",
            "packer",
            "rows",
            "ex_per_row",
            "eff_encoder",
            "eff_decoder",
            "eff_all",
            "pack_ex_per_s_core",
        ],
    )
    pipeline = [r for r in rows if "tok_ex_per_s_core" in r and r["packer"] == "best_fit"]
    common.print_table(
        "Pipeline throughput per host core "
        "(tok: templating + tokenisation + mixing; full: + best-fit packing)",
        pipeline,
        [
            "mixture",
            "examples",
            "mean_inputs",
            "mean_targets",
            "startup_s",
            "tok_ex_per_s_core",
            "tok_tokens_per_s_core",
            "full_ex_per_s_core",
            "full_tokens_per_s_core",
        ],
    )
    path = common.append_result(
        "data_pipeline", {"config": {k: v for k, v in vars(args).items()}, "rows": rows}
    )
    print(f"\nappended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
