"""bench/mixture_scale.py: its synthetic specs register through the project's loaders with exact
examples-proportional rates, and the caches it writes pass the trainer's cache checks and read
back exactly the in-process tasks' token ids."""

import pathlib
import sys

import numpy as np
import pytest
import seqio

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root: bench/

from bench import mixture_scale  # noqa: E402
from flan_jax import registry  # noqa: E402
from flan_jax.data import cache, mixtures, tasks  # noqa: E402


def _unregister(names, mixture_names):
    for name in mixture_names:
        if name in mixtures.registered_mixtures():
            mixtures.unregister_mixture(name)
    for name in names:
        tasks.unregister_task_spec(name)


def test_synthetic_mixture_rates_and_cached_tokens_equal_in_process(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    names = mixture_scale.write_specs(specs, 8, "byte")
    assert names == [f"scale_task_{i:05d}" for i in range(4)]
    try:
        variants, mixture_names = registry.register_dir(specs)
        assert mixture_names == [mixture_scale.MIXTURE]
        assert len(variants) == 8
        # train sizes 60, 120, 240, 480 with cap 300: 480 is capped
        want = {
            f"{n}_{f}": float(r)
            for n, r in zip(names, (60, 120, 240, 300))
            for f in ("zs_opt", "fs_opt")
        }
        assert mixtures.mixture_rates(mixture_scale.MIXTURE) == want
        counts = mixture_scale.write_cache(variants, tmp_path / "cache")
        assert counts == {
            f"{n}_{f}": s for n, s in zip(names, (60, 120, 240, 480)) for f in ("zs_opt", "fs_opt")
        }
        saved_dirs = list(seqio.get_global_cache_dirs())
        try:
            cache.use_caches(mixture_scale.MIXTURE, str(tmp_path / "cache"), ["train"])
            lengths = mixture_scale.LENGTHS
            for name in (variants[0], variants[1]):
                task = seqio.get_mixture_or_task(name)
                ours, theirs = (
                    task.get_dataset(lengths, shuffle=False, use_cached=c, try_in_mem_cache=False)
                    for c in (False, True)
                )
                for a, b in zip(ours.as_numpy_iterator(), theirs.as_numpy_iterator(), strict=True):
                    for k in ("inputs", "targets"):
                        np.testing.assert_array_equal(a[k], b[k])
                        assert b[k].dtype == np.int32
        finally:
            seqio.set_global_cache_dirs(saved_dirs)
            for name in variants:
                seqio.get_mixture_or_task(name)._cache_dir = None
            cache._CHECKED.clear()
    finally:
        _unregister(names, mixture_names if "mixture_names" in locals() else [])


def test_a_shipped_mixture_is_measured_in_process_only(capsys):
    with pytest.raises(SystemExit) as exit_info:
        mixture_scale.main(["--mixture", "flan2022_t0", "--modes", "inproc,cached"])
    assert exit_info.value.code == 2
    assert "--mixture measures the in-process modes" in capsys.readouterr().err
