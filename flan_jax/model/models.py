"""Model wrappers (T5X's contract): feature converter, init, loss, scoring and decoding.

`EncoderDecoderModel` wraps `network.EncoderDecoder`, `DecoderOnlyModel` wraps
`network.DecoderOnly`; both are pure functions of (params, batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from flan_jax.model import decoding, network
from flan_jax.model.decoding import DecodeConfig
from flan_jax.types import Array, Batch, PyTree

if TYPE_CHECKING:  # seqio (and TensorFlow) only where data is converted: see _seqio()
    import seqio

NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossConfig:
    """T5X loss settings.

    Attributes:
      z_loss: coefficient of logZ^2 (T5X default 1e-4).
      label_smoothing: mass spread uniformly over the other vocabulary entries.
      loss_normalizing_factor: None (sum over target tokens), a number to divide by, or
        "NUM_REAL_TARGET_TOKENS" (divide by the sum of decoder_loss_weights).
    """

    z_loss: float = 1e-4
    label_smoothing: float = 0.0
    loss_normalizing_factor: float | str | None = None

    def __post_init__(self):
        lnf = self.loss_normalizing_factor
        if isinstance(lnf, str) and lnf != NUM_REAL_TARGET_TOKENS:
            raise ValueError(
                f"loss_normalizing_factor {lnf!r} is unknown; use None, a number or "
                f"{NUM_REAL_TARGET_TOKENS!r}"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.z_loss < 0:
            raise ValueError(f"z_loss must be >= 0, got {self.z_loss}")


def cross_entropy_loss(
    logits: Array,
    targets: Array,
    weights: Array,
    loss: LossConfig,
    weight_total: Array | None = None,
) -> tuple[Array, Array, Array]:
    """T5X's compute_weighted_cross_entropy.

    Args:
      logits: [batch, length, vocab] float32.
      targets: [batch, length] int target ids.
      weights: [batch, length] loss weights (0 on padding / prefix inputs).
      loss: z-loss, label smoothing and normalizing factor.
      weight_total: the weight sum of the whole batch when this is one microbatch of it:
        NUM_REAL_TARGET_TOKENS divides by it (not by this microbatch's own sum), so that the
        microbatches' losses and gradients add up to the full batch's (as in T5X).

    Returns:
      (total loss, z-loss part, weight sum), scalars; the loss includes the z-loss.
    """
    vocab = logits.shape[-1]
    confidence = 1.0 - loss.label_smoothing
    low = (1.0 - confidence) / (vocab - 1)
    normalizing_constant = -(
        confidence * np.log(confidence) + (vocab - 1) * low * np.log(low + 1e-20)
    )
    soft_targets = jax.nn.one_hot(targets, vocab, dtype=jnp.float32) * (confidence - low) + low
    log_z = jax.nn.logsumexp(logits, axis=-1)
    token_loss = (
        -jnp.sum(soft_targets * (logits - log_z[..., None]), axis=-1) - normalizing_constant
    )
    token_z = loss.z_loss * jnp.square(log_z)
    weights = weights.astype(jnp.float32)
    total, total_z = jnp.sum((token_loss + token_z) * weights), jnp.sum(token_z * weights)
    weight_sum = jnp.sum(weights)
    lnf = loss.loss_normalizing_factor
    if lnf == NUM_REAL_TARGET_TOKENS:
        lnf = weight_sum if weight_total is None else weight_total
    if lnf is not None:
        total, total_z = total / lnf, total_z / lnf
    return total, total_z, weight_sum


def _metrics(
    logits: Array, batch: Batch, total: Array, z: Array, weight_sum: Array
) -> dict[str, Array]:
    targets, weights = (
        batch["decoder_target_tokens"],
        batch["decoder_loss_weights"].astype(jnp.float32),
    )
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights)
    if "decoder_segment_ids" in batch:  # packed rows hold several examples
        num_examples = jnp.sum(jnp.max(batch["decoder_segment_ids"], axis=-1))
    else:
        num_examples = jnp.sum(jnp.any(weights > 0, axis=-1))
    return {
        "loss": total,
        "cross_ent_loss": total - z,
        "z_loss": z,
        "weight_sum": weight_sum,
        "correct": correct.astype(jnp.float32),
        "num_examples": num_examples.astype(jnp.float32),
    }


def _seqio():
    """seqio, imported on first use: the model, loss and train step run without it."""
    import seqio

    return seqio


def _zeros_like_shapes(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


class BaseModel:
    """Loss, scoring and decoding shared by both architectures."""

    feature_converter_cls: type[seqio.FeatureConverter]
    module: nn.Module

    def __init__(self, config: network.TransformerConfig, *, loss: LossConfig | None = None):
        self.config = config
        self.loss = LossConfig() if loss is None else loss

    def _logits(self, params: PyTree, batch: Batch, dropout_rng: Array | None) -> Array:
        raise NotImplementedError

    def loss_fn(
        self,
        params: PyTree,
        batch: Batch,
        dropout_rng: Array | None,
        weight_total: Array | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        """Weighted cross-entropy (+ z-loss) of the targets; dropout on iff dropout_rng.

        `weight_total`: the full batch's weight sum when `batch` is a microbatch of it (see
        `cross_entropy_loss`; the train step passes it).

        Returns:
          loss (scalar) and metrics (float32 scalars that sum over batches).
        """
        logits = self._logits(params, batch, dropout_rng)
        total, z, weight_sum = cross_entropy_loss(
            logits,
            batch["decoder_target_tokens"],
            batch["decoder_loss_weights"],
            self.loss,
            weight_total,
        )
        return total, _metrics(logits, batch, total, z, weight_sum)

    def score_batch(self, params: PyTree, batch: Batch) -> Array:
        """Per-row sum of target log-likelihoods [batch] (weighted by decoder_loss_weights)."""
        logits = self._logits(params, batch, None)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        token = jnp.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], axis=-1)[
            ..., 0
        ]
        return jnp.sum(token * batch["decoder_loss_weights"].astype(jnp.float32), axis=-1)

    def predict_batch(
        self,
        params: PyTree,
        batch: Batch,
        rng: Array | None = None,
        *,
        decode: DecodeConfig | None = None,
    ) -> Array:
        """Best decode per example [batch, max_decode_len] (0 after EOS)."""
        tokens, _ = self.predict_batch_with_aux(params, batch, rng, decode=decode)
        return tokens[:, 0]

    def predict_batch_with_aux(
        self,
        params: PyTree,
        batch: Batch,
        rng: Array | None = None,
        *,
        decode: DecodeConfig | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        """All decodes [batch, num_decodes, max_decode_len], best first; {'scores': [batch, n]}."""
        decode = DecodeConfig() if decode is None else decode
        step_fn, cache, first = self._decoding_setup(params, batch, decode.max_decode_len)
        tokens, scores = decoding.decode(decode, step_fn, cache, first, rng)
        return tokens, {"scores": scores}

    def _decoding_setup(self, params, batch, max_decode_len):
        raise NotImplementedError

    def param_shapes(self, input_shapes: Mapping[str, tuple[int, ...]]) -> PyTree:
        """Unboxed parameter ShapeDtypeStructs (no allocation)."""
        variables = jax.eval_shape(
            lambda rng: self.get_initial_variables(rng, input_shapes), jax.random.key(0)
        )
        return nn.unbox(variables["params"])

    def get_initial_variables(self, rng, input_shapes, input_types=None):
        raise NotImplementedError


def _count(tree: PyTree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _ones(shapes: Mapping[str, tuple[int, ...]], name: str, like: str, types=None) -> Array:
    shape = shapes.get(name, shapes[like])
    dtype = (types or {}).get(name, jnp.int32)
    return jnp.ones(shape, dtype)


class EncoderDecoderModel(BaseModel):
    """T5 v1.1 / T5 encoder-decoder (T5X's EncoderDecoderModel).

    Example: `EncoderDecoderModel(TransformerConfig(...)).loss_fn(params, batch, None)` with
    batch keys from seqio.EncDecFeatureConverter.
    """

    @property
    def feature_converter_cls(self) -> type[seqio.FeatureConverter]:
        """seqio.EncDecFeatureConverter."""
        return _seqio().EncDecFeatureConverter

    def __init__(
        self,
        config: network.TransformerConfig,
        *,
        loss: LossConfig | None = None,
        decoder_start_token_id: int = 0,
    ):
        super().__init__(config, loss=loss)
        self.module = network.EncoderDecoder(config)
        self.decoder_start_token_id = decoder_start_token_id

    def get_initial_variables(self, rng, input_shapes, input_types=None):
        """{'params': nn.Partitioned-boxed params} from input shapes {feature: (batch, length)}."""
        enc = _ones(input_shapes, "encoder_input_tokens", "encoder_input_tokens", input_types)
        dec = _ones(input_shapes, "decoder_input_tokens", "decoder_input_tokens", input_types)
        variables = self.module.init(rng, enc, dec, dec)
        return {"params": variables["params"]}

    def _logits(self, params, batch, dropout_rng):
        return self.module.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            batch.get("encoder_segment_ids"),
            batch.get("decoder_segment_ids"),
            batch.get("encoder_positions"),
            batch.get("decoder_positions"),
            enable_dropout=dropout_rng is not None,
            rngs=None if dropout_rng is None else {"dropout": dropout_rng},
        )

    def _decoding_setup(self, params, batch, max_decode_len):
        enc_tokens = batch["encoder_input_tokens"]
        encoded = self.module.apply({"params": params}, enc_tokens, method="encode")
        batch_size = enc_tokens.shape[0]
        dummy = jnp.zeros((batch_size, max_decode_len), jnp.int32)
        cache_shapes = jax.eval_shape(
            lambda: self.module.apply(
                {"params": params},
                encoded,
                enc_tokens,
                dummy,
                decode=True,
                mutable=["cache"],
                method="decode",
            )[1]["cache"]
        )
        cache = {
            "model": _zeros_like_shapes(cache_shapes),
            "encoded": encoded,
            "encoder_tokens": enc_tokens,
        }

        def step_fn(tokens: Array, cache: PyTree) -> tuple[Array, PyTree]:
            logits, variables = self.module.apply(
                {"params": params, "cache": cache["model"]},
                cache["encoded"],
                cache["encoder_tokens"],
                tokens[:, None],
                decode=True,
                mutable=["cache"],
                method="decode",
            )
            return logits[:, 0], {**cache, "model": variables["cache"]}

        first = jnp.full((batch_size,), self.decoder_start_token_id, jnp.int32)
        return step_fn, cache, first

    def flops_per_token(self, input_length: int, target_length: int) -> float:
        """Training FLOPs per token (inputs + targets) of one example, PaLM-style.

        6 * (N_enc * L_in + N_dec * L_tgt) + 12 * H * d_head * (n_enc * L_in^2 +
        n_dec * (L_tgt^2 + L_tgt * L_in)), divided by L_in + L_tgt. N_enc / N_dec are the
        encoder / decoder matmul params (the input embedding lookup excluded, logits included).
        """
        cfg = self.config
        params = self.param_shapes({"encoder_input_tokens": (1, 1), "decoder_input_tokens": (1, 1)})
        n_enc = _count(params["encoder"])
        n_dec = _count(params["decoder"]) + (
            _count(params["token_embedder"]) if cfg.logits_via_embedding else 0
        )
        attn = 12 * cfg.num_heads * cfg.head_dim
        total = 6 * (n_enc * input_length + n_dec * target_length) + attn * (
            cfg.num_encoder_layers * input_length**2
            + cfg.num_decoder_layers * (target_length**2 + target_length * input_length)
        )
        return total / (input_length + target_length)


class DecoderOnlyModel(BaseModel):
    """Causal LM, or prefix LM with `inputs_bidirectional_attention` (T5X's DecoderOnlyModel).

    Prediction moves each prompt (`decoder_input_tokens` where `decoder_causal_attention` is
    1, right- or left-padded; just the BOS without it) to the right edge of a
    [batch, prompt_length] buffer, prefills the KV cache with it, then decodes.
    """

    def __init__(
        self,
        config: network.TransformerConfig,
        *,
        loss: LossConfig | None = None,
        inputs_bidirectional_attention: bool = False,
        loss_on_targets_only: bool = False,
    ):
        """
        Args:
          inputs_bidirectional_attention: prefix LM: inputs attend bidirectionally.
          loss_on_targets_only: with causal attention, still read inputs + targets through
            seqio.PrefixLMFeatureConverter, so the loss covers targets only (OPT-IML);
            implied by inputs_bidirectional_attention.
        """
        super().__init__(config, loss=loss)
        if config.num_encoder_layers:
            raise ValueError(
                f"DecoderOnlyModel got num_encoder_layers={config.num_encoder_layers}; set it to 0 "
                "or use EncoderDecoderModel"
            )
        self.module = network.DecoderOnly(config)
        self.inputs_bidirectional_attention = inputs_bidirectional_attention
        self.loss_on_targets_only = loss_on_targets_only

    @property
    def feature_converter_cls(self) -> type[seqio.FeatureConverter]:
        """PrefixLMFeatureConverter for prefix LMs and targets-only loss, else the plain one."""
        if self.inputs_bidirectional_attention or self.loss_on_targets_only:
            return _seqio().PrefixLMFeatureConverter
        return _seqio().DecoderFeatureConverter

    def get_initial_variables(self, rng, input_shapes, input_types=None):
        """{'params': nn.Partitioned-boxed params} from input shapes {feature: (batch, length)}."""
        dec = _ones(input_shapes, "decoder_input_tokens", "decoder_input_tokens", input_types)
        return {"params": self.module.init(rng, dec, dec)["params"]}

    def _logits(self, params, batch, dropout_rng):
        causal = (
            batch.get("decoder_causal_attention") if self.inputs_bidirectional_attention else None
        )
        return self.module.apply(
            {"params": params},
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            batch.get("decoder_segment_ids"),
            batch.get("decoder_positions"),
            causal,
            enable_dropout=dropout_rng is not None,
            rngs=None if dropout_rng is None else {"dropout": dropout_rng},
        )

    def _decoding_setup(self, params, batch, max_decode_len):
        tokens = batch["decoder_input_tokens"]
        batch_size, prompt_len = tokens.shape
        if "decoder_causal_attention" in batch:
            in_prompt = batch["decoder_causal_attention"] > 0
        else:
            in_prompt = jnp.arange(prompt_len)[None, :] < 1  # the BOS alone
        lengths = jnp.sum(in_prompt, axis=-1).astype(jnp.int32)
        # The prompt's slots in order, wherever they are (right- or left-padded prompts):
        # a stable sort puts the marked slots first.
        order = jnp.argsort(jnp.where(in_prompt, 0, 1), axis=-1, stable=True)
        offset = prompt_len - lengths  # left padding per row
        slots = jnp.arange(prompt_len)[None, :]
        src = jnp.take_along_axis(order, jnp.clip(slots - offset[:, None], 0, prompt_len - 1), 1)
        valid = slots >= offset[:, None]
        prompt = jnp.where(valid, jnp.take_along_axis(tokens, src, axis=1), 0)
        positions = jnp.where(valid, slots - offset[:, None], 0)

        def apply(variables, toks, **kw):
            return self.module.apply(variables, toks, decode=True, mutable=["cache"], **kw)

        cache_len = prompt_len + max_decode_len - 1
        dummy = jnp.zeros((batch_size, cache_len), jnp.int32)
        shapes = jax.eval_shape(lambda: apply({"params": params}, dummy)[1]["cache"])
        causal = valid.astype(jnp.int32) if self.inputs_bidirectional_attention else None
        logits, variables = apply(
            {"params": params, "cache": _zeros_like_shapes(shapes)},
            prompt,
            decoder_target_tokens=valid.astype(jnp.int32),
            decoder_positions=positions,
            decoder_causal_attention=causal,
        )
        cache = {
            "model": variables["cache"],
            "offset": offset,
            "first_logits": logits[:, -1],
            "use_first": jnp.array(True),
        }

        def step_fn(toks: Array, cache: PyTree) -> tuple[Array, PyTree]:
            def run(c):
                index = c["model"]["decoder"]["cache_index"]
                pos = (index - c["offset"])[:, None]
                out, new = apply(
                    {"params": params, "cache": c["model"]}, toks[:, None], decoder_positions=pos
                )
                return out[:, 0], new["cache"]

            logits, model_cache = jax.lax.cond(
                cache["use_first"], lambda c: (c["first_logits"], c["model"]), run, cache
            )
            return logits, {**cache, "model": model_cache, "use_first": jnp.array(False)}

        return step_fn, cache, prompt[:, -1]

    def flops_per_token(self, length: int) -> float:
        """Training FLOPs per token: 6 * N + 12 * n_layers * H * d_head * length (PaLM, app. B).

        N counts matmul params: all but the input embedding (which counts once when tied).
        """
        cfg = self.config
        params = self.param_shapes({"decoder_input_tokens": (1, 1)})["decoder"]
        n = _count(params) - (0 if cfg.logits_via_embedding else _count(params["token_embedder"]))
        return 6.0 * n + 12.0 * cfg.num_decoder_layers * cfg.num_heads * cfg.head_dim * length
