"""The model, optimizer, partitioning and train step run with TensorFlow, seqio and gin absent.

An accelerator machine may have only jax, flax, optax and numpy: a subprocess blocks the other
imports, builds t5_1_1/tiny from its gin file through bench.model_gin, runs one jitted train
step and prints the metrics, which must equal the same step run here (with gin and seqio).
"""

import json
import pathlib
import subprocess
import sys

import pytest
from tf_free_step import one_step

import gin
from bench import model_gin
from flan_jax import specs

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCKED = ("tensorflow", "seqio", "tensorflow_datasets", "gin")
MODEL_FILES = sorted(
    str(p.relative_to(specs.spec_dir("gin") / "models"))[: -len(".gin")]
    for p in (specs.spec_dir("gin") / "models").rglob("*.gin")
    if p.parent.name != "opt"
)

SCRIPT = f"""
import importlib.abc, json, sys
BLOCKED = {BLOCKED!r}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked in this test")

sys.meta_path.insert(0, Block())
from flan_jax import partitioning, types
from flan_jax.model import decoding, flops, fused_attention, layers, models, network, transformer
from flan_jax.training import metrics_log, optimizer, train_state
from tf_free_step import one_step

print(json.dumps(one_step("t5_1_1/tiny")))
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
assert not loaded, loaded
"""


def test_train_step_runs_without_tensorflow_seqio_gin():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            "PATH": "",
            "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}",
        },
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    blocked = json.loads(proc.stdout.strip().splitlines()[-1])
    here = one_step("t5_1_1/tiny")  # gin builds the model here
    assert blocked == pytest.approx(here, rel=1e-6)  # thread order may differ in the last bit
    assert here["loss_after_update"] < here["loss"]


@pytest.mark.parametrize("config", MODEL_FILES)
def test_gin_free_reader_builds_what_gin_builds(config):
    gin_dir = specs.spec_dir("gin")
    path = gin_dir / "models" / f"{config}.gin"
    ours = model_gin.read(path, gin_dir, ["network.TransformerConfig.scan_layers = True"])
    gin.clear_config()
    gin.add_config_file_search_path(str(gin_dir))
    gin.parse_config_files_and_bindings(
        [str(path)], ["network.TransformerConfig.scan_layers = True"]
    )
    theirs = gin.query_parameter("%MODEL").scoped_configurable_fn()
    gin.clear_config()
    assert type(ours) is type(theirs)
    assert ours.config == theirs.config and ours.loss == theirs.loss
    assert ours.config.scan_layers
    assert vars(ours).keys() == vars(theirs).keys()
    for k in ("inputs_bidirectional_attention", "decoder_start_token_id"):
        assert getattr(ours, k, None) == getattr(theirs, k, None)
