"""seqio datasets per host, batched locally and assembled into global jax.Arrays on the mesh."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from flan_jax import partitioning
from flan_jax.data import cache, cached_mixture, packing
from flan_jax.types import HostBatch

MIXINGS = ("auto", "seqio", "one_pipeline")
# 'auto' mixes a mixture of this many tasks or more in one pipeline (BENCHMARKS.md, "Mixture
# scale": seqio's per-task pipelines take 73 CPU-s to the first batch at 100 tasks, 450 at 500).
# flan2022 (528 tasks), flan2022_t0 (283) and flan2022_flan (206) cross it; flan2021 (67) and
# flan_tiny (48) do not.
ONE_PIPELINE_MIN_TASKS = 100


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which examples the trainer reads (MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, BATCH_SIZE).

    Attributes:
      mixture_or_task_name: a registered seqio task or mixture.
      task_feature_lengths: e.g. {"inputs": 512, "targets": 114}.
      batch_size: global batch (all hosts together).
      split: training split.
      shuffle, seed: seqio shuffling (the seed makes the order reproducible).
      pack: pack several examples per row (segment ids and positions).
      packing: how rows are packed: best fit over a buffer (default) or seqio's greedy
        trim-and-pack (`packing.PackingConfig.method = 'greedy'` in gin).
      use_cached: read seqio's offline caches (`flan-jax cache`, docs/caching.md); a missing
        or stale cache of any task is an error (flan_jax.data.cache.check_cached).
      cache_dir: the folder `flan-jax cache --output_dir` wrote (added to seqio's cache dirs).
      eval_split: validation split of each task used by in-training eval.
      eval_max_examples: cap per task for in-training eval (None: all).
      allow_sample_data: train on tasks whose spec says they read a small sample standing in
        for a real corpus (`stand_in_for`); only for smoke tests (refused otherwise).
      mixing: how a mixture's tasks are mixed. 'seqio': seqio's `Mixture.get_dataset` (a
        pipeline per task; T5X's stream). 'one_pipeline': `flan_jax.data.cached_mixture`
        (shuffle buffers and post-cache steps per group of like tasks, not per task; a stream
        of its own). 'auto' (default): one pipeline when reading caches or when the mixture
        has at least `ONE_PIPELINE_MIN_TASKS` tasks, else seqio's.
    """

    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    batch_size: int
    split: str = "train"
    shuffle: bool = True
    seed: int | None = 0
    pack: bool = True
    packing: packing.PackingConfig = packing.PackingConfig()
    use_cached: bool = False
    cache_dir: str | None = None
    eval_split: str = "validation"
    eval_max_examples: int | None = 256
    allow_sample_data: bool = False
    mixing: str = "auto"

    def __post_init__(self):
        if self.mixing not in MIXINGS:
            raise ValueError(
                f"DataConfig.mixing {self.mixing!r} is not one of {MIXINGS}; 'auto' picks "
                "one pipeline for cached or large mixtures"
            )
        if self.batch_size < 1:
            raise ValueError(f"BATCH_SIZE ({self.batch_size}) must be >= 1")
        bad = {
            k: v for k, v in self.task_feature_lengths.items() if not isinstance(v, int) or v < 1
        }
        if bad or not self.task_feature_lengths:
            raise ValueError(
                f"TASK_FEATURE_LENGTHS {dict(self.task_feature_lengths)} needs positive ints"
            )
        if self.batch_size % jax.process_count():
            raise ValueError(
                f"BATCH_SIZE ({self.batch_size}) must be divisible by the process count "
                f"({jax.process_count()})"
            )

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // jax.process_count()


def shard_info() -> seqio.ShardInfo:
    return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


def get_mixture_or_task(name: str) -> seqio.Task | seqio.Mixture:
    """The registered task or mixture; unknown names list the closest registered ones."""
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        import difflib

        names = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        from flan_jax.data import tasks

        raise ValueError(
            f"MIXTURE_OR_TASK_NAME {name!r} is not registered (closest: {close}); "
            f"{tasks.specs_hint(name)}, or set MIXTURE_OR_TASK_MODULE to the module that "
            "registers it (e.g. 'flan_jax.registry')"
        ) from None


def model_input_shapes(
    config: DataConfig, converter: seqio.FeatureConverter
) -> dict[str, tuple[int, int]]:
    """{model feature: (global batch, length)} for initialising the model."""
    lengths = converter.get_model_feature_lengths(dict(config.task_feature_lengths))
    return {k: (config.batch_size, v) for k, v in lengths.items()}


def make_converter(
    converter_cls: type[seqio.FeatureConverter], config: DataConfig
) -> seqio.FeatureConverter:
    """The model's feature converter (`model.feature_converter_cls`) packed as `config` says.

    `method="greedy"` or `pack=False` gives `converter_cls(pack=...)` unchanged (seqio's
    trim-and-pack); "best_fit" its `flan_jax.data.packing` twin with the same output keys.
    """
    return packing.make_feature_converter(converter_cls, pack=config.pack, config=config.packing)


def get_train_dataset(
    config: DataConfig, converter: seqio.FeatureConverter, *, skip_batches: int = 0
) -> tf.data.Dataset:
    """This host's share of the (repeated) training data, batched to the local batch size.

    With a seed the stream is a pure function of (config, process index): every stage is
    seeded or order-preserving (seqio's shuffles and mixture sampling take `seed`, parallel
    maps keep order, packing is deterministic per window). `skip_batches` starts it that many
    batches in, which is how `TrainIterator.set_state` resumes a position exactly. A mixture
    read from caches (`use_cached`) or of `ONE_PIPELINE_MIN_TASKS` tasks or more is mixed by
    `flan_jax.data.cached_mixture` (one pipeline for all its tasks, a stream of its own; see
    `DataConfig.mixing`), a task or a smaller mixture by seqio.
    """
    provider = get_mixture_or_task(config.mixture_or_task_name)
    lengths = dict(config.task_feature_lengths)
    if config.use_cached:
        cache.use_caches(config.mixture_or_task_name, config.cache_dir, [config.split])
    if one_pipeline(config, provider):
        # One pipeline for the whole mixture (mix, then shuffle and preprocess once per group
        # of like tasks): seqio's Mixture.get_dataset builds one per task.
        get = (
            cached_mixture.get_dataset
            if config.use_cached
            else cached_mixture.get_in_process_dataset
        )
        ds = get(
            provider,
            lengths,
            split=config.split,
            shuffle=config.shuffle,
            seed=config.seed,
            shard_info=shard_info(),
        )
        ds = converter(ds, task_feature_lengths=lengths)
    else:
        ds = seqio.get_dataset(
            config.mixture_or_task_name,
            lengths,
            converter,
            dataset_split=config.split,
            use_cached=config.use_cached,
            shuffle=config.shuffle,
            num_epochs=None,
            shard_info=shard_info(),
            seed=config.seed,
            verbose=False,
        )
    # flan_jax's own task maps are pure TF ops, so their iterators checkpoint exactly. A
    # user's task may call tf.numpy_function / py_function, whose Python state tf.data cannot
    # save: it would refuse to checkpoint the iterator, so such ops are taken as stateless.
    # (Only the optional tf.data-iterator checkpoints need this; positions never serialise.)
    options = tf.data.Options()
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    options.deterministic = True  # a position is only exact if the order never varies
    ds = ds.with_options(options)
    ds = ds.batch(config.local_batch_size, drop_remainder=True)
    if skip_batches:
        ds = ds.skip(skip_batches)
    return ds.prefetch(tf.data.AUTOTUNE)


def make_global_batch(local: HostBatch, mesh: Mesh, global_batch_size: int) -> dict[str, jax.Array]:
    """Assembles each host's [local_batch, ...] arrays into global [batch, ...] jax.Arrays."""
    sharding = partitioning.batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (global_batch_size,) + v.shape[1:])
        for k, v in local.items()
    }


def fingerprint(local: HostBatch) -> str:
    """Short hash of this host's batch (identifies the examples a step trained on)."""
    h = hashlib.sha1()
    for k in sorted(local):
        h.update(k.encode())
        h.update(np.ascontiguousarray(local[k]).tobytes())
    return h.hexdigest()[:16]


def one_pipeline(config: DataConfig, provider: seqio.Task | seqio.Mixture) -> bool:
    """Whether `config` reads `provider` through `cached_mixture` (`DataConfig.mixing`)."""
    if not isinstance(provider, seqio.Mixture) or config.mixing == "seqio":
        return False
    if config.mixing == "one_pipeline" or config.use_cached:
        return True
    return len(provider.tasks) >= ONE_PIPELINE_MIN_TASKS


POSITION_FORMAT = "flan_jax.data_position/1"
CACHED_MIXING = "flan_jax.cached_mixture/1"  # the stream of cached_mixture.get_dataset
IN_PROCESS_MIXING = "flan_jax.cached_mixture.in_process/1"  # of get_in_process_dataset


def position_config(config: DataConfig, mixture_or_task: seqio.Task | seqio.Mixture) -> dict:
    """What a saved position is only valid for: the data config, the process and the rates."""
    if isinstance(mixture_or_task, seqio.Mixture):
        rates = {t.name: float(mixture_or_task.get_rate(t)) for t in mixture_or_task.tasks}
    else:
        rates = {mixture_or_task.name: 1.0}
    mixing = {}
    if one_pipeline(config, mixture_or_task):  # mixed by flan_jax: another stream than seqio's
        mixing = (
            {"cached_mixing": CACHED_MIXING}
            if config.use_cached
            else {"in_process_mixing": IN_PROCESS_MIXING}
        )
    return {
        "mixture_or_task_name": config.mixture_or_task_name,
        "task_feature_lengths": dict(sorted(config.task_feature_lengths.items())),
        "batch_size": config.batch_size,
        "split": config.split,
        "shuffle": config.shuffle,
        "pack": config.pack,
        "packing": dataclasses.asdict(config.packing),
        "use_cached": config.use_cached,
        **mixing,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "task_rates": {k: round(v, 9) for k, v in sorted(rates.items())},
    }


class TrainIterator:
    """Global batches of the training stream, with a position that is a few integers.

    The stream is deterministic given (data config, seed, process index), so its position is
    `{"seed", "batches_consumed", "config"}`: `get_state()` is a small JSON dict, and
    `set_state()` rebuilds the stream and skips the consumed batches (exact; the skip costs
    reading and packing those batches again, see BENCHMARKS.md). No Python-side read-ahead:
    the number of batches handed out is exactly the number the trainer consumed.

    Built from a `DataConfig` + converter (what the trainer does), or from a bare dataset
    (tests), which has no rebuildable position: `get_state` then raises.
    """

    def __init__(
        self,
        dataset: tf.data.Dataset | None,
        mesh: Mesh,
        global_batch_size: int,
        *,
        config: DataConfig | None = None,
        converter: seqio.FeatureConverter | None = None,
    ):
        if (dataset is None) == (config is None):
            raise ValueError("TrainIterator needs either a dataset or a DataConfig + converter")
        if config is not None and config.seed is None:
            # An unseeded stream cannot be replayed: draw the seed here and save it.
            seed = int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF)
            config = dataclasses.replace(config, seed=seed)
        self.mesh = mesh
        self.global_batch_size = global_batch_size
        self.batches_consumed = 0
        self._dataset, self._config, self._converter = dataset, config, converter
        self._config_summary = (
            position_config(config, get_mixture_or_task(config.mixture_or_task_name))
            if config is not None
            else None
        )
        self._iterator = None

    @property
    def tf_iterator(self):
        """The underlying tf.data iterator (created on first use; what the optional
        tf.data-iterator checkpoints save)."""
        if self._iterator is None:
            ds = self._dataset
            if ds is None:
                ds = get_train_dataset(self._config, self._converter)
            self._iterator = iter(ds)
        return self._iterator

    def __iter__(self) -> Iterator[tuple[dict[str, jax.Array], HostBatch]]:
        return self

    def __next__(self) -> tuple[dict[str, jax.Array], HostBatch]:
        local = jax.tree.map(np.asarray, next(self.tf_iterator))
        self.batches_consumed += 1
        return make_global_batch(local, self.mesh, self.global_batch_size), local

    def get_state(self) -> dict:
        """The position: {"format", "seed", "batches_consumed", "config"} (JSON, ~1 KB)."""
        if self._config is None:
            raise ValueError(
                "this TrainIterator was built from a bare dataset and has no position; build "
                "it with config= and converter= to save positions"
            )
        return {
            "format": POSITION_FORMAT,
            "seed": self._config.seed,
            "batches_consumed": self.batches_consumed,
            "config": self._config_summary,
        }

    def set_state(self, state: dict) -> None:
        """Moves to a saved position: same stream (seed) and `batches_consumed` batches in.

        Raises:
          ValueError: the state is not a position, or was saved by a pipeline with another
            config (mixture, rates, batch size, feature lengths, packing, process layout).
        """
        if self._config is None:
            raise ValueError("this TrainIterator was built from a bare dataset; it has no position")
        if not isinstance(state, dict) or state.get("format") != POSITION_FORMAT:
            raise ValueError(
                f"data state is not a {POSITION_FORMAT} position: "
                f"{str(state)[:120]}; restart the data with save_data_iterator=False"
            )
        saved, ours = state["config"], self._config_summary
        diff = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
        if diff:
            detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {ours.get(k)!r}" for k in diff)
            raise ValueError(
                f"the checkpoint's data position belongs to another data pipeline ({detail}); "
                "restore with the run's original settings, or set "
                "checkpoints.CheckpointConfig.save_data_iterator = False to restart the data"
            )
        n = int(state["batches_consumed"])
        if n < 0:
            raise ValueError(f"batches_consumed ({n}) must be >= 0")
        self._config = dataclasses.replace(self._config, seed=state["seed"])
        self._iterator = iter(get_train_dataset(self._config, self._converter, skip_batches=n))
        self.batches_consumed = n


def eval_task_names(config: DataConfig) -> list[str]:
    """Tasks of the mixture (or the task itself) that have the eval split."""
    mt = get_mixture_or_task(config.mixture_or_task_name)
    tasks = mt.tasks if isinstance(mt, seqio.Mixture) else [mt]
    return sorted(t.name for t in tasks if config.eval_split in t.splits)


def _pad_rows(batch: HostBatch, rows: int) -> HostBatch:
    """Zero rows at the end: zero loss weights, so they add nothing to summed metrics."""
    return {
        k: np.concatenate([v, np.zeros((rows - len(v),) + v.shape[1:], v.dtype)])
        for k, v in batch.items()
    }


def load_eval_batches(
    config: DataConfig, converter: seqio.FeatureConverter, task_name: str
) -> list[HostBatch]:
    """This host's share of a task's eval split as padded local batches (same count per host)."""
    if config.use_cached:
        cache.use_caches(task_name, config.cache_dir, [config.eval_split])
    ds = seqio.get_dataset(
        task_name,
        dict(config.task_feature_lengths),
        converter,
        dataset_split=config.eval_split,
        use_cached=config.use_cached,
        shuffle=False,
        num_epochs=1,
        shard_info=shard_info(),
        verbose=False,
    )
    if config.eval_max_examples is not None:
        ds = ds.take(max(1, config.eval_max_examples // jax.process_count()))
    b = config.local_batch_size
    batches = [_pad_rows(jax.tree.map(np.asarray, x), b) for x in ds.batch(b).as_numpy_iterator()]
    count = len(batches)
    if jax.process_count() > 1:  # hosts must run the same number of collective steps
        count = int(np.max(multihost_utils.process_allgather(np.int32(count))))
    template = batches[0] if batches else None
    if template is None:
        raise ValueError(
            f"eval split {config.eval_split!r} of task {task_name!r} is empty on process "
            f"{jax.process_index()}"
        )
    empty = {k: np.zeros_like(v) for k, v in template.items()}
    return batches + [empty] * (count - len(batches))
