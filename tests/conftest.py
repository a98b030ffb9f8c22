"""Test set-up: 8 fake CPU devices before any JAX work, quiet TensorFlow."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

import pytest  # noqa: E402

DATA_DIR = os.environ.get("FLAN_JAX_DATA_DIR", "")
FIXTURES_DIR = os.environ.get(
    "FLAN_JAX_FIXTURES_DIR",
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures"),
)

needs_data = pytest.mark.skipif(
    not (DATA_DIR and os.path.isdir(DATA_DIR)),
    reason="needs the real datasets: set FLAN_JAX_DATA_DIR (make test sets it to ../shared/data)",
)
needs_fixtures = pytest.mark.skipif(
    not os.path.isdir(FIXTURES_DIR),
    reason="needs ../shared/fixtures (or FLAN_JAX_FIXTURES_DIR)",
)
