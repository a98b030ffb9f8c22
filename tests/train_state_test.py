"""The train step's microbatching with the real model (tiny T5) and every loss normaliser."""

import jax
import numpy as np
from flax import linen as nn

from flan_jax import partitioning
from flan_jax.model import models, network
from flan_jax.training import train_state

CONFIG = network.TransformerConfig(
    vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
    num_encoder_layers=1, num_decoder_layers=1,
)  # fmt: skip
LENGTHS = {"encoder_input_tokens": (8, 12), "decoder_input_tokens": (8, 6)}


def _batch() -> dict[str, np.ndarray]:
    """8 unpacked rows whose target lengths differ a lot between microbatches: rows i, i+n
    form microbatch i, so the weight sums per microbatch are far from equal."""
    rng = np.random.default_rng(0)
    target_lengths = [6, 1, 5, 2, 6, 1, 4, 1]
    targets = rng.integers(2, 64, (8, 6)).astype(np.int32)
    weights = np.zeros((8, 6), np.int32)
    for row, n in enumerate(target_lengths):
        weights[row, :n] = 1
        targets[row, n:] = 0
    inputs = rng.integers(2, 64, (8, 12)).astype(np.int32)
    inputs[:, 9:] = 0
    return {
        "encoder_input_tokens": inputs,
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.concatenate([np.zeros((8, 1), np.int32), targets[:, :-1]], 1),
        "decoder_loss_weights": weights,
    }


def test_microbatched_loss_and_grads_equal_full_batch_for_the_real_model():
    """NUM_REAL_TARGET_TOKENS (T5X's per-token loss); a sum or a constant normaliser is
    covered by the toy model of optimizer_test."""
    normaliser = models.NUM_REAL_TARGET_TOKENS
    mesh = partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    model = models.EncoderDecoderModel(
        CONFIG, loss=models.LossConfig(z_loss=1e-4, loss_normalizing_factor=normaliser)
    )
    params = jax.jit(lambda r: nn.unbox(model.get_initial_variables(r, LENGTHS)["params"]))(
        jax.random.PRNGKey(0)
    )
    batch = _batch()

    def grads(n):
        cfg = train_state.StepConfig(num_microbatches=n)
        fn = jax.jit(
            lambda p, b: train_state.grads_and_metrics(p, b, model.loss_fn, cfg, None, mesh)
        )
        with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
            return jax.device_get(fn(params, batch))

    full_g, full_m = grads(1)
    for n in (4,):
        g, m = grads(n)
        for key in ("loss", "cross_ent_loss", "z_loss", "weight_sum", "correct"):
            np.testing.assert_allclose(m[key], full_m[key], rtol=1e-6, err_msg=f"{n} {key}")
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7), g, full_g)
    assert full_m["weight_sum"] == 26
    assert 3.0 < full_m["loss"] < 5.5  # per token: about log(64) at init, not 4 times that
