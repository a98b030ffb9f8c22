"""Adafactor with T5 defaults (the default), AdamW with OPT-IML's settings, learning-rate
schedules, and optional global-norm clipping."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

from flan_jax.training import adafactor as adafactor_lib

SCHEDULES = ("constant", "rsqrt")
ADAFACTOR_IMPLEMENTATIONS = ("flan_jax", "optax")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """Adafactor settings; defaults are T5's fine-tuning recipe (constant LR 1e-3).

    Attributes:
      learning_rate: peak (constant) learning rate.
      schedule: "constant", or "rsqrt": linear warmup to `learning_rate` over
        `warmup_steps`, then `learning_rate * sqrt(warmup_steps / step)` (T5 pretraining).
      warmup_steps: warmup length for "rsqrt" (and optional linear warmup for "constant").
      cooldown_fraction: linear decay to 0 over this share of the steps before
        `cooldown_end` (0: none), on top of either schedule: warmup-stable-decay when training
        from scratch (the demo); fine-tuning keeps T5's constant rate.
      cooldown_end: the step the cooldown reaches 0 at (usually TRAIN_STEPS); required when
        `cooldown_fraction` > 0.
      decay_rate: Adafactor second-moment decay exponent (T5: 0.8).
      clipping_threshold: Adafactor update clipping (T5: 1.0).
      multiply_by_parameter_scale: scale updates by parameter RMS (T5: True).
      global_norm_clip: clip gradients to this global norm first (None: off).
      weight_decay_rate: decoupled weight decay (None: off).
      implementation: "flan_jax" (flan_jax.training.adafactor: optax.adafactor's arithmetic,
        bitwise-equal updates and its state, with each parameter reduced once: 11 instead of
        14 parameter-sized memory passes per update) or "optax" (optax.adafactor).
        The state trees are identical, so a checkpoint of either restores into the other.
    """

    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    cooldown_fraction: float = 0.0
    cooldown_end: int | None = None
    decay_rate: float = 0.8
    clipping_threshold: float | None = 1.0
    multiply_by_parameter_scale: bool = True
    global_norm_clip: float | None = None
    weight_decay_rate: float | None = None
    implementation: str = "flan_jax"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} must be one of {SCHEDULES}")
        if self.implementation not in ADAFACTOR_IMPLEMENTATIONS:
            raise ValueError(
                f"Adafactor implementation {self.implementation!r} must be one of "
                f"{ADAFACTOR_IMPLEMENTATIONS}"
            )
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate ({self.learning_rate}) must be > 0")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be >= 0")
        if self.schedule == "rsqrt" and self.warmup_steps == 0:
            raise ValueError("schedule 'rsqrt' needs warmup_steps > 0 (T5 pretraining uses 10000)")
        if self.global_norm_clip is not None and self.global_norm_clip <= 0:
            raise ValueError(f"global_norm_clip ({self.global_norm_clip}) must be > 0 or None")
        if not 0.0 <= self.cooldown_fraction <= 1.0:
            raise ValueError(
                f"cooldown_fraction ({self.cooldown_fraction}) must be in [0, 1] (0: none)"
            )
        if self.cooldown_fraction and (self.cooldown_end is None or self.cooldown_end < 1):
            raise ValueError(
                f"cooldown_fraction ({self.cooldown_fraction}) needs cooldown_end "
                f"({self.cooldown_end}) >= 1; set cooldown_end = %TRAIN_STEPS"
            )


def make_schedule(config: OptimizerConfig | AdamWConfig) -> optax.Schedule:
    """Learning rate as a function of the (0-based) step count."""
    if isinstance(config, AdamWConfig):
        return make_adamw_schedule(config)
    lr, warm = config.learning_rate, config.warmup_steps

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        ramp = jnp.minimum(1.0, (step + 1.0) / warm) if warm else 1.0
        if config.schedule == "rsqrt":
            ramp = ramp * jnp.sqrt(warm / jnp.maximum(step + 1.0, float(warm)))
        if config.cooldown_fraction:
            length = max(1.0, config.cooldown_fraction * config.cooldown_end)
            ramp = ramp * jnp.clip((config.cooldown_end - step) / length, 0.0, 1.0)
        return lr * ramp

    return schedule


def make_optimizer(config: OptimizerConfig | AdamWConfig) -> optax.GradientTransformation:
    """Adafactor with T5 defaults, optionally preceded by global-norm clipping; or AdamW."""
    if isinstance(config, AdamWConfig):
        return make_adamw(config)
    impl = adafactor_lib.adafactor if config.implementation == "flan_jax" else optax.adafactor
    adafactor = impl(
        make_schedule(config),
        decay_rate=config.decay_rate,
        clipping_threshold=config.clipping_threshold,
        multiply_by_parameter_scale=config.multiply_by_parameter_scale,
        weight_decay_rate=config.weight_decay_rate,
    )
    return _clipped(adafactor, config.global_norm_clip)


def _clipped(
    tx: optax.GradientTransformation, global_norm_clip: float | None
) -> optax.GradientTransformation:
    """`tx` preceded by global-norm clipping of the gradients (None: no clipping)."""
    if global_norm_clip is None:
        return tx
    return optax.chain(optax.clip_by_global_norm(global_norm_clip), tx)


# --- AdamW (OPT-IML), beside Adafactor -----------------------------------------------------

ADAMW_SCHEDULES = ("constant", "linear")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdamWConfig:
    """AdamW as OPT-IML fine-tunes OPT: beta2 0.95, epsilon 1e-8, global-norm clipping 1.0.

    Attributes:
      learning_rate: peak learning rate, reached after `warmup_steps` of linear warmup.
      schedule: "constant" (stay at the peak) or "linear" (decay linearly to
        `learning_rate * final_learning_rate_ratio` at step `decay_steps`, then stay there).
      warmup_steps: linear warmup length (0: none).
      decay_steps: step at which "linear" ends (usually TRAIN_STEPS); > warmup_steps.
      final_learning_rate_ratio: end of the linear decay as a fraction of the peak.
      b1, b2, eps: Adam moments' decay rates and denominator epsilon.
      weight_decay: decoupled weight decay, times the learning rate, on every parameter
        (as metaseq's Adam does).
      global_norm_clip: clip gradients to this global norm first (None: off).
    """

    learning_rate: float = 5e-5
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int | None = None
    final_learning_rate_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    global_norm_clip: float | None = 1.0

    def __post_init__(self):
        if self.schedule not in ADAMW_SCHEDULES:
            raise ValueError(f"AdamW schedule {self.schedule!r} must be one of {ADAMW_SCHEDULES}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate ({self.learning_rate}) must be > 0")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be >= 0")
        if self.schedule == "linear" and (
            self.decay_steps is None or self.decay_steps <= self.warmup_steps
        ):
            raise ValueError(
                f"AdamW schedule 'linear' needs decay_steps ({self.decay_steps}) > warmup_steps "
                f"({self.warmup_steps}); set decay_steps = %TRAIN_STEPS"
            )
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"AdamW {name} ({getattr(self, name)}) must be in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay ({self.weight_decay}) must be >= 0")
        if self.global_norm_clip is not None and self.global_norm_clip <= 0:
            raise ValueError(f"global_norm_clip ({self.global_norm_clip}) must be > 0 or None")


def make_adamw_schedule(config: AdamWConfig) -> optax.Schedule:
    """Linear warmup from lr / warmup_steps to lr, then constant or linear decay (0-based step)."""
    lr, warm = config.learning_rate, config.warmup_steps

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        ramp = jnp.minimum(1.0, (step + 1.0) / warm) if warm else 1.0
        if config.schedule == "constant":
            return lr * ramp
        frac = jnp.clip((step - warm) / float(config.decay_steps - warm), 0.0, 1.0)
        return lr * ramp * (1.0 - (1.0 - config.final_learning_rate_ratio) * frac)

    return schedule


def make_adamw(config: AdamWConfig) -> optax.GradientTransformation:
    """Global-norm clipping (when set), then optax.adamw on the schedule.

    The state is (clip's empty state, (ScaleByAdamState(count, mu, nu), ...)); mu and nu have
    the parameters' shapes, so partitioning.opt_state_shardings gives them the parameters'
    shardings and replicates the counts.
    """
    adamw = optax.adamw(
        learning_rate=make_adamw_schedule(config),
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    return _clipped(adamw, config.global_norm_clip)
