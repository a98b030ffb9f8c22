"""Adafactor with T5 defaults, learning-rate schedules, and optional global-norm clipping."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "rsqrt")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """Adafactor settings; defaults are T5's fine-tuning recipe (constant LR 1e-3).

    Attributes:
      learning_rate: peak (constant) learning rate.
      schedule: "constant", or "rsqrt": linear warmup to `learning_rate` over
        `warmup_steps`, then `learning_rate * sqrt(warmup_steps / step)` (T5 pretraining).
      warmup_steps: warmup length for "rsqrt" (and optional linear warmup for "constant").
      decay_rate: Adafactor second-moment decay exponent (T5: 0.8).
      clipping_threshold: Adafactor update clipping (T5: 1.0).
      multiply_by_parameter_scale: scale updates by parameter RMS (T5: True).
      global_norm_clip: clip gradients to this global norm first (None: off).
      weight_decay_rate: decoupled weight decay (None: off).
    """

    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_rate: float = 0.8
    clipping_threshold: float | None = 1.0
    multiply_by_parameter_scale: bool = True
    global_norm_clip: float | None = None
    weight_decay_rate: float | None = None

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} must be one of {SCHEDULES}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate ({self.learning_rate}) must be > 0")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be >= 0")
        if self.schedule == "rsqrt" and self.warmup_steps == 0:
            raise ValueError("schedule 'rsqrt' needs warmup_steps > 0 (T5 pretraining uses 10000)")
        if self.global_norm_clip is not None and self.global_norm_clip <= 0:
            raise ValueError(f"global_norm_clip ({self.global_norm_clip}) must be > 0 or None")


def make_schedule(config: OptimizerConfig) -> optax.Schedule:
    """Learning rate as a function of the (0-based) step count."""
    lr, warm = config.learning_rate, config.warmup_steps

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        ramp = jnp.minimum(1.0, (step + 1.0) / warm) if warm else 1.0
        if config.schedule == "constant":
            return lr * ramp
        decay = jnp.sqrt(warm / jnp.maximum(step + 1.0, float(warm)))
        return lr * ramp * decay

    return schedule


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """optax.adafactor with T5 defaults, optionally preceded by global-norm clipping."""
    adafactor = optax.adafactor(
        learning_rate=make_schedule(config),
        decay_rate=config.decay_rate,
        clipping_threshold=config.clipping_threshold,
        multiply_by_parameter_scale=config.multiply_by_parameter_scale,
        weight_decay_rate=config.weight_decay_rate,
    )
    if config.global_norm_clip is None:
        return adafactor
    return optax.chain(optax.clip_by_global_norm(config.global_norm_clip), adafactor)
