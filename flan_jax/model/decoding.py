"""Autoregressive decoding: greedy, temperature / top-k / top-p sampling and beam search.

Pure, jit-able functions over a `tokens_to_logits(tokens, cache)` step function (T5X's
contract): fixed shapes, `lax.while_loop`, output 0 (pad) after EOS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from flan_jax.types import PyTree

# tokens [batch] int32, cache -> (logits [batch, vocab] float32, new cache)
TokensToLogits = Callable[[jax.Array, PyTree], tuple[jax.Array, PyTree]]

# T5X's "effective negative infinity": finite, so that NEG_INF - NEG_INF stays finite.
NEG_INF = -1.0e7
METHODS = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    """How `decode` turns a step function into sequences.

    Attributes:
      method: 'greedy' (argmax), 'sample' (temperature / top-k / top-p) or 'beam'.
      temperature: sampling temperature; 0 means argmax.
      top_k: keep the k most likely tokens before sampling (0: all).
      top_p: keep the smallest set of tokens whose probability reaches top_p (1: all).
      num_beams: beam width for 'beam'.
      alpha: T5X length penalty exponent, scores are log_prob / ((5 + len) / 6) ** alpha.
      max_decode_len: number of tokens generated (the start token is not counted).
      num_samples: independent samples per example for 'sample'.
      eos_id: end-of-sequence id; tokens after it are 0.
    """

    method: str = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 4
    alpha: float = 0.6
    max_decode_len: int = 64
    num_samples: int = 1
    eos_id: int = 1

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(
                f"DecodeConfig.method {self.method!r} is unknown; use one of {METHODS}"
            )
        checks = (
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_k", self.top_k >= 0, ">= 0 (0 disables it)"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1] (1 disables it)"),
            ("num_beams", self.num_beams >= 1, ">= 1"),
            ("alpha", self.alpha >= 0, ">= 0"),
            ("max_decode_len", self.max_decode_len >= 1, ">= 1"),
            ("num_samples", self.num_samples >= 1, ">= 1"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(
                    f"DecodeConfig.{name} is {getattr(self, name)!r}; it must be {expected}"
                )

    @property
    def num_decodes(self) -> int:
        """Sequences returned per example: beams, samples, or 1 for greedy."""
        return {"greedy": 1, "sample": self.num_samples, "beam": self.num_beams}[self.method]


def brevity_penalty(alpha: float, length: jax.Array | int) -> jax.Array:
    """T5X / GNMT length penalty ((5 + length) / 6) ** alpha."""
    return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


def repeat_cache(cache: PyTree, n: int) -> PyTree:
    """Repeats every batch-major cache leaf n times along axis 0: [b, ...] -> [b * n, ...].

    Scalar leaves (e.g. a shared `cache_index`) are left alone.
    """
    return jax.tree.map(lambda x: jnp.repeat(x, n, axis=0) if jnp.ndim(x) >= 1 else x, cache)


def gather_cache(cache: PyTree, flat_indices: jax.Array) -> PyTree:
    """Selects rows `flat_indices` [n] of every batch-major cache leaf; scalars are shared."""
    return jax.tree.map(lambda x: x[flat_indices] if jnp.ndim(x) >= 1 else x, cache)


def filter_logits(logits: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sets logits outside the top-k and outside the top-p nucleus to NEG_INF.

    Args:
      logits: [batch, vocab] float32 (already divided by the temperature).
      top_k: keep exactly the k largest logits per row (0: keep all).
      top_p: keep the most likely tokens, in order, until the probability mass before
        the next one reaches top_p; the most likely token is always kept (1: keep all).

    Returns:
      [batch, vocab] logits with the removed entries at NEG_INF.
    """
    rows = jnp.arange(logits.shape[0])[:, None]
    if 0 < top_k < logits.shape[-1]:
        values, indices = lax.top_k(logits, top_k)
        logits = jnp.full_like(logits, NEG_INF).at[rows, indices].set(values)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
        mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
        keep = jnp.zeros(logits.shape, bool).at[rows, order].set(mass_before < top_p)
        logits = jnp.where(keep, logits, NEG_INF)
    return logits


def _choose_tokens(
    logits: jax.Array, rng: jax.Array, temperature: float, top_k: int, top_p: float
) -> jax.Array:
    """Greedy (temperature 0) or sampled next tokens [batch] from logits [batch, vocab]."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)


class _SampleState(NamedTuple):
    step: jax.Array  # scalar int32: index of the token being produced
    tokens: jax.Array  # [batch] last token, fed to the model next
    cache: PyTree
    sequences: jax.Array  # [batch, max_decode_len]
    ended: jax.Array  # [batch] bool: EOS already emitted
    log_prob: jax.Array  # [batch] float32
    rng: jax.Array


def temperature_sample(
    tokens_to_logits: TokensToLogits,
    init_cache: PyTree,
    first_tokens: jax.Array,
    rng: jax.Array | None = None,
    *,
    max_decode_len: int,
    eos_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    forced_tokens: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Samples (or, at temperature 0, greedily picks) up to max_decode_len tokens.

    Example (greedy): first_tokens [0, 0] and a model that prefers 5, 7, EOS=1 gives
    tokens [[5, 7, 1, 0, ...], ...]: the EOS is written, then 0 (pad), as T5X does.

    Args:
      tokens_to_logits: step function, tokens [batch] + cache -> logits [batch, vocab].
      init_cache: decoding cache; leaves with ndim >= 1 are batch-major.
      first_tokens: [batch] int32 token fed first (decoder start / last prompt token).
      rng: PRNG key; required when temperature > 0.
      max_decode_len: number of tokens produced.
      eos_id: end-of-sequence id.
      temperature: softmax temperature; 0 is argmax.
      top_k: keep only the k most likely tokens (0: all).
      top_p: nucleus sampling mass (1: all).
      forced_tokens: optional [batch, max_decode_len]; nonzero entries are written instead
        of the model's choice (a prompt to continue) and add nothing to the score.

    Returns:
      tokens [batch, max_decode_len] int32 and the log-probability [batch] float32 of the
      chosen tokens under the untempered model distribution (EOS included).
    """
    if temperature > 0 and rng is None:
        raise ValueError(f"temperature_sample with temperature {temperature} needs an rng key")
    rng = jax.random.key(0) if rng is None else rng
    batch = first_tokens.shape[0]
    if forced_tokens is None:
        forced_tokens = jnp.zeros((batch, max_decode_len), jnp.int32)

    def cond(state: _SampleState) -> jax.Array:
        return (state.step < max_decode_len) & ~jnp.all(state.ended)

    def body(state: _SampleState) -> _SampleState:
        logits, cache = tokens_to_logits(state.tokens, state.cache)
        logits = logits.astype(jnp.float32)
        rng, step_rng = jax.random.split(state.rng)
        chosen = _choose_tokens(logits, step_rng, temperature, top_k, top_p)
        forced = lax.dynamic_index_in_dim(forced_tokens, state.step, axis=1, keepdims=False)
        token = jnp.where(forced > 0, forced, chosen)
        token_log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], axis=-1)[
            :, 0
        ]
        token = jnp.where(state.ended, 0, token)
        log_prob = state.log_prob + jnp.where(state.ended | (forced > 0), 0.0, token_log_prob)
        sequences = lax.dynamic_update_index_in_dim(state.sequences, token, state.step, axis=1)
        ended = state.ended | (token == eos_id)
        return _SampleState(state.step + 1, token, cache, sequences, ended, log_prob, rng)

    init = _SampleState(
        step=jnp.array(0, jnp.int32),
        tokens=first_tokens.astype(jnp.int32),
        cache=init_cache,
        sequences=jnp.zeros((batch, max_decode_len), jnp.int32),
        ended=jnp.zeros((batch,), bool),
        log_prob=jnp.zeros((batch,), jnp.float32),
        rng=rng,
    )
    final = lax.while_loop(cond, body, init)
    return final.sequences, final.log_prob


class _BeamState(NamedTuple):
    step: jax.Array  # scalar int32: output position written next
    live_tokens: jax.Array  # [batch, beams] last token of each live beam
    live_log_probs: jax.Array  # [batch, beams], best first
    live_seqs: jax.Array  # [batch, beams, max_decode_len]
    finished_seqs: jax.Array  # [batch, beams, max_decode_len]
    finished_scores: jax.Array  # [batch, beams] length-penalised, best first
    finished_flags: jax.Array  # [batch, beams] bool: slot holds a finished sequence
    cache: PyTree  # batch-major leaves of batch * beams rows


def _take_beams(x: jax.Array, indices: jax.Array) -> jax.Array:
    """x [batch, n, ...] gathered along axis 1 with indices [batch, m] -> [batch, m, ...]."""
    indices = indices.reshape(indices.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, indices, axis=1)


def _beam_step(
    state: _BeamState,
    tokens_to_logits: TokensToLogits,
    forced_tokens: jax.Array,
    eos_id: int,
    alpha: float,
) -> _BeamState:
    """Extends every live beam by one token; keeps the best live and finished beams."""
    batch, beams = state.live_tokens.shape
    flat_logits, cache = tokens_to_logits(state.live_tokens.reshape(-1), state.cache)
    vocab = flat_logits.shape[-1]
    log_probs = jax.nn.log_softmax(flat_logits.astype(jnp.float32)).reshape(batch, beams, vocab)
    log_probs = log_probs + state.live_log_probs[:, :, None]
    # 2 * beams candidates: even if `beams` of them end in EOS, `beams` stay alive.
    cand_log_probs, flat_indices = lax.top_k(log_probs.reshape(batch, -1), 2 * beams)
    parents, cand_ids = flat_indices // vocab, flat_indices % vocab
    forced = lax.dynamic_index_in_dim(forced_tokens, state.step, axis=1, keepdims=True)
    in_prompt = forced > 0  # [batch, 1]: inside a forced prefix only the top beam lives
    prompt_log_probs = jnp.full_like(cand_log_probs, NEG_INF).at[:, 0].set(0.0)
    cand_log_probs = jnp.where(in_prompt, prompt_log_probs, cand_log_probs)
    cand_ids = jnp.where(in_prompt, forced, cand_ids).astype(jnp.int32)
    cand_seqs = _take_beams(state.live_seqs, parents)
    cand_seqs = lax.dynamic_update_slice(cand_seqs, cand_ids[:, :, None], (0, 0, state.step))
    newly_finished = cand_ids == eos_id

    live_log_probs, alive = lax.top_k(cand_log_probs + newly_finished * NEG_INF, beams)
    flat_parents = jnp.arange(batch)[:, None] * beams + _take_beams(parents, alive)

    new_scores = cand_log_probs / brevity_penalty(alpha, state.step + 1)
    new_scores = new_scores + (~newly_finished) * NEG_INF
    all_scores = jnp.concatenate([state.finished_scores, new_scores], axis=1)
    finished_scores, best = lax.top_k(all_scores, beams)
    all_seqs = jnp.concatenate([state.finished_seqs, cand_seqs], axis=1)
    all_flags = jnp.concatenate([state.finished_flags, newly_finished], axis=1)
    return _BeamState(
        step=state.step + 1,
        live_tokens=_take_beams(cand_ids, alive),
        live_log_probs=live_log_probs,
        live_seqs=_take_beams(cand_seqs, alive),
        finished_seqs=_take_beams(all_seqs, best),
        finished_scores=finished_scores,
        finished_flags=_take_beams(all_flags, best),
        cache=gather_cache(cache, flat_parents.reshape(-1)),
    )


def beam_search(
    tokens_to_logits: TokensToLogits,
    init_cache: PyTree,
    first_tokens: jax.Array,
    *,
    num_beams: int,
    max_decode_len: int,
    eos_id: int,
    alpha: float = 0.6,
    forced_tokens: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """T5X beam search with the ((5 + len) / 6) ** alpha length penalty.

    Stops early once no live beam can beat the worst finished one. As in T5X, a row where no
    beam finished returns its live beams with raw log-probabilities, and a row with fewer
    than num_beams finished keeps empty slots (all-0 tokens, score NEG_INF) last.

    Args:
      tokens_to_logits: step function, tokens [batch * beams] + cache -> logits.
      init_cache: cache for `batch` rows; batch-major leaves are repeated per beam.
      first_tokens: [batch] int32 token fed first.
      num_beams: beam width.
      max_decode_len: number of tokens produced.
      eos_id: end-of-sequence id; finished beams hold 0 after it.
      alpha: length penalty exponent (0: plain log-probabilities).
      forced_tokens: optional [batch, max_decode_len] forced prefix, nonzero = forced.

    Returns:
      tokens [batch, num_beams, max_decode_len] best first, scores [batch, num_beams].
    """
    batch = first_tokens.shape[0]
    if forced_tokens is None:
        forced_tokens = jnp.zeros((batch, max_decode_len), jnp.int32)
    seqs = jnp.zeros((batch, num_beams, max_decode_len), jnp.int32)
    init = _BeamState(
        step=jnp.array(0, jnp.int32),
        live_tokens=jnp.repeat(first_tokens.astype(jnp.int32)[:, None], num_beams, axis=1),
        live_log_probs=jnp.tile(jnp.array([0.0] + [NEG_INF] * (num_beams - 1)), (batch, 1)),
        live_seqs=seqs,
        finished_seqs=seqs,
        finished_scores=jnp.full((batch, num_beams), NEG_INF, jnp.float32),
        finished_flags=jnp.zeros((batch, num_beams), bool),
        cache=repeat_cache(init_cache, num_beams),
    )
    # Upper bound of any live beam's final score (log-probs only decrease), as in T5X.
    max_penalty = brevity_penalty(alpha, max_decode_len + 1)

    def cond(state: _BeamState) -> jax.Array:
        best_live = state.live_log_probs[:, 0] / max_penalty
        worst_finished = jnp.where(
            jnp.all(state.finished_flags, axis=1), state.finished_scores[:, -1], NEG_INF
        )
        return (state.step < max_decode_len) & ~jnp.all(worst_finished > best_live)

    def body(state: _BeamState) -> _BeamState:
        return _beam_step(state, tokens_to_logits, forced_tokens, eos_id, alpha)

    final = lax.while_loop(cond, body, init)
    any_finished = jnp.any(final.finished_flags, axis=1)
    tokens = jnp.where(any_finished[:, None, None], final.finished_seqs, final.live_seqs)
    scores = jnp.where(any_finished[:, None], final.finished_scores, final.live_log_probs)
    return tokens, scores


def decode(
    config: DecodeConfig,
    tokens_to_logits: TokensToLogits,
    init_cache: PyTree,
    first_tokens: jax.Array,
    rng: jax.Array | None = None,
    *,
    forced_tokens: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Runs the method of `config`; always returns decodes per example, best first.

    Args:
      config: the decoding method and its settings.
      tokens_to_logits: step function, tokens [n] + cache -> (logits [n, vocab], cache).
      init_cache: cache for `batch` rows (batch-major leaves; scalar leaves shared).
      first_tokens: [batch] int32 token fed first.
      rng: PRNG key, needed for 'sample' with temperature > 0.
      forced_tokens: optional [batch, max_decode_len] forced prefix (nonzero = forced).

    Returns:
      tokens [batch, num_decodes, max_decode_len] and scores [batch, num_decodes]
      (log-probs; length-penalised for finished beams), num_decodes = config.num_decodes.
    """
    batch, n = first_tokens.shape[0], config.num_decodes
    common = dict(max_decode_len=config.max_decode_len, eos_id=config.eos_id)
    if config.method == "beam":
        return beam_search(
            tokens_to_logits,
            init_cache,
            first_tokens,
            num_beams=n,
            alpha=config.alpha,
            forced_tokens=forced_tokens,
            **common,
        )
    temperature = 0.0 if config.method == "greedy" else config.temperature
    if forced_tokens is not None:
        forced_tokens = jnp.repeat(forced_tokens, n, axis=0)
    tokens, scores = temperature_sample(
        tokens_to_logits,
        repeat_cache(init_cache, n),
        jnp.repeat(first_tokens, n, axis=0),
        rng,
        temperature=temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        forced_tokens=forced_tokens,
        **common,
    )
    tokens = tokens.reshape(batch, n, -1)
    scores = scores.reshape(batch, n)
    order = jnp.argsort(-scores, axis=1)
    return _take_beams(tokens, order), jnp.take_along_axis(scores, order, axis=1)
