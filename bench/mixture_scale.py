"""Mixture scale benchmark: registration time, time to first batch, steady examples/s and peak
memory against the number of tasks in a mixture (issue 19 item 2).

    python -m bench.mixture_scale                          # 10,100,500,2000 tasks, all modes
    python -m bench.mixture_scale --quick                  # 10,100 tasks, fewer batches
    python -m bench.mixture_scale --sizes 10,100 --modes inproc
    python -m bench.mixture_scale --mixture flan2022_t0 --modes inproc,seqio   # real data

Each (mode, size) runs in a fresh subprocess, so its peak RSS is its own. The synthetic tasks
are templated classification tasks written as YAML specs + JSONL files to a temp folder and
registered through `flan_jax.registry.register_dir` (the path a user's folder takes); each spec
has two formats (zs_opt, fs_opt), so N tasks are N/2 specs. The mixture over them is
examples-proportional with a cap, and the batches come from the trainer's own
`input_pipeline.get_train_dataset` (seqio mixture -> best-fit packing -> batches).

Modes:
  inproc  templating + few-shot + tokenisation in process, mixed in one pipeline
          (`DataConfig.mixing='one_pipeline'`, what 'auto' picks from 100 tasks:
          `flan_jax.data.cached_mixture.get_in_process_dataset`)
  seqio   the same in process, mixed by seqio's `Mixture.get_dataset` (a pipeline per task;
          what 'auto' picks below 100 tasks)
  cached  the same tasks cached once in `flan-jax cache`'s layout (`write_cache`, outside the
          clock and without Beam) and read by the trainer's USE_CACHED path: the cache checks
          (fingerprints), `flan_jax.data.cached_mixture`'s one pipeline for the mixture, and
          packing

Columns: register_s (task + mixture registration), build_s (seqio mixture + converter + batch
dataset and its iterator), first_batch_s (build + the first batch), ex_per_s (steady, over
--batches batches after the first), ex_per_s_core (that / host cores); *_cpu_s / ex_per_cpu_s:
the same in CPU seconds of the process (all its threads: steadier than wall time on a shared
machine); rss_peak_mib (peak RSS, VmHWM), rss_mib (that minus the RSS after imports, before
registration), rss_reg_mib (RSS added by registration).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import common

BENCH_DIR = pathlib.Path(__file__).resolve().parent
DEFAULT_SIZES = (10, 100, 500, 2000)
QUICK_SIZES = (10, 100)
MODES = ("inproc", "seqio", "cached")
MIXING = {"inproc": "one_pipeline", "seqio": "seqio", "cached": "one_pipeline"}
FORMATS = ("zs_opt", "fs_opt")
TRAIN_SIZES = (60, 120, 240, 480)  # per spec, cycled; the cap below cuts the largest
CAP = 300
LENGTHS = {"inputs": 256, "targets": 64}
BATCH_SIZE = 16
OPTIONS = ("yes", "no", "maybe")
WORDS = (
    "cat dog tree house river apple chair light music paper stone green happy quick table "
    "garden window bread cloud storm silver orange candle pencil rocket forest island winter"
).split()
MIXTURE = "scale_mix"


def _peak_rss_mib() -> float:
    """Peak resident set size of this process (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_specs(root: pathlib.Path, num_tasks: int, vocabulary: str) -> list[str]:
    """N/2 task specs (YAML + JSONL train/validation files) and one mixture spec under `root`.

    Spec i has its own three templates and `TRAIN_SIZES[i % 4]` train examples (sentences of
    seeded random words, answer one of OPTIONS); returns the spec names.
    """
    if num_tasks % len(FORMATS):
        raise SystemExit(f"--sizes must be multiples of {len(FORMATS)} (formats {FORMATS})")
    names = []
    for i in range(num_tasks // len(FORMATS)):
        name = f"scale_task_{i:05d}"
        rng = random.Random(i)
        for split, n in (("train", TRAIN_SIZES[i % len(TRAIN_SIZES)]), ("validation", 20)):
            with open(root / f"{name}.{split}.jsonl", "w") as f:
                for _ in range(n):
                    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
                    f.write(json.dumps({"text": text, "label": rng.choice(OPTIONS)}) + "\n")
        spec = {
            "name": name,
            "cluster": f"cluster_{i % 20}",
            "source": {
                "type": "jsonl",
                "splits": {s: f"{name}.{s}.jsonl" for s in ("train", "validation")},
            },
            "fields": {"text": "text", "answer": "label"},
            "options": list(OPTIONS),
            "templates": [
                {
                    "inputs": f"Task {i}: {{text}}\n\nIs it true?\n\n{{options_}}",
                    "targets": "{answer}",
                },
                {
                    "inputs": f"{{text}}\nQuestion {i}: does this hold?\n{{options_}}",
                    "targets": "{answer}",
                },
                {"inputs": f"Read ({i}): {{text}}\n{{options_}}", "targets": "{answer}"},
            ],
            "formats": list(FORMATS),
            "vocabulary": vocabulary,
        }
        (root / f"{name}.yaml").write_text(json.dumps(spec))  # JSON is YAML
        names.append(name)
    mixture = {"name": MIXTURE, "members": names, "cap": CAP}
    (root / f"{MIXTURE}.yaml").write_text(json.dumps(mixture))
    return names


# --- cached mode: the trainer's USE_CACHED path over caches in `flan-jax cache`'s layout -------


def write_cache(task_names: list[str], cache_dir: pathlib.Path) -> dict[str, int]:
    """Caches each registered task's train split as `flan-jax cache` does (seqio's layout: one
    TFRecord file, info and stats json, the flan_jax fingerprint, COMPLETED) without Beam, whose
    DirectRunner would take ~30 minutes for 2,000 tasks; returns task -> examples."""
    import numpy as np
    import seqio
    import tensorflow as tf

    from flan_jax.data import cache, cache_pipeline

    counts = {}
    for name in task_names:
        task = seqio.get_mixture_or_task(name)
        task_dir = cache.task_cache_dir(str(cache_dir), name)
        tf.io.gfile.makedirs(task_dir)
        ds = task.preprocess_precache(task.source.get_dataset(split="train", shuffle=False))
        prefix = seqio.get_cached_tfrecord_prefix(task_dir, "train")
        stats, info = {"examples": 0}, None
        with tf.io.TFRecordWriter(cache_pipeline.shard_path(prefix, 0, 1)) as writer:
            for ex in ds.as_numpy_iterator():
                ex = {k: np.asarray(v) for k, v in ex.items()}
                writer.write(seqio.dict_to_tfexample(ex).SerializeToString())
                stats = cache_pipeline.merge_stats(
                    stats, cache_pipeline.token_stats(ex, task.output_features)
                )
                info = info or cache_pipeline.feature_info(ex)
        record = {"num_shards": 1, "features": info, "seqio_version": seqio.__version__}
        pathlib.Path(seqio.get_cached_info_path(task_dir, "train")).write_text(json.dumps(record))
        pathlib.Path(seqio.get_cached_stats_path(task_dir, "train")).write_text(json.dumps(stats))
        cache.write_fingerprint(task_dir, task)
        pathlib.Path(task_dir, "COMPLETED").write_text("")
        counts[name] = stats["examples"]
    return counts


# --- one (mode, size) in this process ----------------------------------------------------------


def _examples_in(batch) -> int:
    """Examples packed into a batch: the highest segment id of each row, summed."""
    return int(batch["decoder_segment_ids"].max(axis=1).sum())


def _prepare_cache(root: pathlib.Path) -> None:
    """Registers the tasks under `root` and writes their cache (a separate process, so the
    measured one holds none of the in-process pipelines' memory)."""
    import flan_jax.registry as registry

    task_names, _ = registry.register_dir(root / "specs")
    write_cache(task_names, root / "cache")


def run_one(
    mode: str, root: pathlib.Path | None, batches: int, vocabulary: str, mixture: str | None = None
) -> dict[str, Any]:
    """Registers the mixture (the synthetic one under `root`, or names a shipped `mixture`),
    builds the trainer's pipeline and times its batches."""
    import seqio

    import flan_jax.registry as registry
    from flan_jax.data import packing
    from flan_jax.training import input_pipeline

    record: dict[str, Any] = {"mode": mode, "vocabulary": "the specs'" if mixture else vocabulary}
    rss_base = _rss_mib()
    start = time.perf_counter()
    name = mixture or registry.register_dir(root / "specs")[1][0]
    record["register_s"] = time.perf_counter() - start
    record["rss_reg_mib"] = _rss_mib() - rss_base
    config = input_pipeline.DataConfig(
        mixture_or_task_name=name,
        task_feature_lengths=LENGTHS,
        batch_size=BATCH_SIZE,
        use_cached=mode == "cached",
        cache_dir=str(root / "cache") if mode == "cached" else None,
        mixing=MIXING[mode],
    )
    converter = input_pipeline.make_converter(seqio.EncDecFeatureConverter, config)
    start, cpu = time.perf_counter(), time.process_time()
    it = iter(input_pipeline.get_train_dataset(config, converter))
    record["build_s"] = time.perf_counter() - start
    record["build_cpu_s"] = time.process_time() - cpu
    first = next(it)
    record["first_batch_s"] = time.perf_counter() - start
    record["first_batch_cpu_s"] = time.process_time() - cpu
    examples, start, cpu = 0, time.perf_counter(), time.process_time()
    for _ in range(batches):
        examples += _examples_in({k: v.numpy() for k, v in next(it).items()})
    seconds = time.perf_counter() - start
    record["ex_per_cpu_s"] = examples / (time.process_time() - cpu)
    return record | {
        "tasks": len(seqio.get_mixture_or_task(name).tasks),
        "ex_per_batch": _examples_in({k: v.numpy() for k, v in first.items()}),
        "ex_per_s": examples / seconds,
        "ex_per_s_core": examples / seconds / common.host_cores(),
        "rss_mib": _peak_rss_mib() - rss_base,
        "rss_peak_mib": _peak_rss_mib(),
        "packing": packing.PackingConfig().method,
    }


def _resolve_vocabulary(name: str) -> str:
    from flan_jax.data import vocab

    if name != "auto":
        return name
    return "t5" if os.path.isfile(vocab.t5_vocab_path()) else "byte"


def _child(args) -> int:
    root = pathlib.Path(args.root) if args.root else None
    if args.prepare_cache:
        _prepare_cache(root)
        return 0
    record = run_one(args.mode, root, args.batches, args.vocabulary, args.mixture)
    print("RESULT " + json.dumps(record), flush=True)
    return 0


def _run_child(args, *flags: str) -> str | None:
    cmd = [sys.executable, "-m", "bench.mixture_scale", "--child", *flags]
    cmd += ["--batches", str(args.batches), "--vocabulary", args.vocabulary]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=BENCH_DIR.parent, check=False)
    if proc.returncode:
        print(f"{flags}: exit {proc.returncode}\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return proc.stdout


def _child_record(args, *flags: str) -> dict[str, Any] | None:
    """The record a child run printed (its last RESULT line) plus its wall time; None if it
    failed or printed none."""
    start = time.perf_counter()
    out = _run_child(args, *flags)
    lines = [x for x in (out or "").splitlines() if x.startswith("RESULT ")]
    if not lines:
        return None
    return json.loads(lines[-1][len("RESULT ") :]) | {"wall_s": time.perf_counter() - start}


def bench_size(size: int, modes: list[str], args) -> list[dict[str, Any]]:
    """Each mode at one size, each measured in a fresh process over the same spec folder."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="mixture_scale_") as tmp:
        root = pathlib.Path(tmp)
        (root / "specs").mkdir()
        write_specs(root / "specs", size, args.vocabulary)
        for mode in modes:
            if mode == "cached":
                start = time.perf_counter()
                if _run_child(args, "--root", tmp, "--prepare_cache") is None:
                    continue
                cache_s = time.perf_counter() - start
            record = _child_record(args, "--root", tmp, "--mode", mode)
            if record is None:
                continue
            if mode == "cached":
                record["cache_write_s"] = cache_s
            print(f"{mode} {size}: {json.dumps(record)}", flush=True)
            rows.append(record)
    return rows


def bench_mixture(name: str, modes: list[str], args) -> list[dict[str, Any]]:
    """A registered (shipped) mixture in each in-process mode, each in a fresh process."""
    rows = []
    for mode in modes:
        record = _child_record(args, "--mixture", name, "--mode", mode)
        if record is not None:
            record["mixture"] = name
            print(f"{mode} {name}: {json.dumps(record)}", flush=True)
            rows.append(record)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", help="comma list of task counts (default 10,100,500,2000)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {MODES}")
    parser.add_argument("--quick", action="store_true", help="sizes 10,100 and 10 batches")
    parser.add_argument("--batches", type=int, default=None, help="steady batches (default 40)")
    parser.add_argument("--vocabulary", default="auto", help="t5, byte, or auto (t5 if found)")
    parser.add_argument(
        "--mixture",
        help="a shipped mixture on real data (e.g. flan2022_t0) instead of synthetic sizes; "
        "modes inproc and seqio",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--prepare_cache", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args.batches = args.batches or (10 if args.quick else 40)
    args.vocabulary = _resolve_vocabulary(args.vocabulary)
    if args.child:
        return _child(args)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    sizes = sizes or list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; known: {MODES}")
    if args.mixture:
        if "cached" in modes:
            parser.error("--mixture measures the in-process modes: pass --modes inproc,seqio")
        sizes = []
        rows = bench_mixture(args.mixture, modes, args)
    else:
        rows = [r for size in sizes for r in bench_size(size, modes, args)]
    print(
        f"\nhost cores: {common.host_cores()}; vocabulary {args.vocabulary}; feature lengths "
        f"{LENGTHS}; batch {BATCH_SIZE}; {len(FORMATS)} formats per spec; cap {CAP}"
    )
    common.print_table(
        "Mixture scale: registration, first batch, steady rate, peak memory",
        rows,
        [
            "mode",
            "tasks",
            "register_s",
            "build_s",
            "build_cpu_s",
            "first_batch_s",
            "first_batch_cpu_s",
            "ex_per_s",
            "ex_per_s_core",
            "ex_per_cpu_s",
            "rss_reg_mib",
            "rss_mib",
            "rss_peak_mib",
            "wall_s",
        ],
    )
    config = {
        "sizes": sizes,
        "modes": modes,
        "batches": args.batches,
        "vocabulary": args.vocabulary,
        **({"mixture": args.mixture} if args.mixture else {}),
    }
    path = common.append_result("mixture_scale", {"config": config, "rows": rows})
    print(f"\nappended to {path}")
    return 0 if len(rows) == len(modes) * max(1, len(sizes)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
