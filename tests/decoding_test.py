"""Tests of flan_jax.model.decoding on a toy second-order Markov model with a counter cache."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.model import decoding

EOS = 1


def markov_step(table):
    """tokens_to_logits for logits = table[step, prev, token]; cache has a scalar index."""

    def tokens_to_logits(tokens, cache):
        logits = table[cache["cache_index"], cache["prev"], tokens]
        return logits, {"cache_index": cache["cache_index"] + 1, "prev": tokens}

    return tokens_to_logits


def init_cache(batch):
    return {"cache_index": jnp.array(0, jnp.int32), "prev": jnp.zeros((batch,), jnp.int32)}


def random_table(seed, length, vocab, eos_bias=None):
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(length, vocab, vocab, vocab)).astype(np.float32) * 2
    if eos_bias is not None:
        table[..., EOS] = eos_bias(rng, table.shape[:-1])
    return jnp.asarray(table)


def log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - np.log(np.sum(np.exp(x - x.max()))) - x.max()


def reference_greedy(table, first_tokens, length):
    """Plain-numpy argmax path: EOS written, then 0; log-prob of tokens up to EOS."""
    table = np.asarray(table)
    out, scores = np.zeros((len(first_tokens), length), np.int32), np.zeros(len(first_tokens))
    for b, token in enumerate(first_tokens):
        prev = 0
        for t in range(length):
            logits = table[t, prev, token]
            prev, token = token, int(np.argmax(logits))
            out[b, t], scores[b] = token, scores[b] + log_softmax(logits)[token]
            if token == EOS:
                break
    return out, scores


def sequence_log_prob(table, first_token, seq):
    """Sum of log-probs of seq (up to and including EOS) after first_token."""
    table, prev, token, total = np.asarray(table), 0, first_token, 0.0
    for t, nxt in enumerate(seq):
        total += log_softmax(table[t, prev, token])[nxt]
        prev, token = token, int(nxt)
        if nxt == EOS:
            return total, t + 1
    return total, len(seq)


def test_greedy_equals_independent_argmax_path():
    table = random_table(0, length=6, vocab=7)
    first = jnp.array([0, 3, 5], jnp.int32)
    tokens, scores = jax.jit(
        functools.partial(
            decoding.temperature_sample,
            markov_step(table),
            max_decode_len=6,
            eos_id=EOS,
            temperature=0,
        )
    )(init_cache(3), first)
    want_tokens, want_scores = reference_greedy(table, [0, 3, 5], 6)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert (want_tokens == EOS).any(), "the table should end at least one row early"


def test_eos_then_pad_and_score_stops_at_eos():
    vocab, length = 5, 5
    table = np.full((length, vocab, vocab, vocab), -5.0, np.float32)
    table[:, :, :, 3] = 0.0  # by default emit 3 ...
    table[1, :, 3, EOS] = 5.0  # ... but EOS at step 1 after a 3,
    table[:, :, 2, 4] = 5.0  # and 4 forever after a 4-chain started by 2.
    table[:, :, 4, 4] = 5.0
    tokens, scores = decoding.temperature_sample(
        markov_step(jnp.asarray(table)),
        init_cache(2),
        jnp.array([0, 2]),
        max_decode_len=length,
        eos_id=EOS,
        temperature=0.0,
    )
    np.testing.assert_array_equal(tokens, [[3, EOS, 0, 0, 0], [4, 4, 4, 4, 4]])
    want = [sequence_log_prob(table, 0, [3, EOS])[0], sequence_log_prob(table, 2, [4] * 5)[0]]
    np.testing.assert_allclose(scores, want, atol=1e-5)


def test_top_k_1_sampling_equals_greedy():
    table = random_table(1, length=8, vocab=9)
    first = jnp.array([0, 2, 4, 8], jnp.int32)
    greedy = decoding.temperature_sample(
        markov_step(table), init_cache(4), first, max_decode_len=8, eos_id=EOS, temperature=0.0
    )
    top1 = decoding.temperature_sample(
        markov_step(table),
        init_cache(4),
        first,
        jax.random.key(3),
        max_decode_len=8,
        eos_id=EOS,
        temperature=1.7,
        top_k=1,
    )
    np.testing.assert_array_equal(top1[0], greedy[0])
    np.testing.assert_allclose(top1[1], greedy[1], atol=1e-6)


def first_token_frequencies(logits, n, **kwargs):
    table = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (1, 1, 1, len(logits)))
    tokens, _ = jax.jit(
        functools.partial(
            decoding.temperature_sample, markov_step(table), max_decode_len=1, eos_id=EOS, **kwargs
        )
    )(init_cache(n), jnp.zeros((n,), jnp.int32), jax.random.key(0))
    return np.bincount(np.asarray(tokens[:, 0]), minlength=len(logits)) / n


def test_sampling_frequencies_match_tempered_softmax():
    logits = np.array([1.0, 0.2, -0.5, 2.0, 0.0, -1.0])
    n, temperature = 40_000, 0.7
    freq = first_token_frequencies(logits, n, temperature=temperature)
    want = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
    # 5 standard errors of a binomial proportion: a false failure is ~1e-6 likely.
    np.testing.assert_allclose(freq, want, atol=5 * np.sqrt(want * (1 - want) / n).max())


def test_filter_logits_keeps_exactly_the_nucleus_and_top_k():
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))  # sorted: 0.5, 0.3, 0.15, 0.05
    kept = lambda **kw: np.asarray(decoding.filter_logits(logits, **kw)[0] > decoding.NEG_INF)
    np.testing.assert_array_equal(kept(top_p=0.8), [False, True, False, True])
    np.testing.assert_array_equal(kept(top_p=0.81), [False, True, True, True])
    np.testing.assert_array_equal(kept(top_p=0.01), [False, True, False, False])
    np.testing.assert_array_equal(kept(top_k=2), [False, True, False, True])
    np.testing.assert_array_equal(kept(top_k=3, top_p=0.5), [False, True, False, False])


def test_top_p_sampling_renormalises_over_the_nucleus():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    n = 20_000
    freq = first_token_frequencies(np.log(probs), n, temperature=1.0, top_p=0.8)
    np.testing.assert_array_equal(freq == 0, [True, False, True, False])
    np.testing.assert_allclose(freq[[1, 3]], [0.5 / 0.8, 0.3 / 0.8], atol=0.02)


def test_beam_1_equals_greedy():
    # EOS is either dominant or negligible, so it is never a runner-up candidate.
    bias = lambda rng, shape: np.where(rng.random(shape) < 0.15, 12.0, -30.0)
    table = random_table(2, length=7, vocab=8, eos_bias=bias)
    first = jnp.array([0, 3, 6, 7], jnp.int32)
    greedy, greedy_lp = decoding.temperature_sample(
        markov_step(table), init_cache(4), first, max_decode_len=7, eos_id=EOS, temperature=0.0
    )
    beams, scores = jax.jit(
        functools.partial(
            decoding.beam_search, markov_step(table), num_beams=1, max_decode_len=7, eos_id=EOS
        )
    )(init_cache(4), first)
    np.testing.assert_array_equal(beams[:, 0], greedy)
    lengths = np.argmax(np.asarray(greedy) == EOS, axis=1) + 1
    finished = (np.asarray(greedy) == EOS).any(axis=1)
    want = np.where(finished, greedy_lp / decoding.brevity_penalty(0.6, lengths), greedy_lp)
    np.testing.assert_allclose(scores[:, 0], want, rtol=1e-6)
    assert finished.any() and not finished.all()


def test_beam_search_finds_best_sequence_where_greedy_fails():
    vocab, length = 6, 4
    table = np.full((length, vocab, vocab, vocab), -20.0, np.float32)
    table[0, 0, 0, [2, 3]] = np.log([0.6, 0.4])  # greedy takes 2 ...
    table[1, 0, 2, 2:5] = np.log(0.25)  # ... where every continuation is a coin toss,
    table[1:, :, 2:, EOS] = np.log(0.25)
    table[1, 0, 3, EOS] = 0.0  # while 3 is followed by EOS for sure.
    table[2:, :, 2:, 2:] = np.log(0.1875)
    step = markov_step(jnp.asarray(table))
    greedy, _ = decoding.temperature_sample(
        step, init_cache(1), jnp.array([0]), max_decode_len=length, eos_id=EOS, temperature=0.0
    )
    assert greedy[0, 0] == 2
    beams, scores = decoding.beam_search(
        step,
        init_cache(1),
        jnp.array([0]),
        num_beams=2,
        max_decode_len=length,
        eos_id=EOS,
        alpha=0.0,
    )
    np.testing.assert_array_equal(beams[0, 0], [3, EOS, 0, 0])
    np.testing.assert_allclose(scores[0, 0], np.log(0.4), atol=1e-5)
    # runner-up: 2 then EOS, log(0.6 * 0.25) (up to the -20 leakage)
    np.testing.assert_array_equal(beams[0, 1], [2, EOS, 0, 0])
    np.testing.assert_allclose(scores[0, 1], np.log(0.6 * 0.25), atol=1e-4)


def test_beam_scores_match_recomputed_log_probs_and_are_sorted():
    """Checks cache gathering: a second-order model scores each beam from its own history."""
    bias = lambda rng, shape: rng.normal(size=shape) * 2 - 1
    table = random_table(4, length=6, vocab=7, eos_bias=bias)
    first = np.array([0, 4, 6])
    beams, scores = decoding.beam_search(
        markov_step(table),
        init_cache(3),
        jnp.asarray(first),
        num_beams=3,
        max_decode_len=6,
        eos_id=EOS,
        alpha=0.6,
    )
    for b in range(3):
        assert np.all(np.diff(np.asarray(scores[b])) <= 0), scores[b]
        assert scores[b, 0] > decoding.NEG_INF / 2
        for k in range(3):
            seq = np.asarray(beams[b, k])
            if scores[b, k] <= decoding.NEG_INF / 2:  # an empty finished slot (T5X's filler)
                np.testing.assert_array_equal(seq, 0)
                continue
            lp, n = sequence_log_prob(table, first[b], seq)
            assert (seq[n:] == 0).all()
            np.testing.assert_allclose(scores[b, k], lp / ((5 + n) / 6) ** 0.6, rtol=1e-5)


def test_forced_tokens_are_kept_and_not_scored():
    table = random_table(5, length=6, vocab=7)
    forced = jnp.array([[4, 5, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], jnp.int32)
    tokens, scores = decoding.temperature_sample(
        markov_step(table),
        init_cache(2),
        jnp.array([0, 0]),
        max_decode_len=6,
        eos_id=EOS,
        temperature=0.0,
        forced_tokens=forced,
    )
    np.testing.assert_array_equal(tokens[0, :2], [4, 5])
    want_row0 = reference_greedy_after_prefix(table, [4, 5], 6)
    np.testing.assert_array_equal(tokens[0], want_row0)
    full_lp, _ = sequence_log_prob(table, 0, want_row0)
    prefix_lp, _ = sequence_log_prob(table, 0, [4, 5])
    np.testing.assert_allclose(scores[0], full_lp - prefix_lp, atol=1e-5)
    beams, _ = decoding.beam_search(
        markov_step(table),
        init_cache(2),
        jnp.array([0, 0]),
        num_beams=2,
        max_decode_len=6,
        eos_id=EOS,
        forced_tokens=forced,
    )
    np.testing.assert_array_equal(beams[0, :, :2], [[4, 5], [4, 5]])


def reference_greedy_after_prefix(table, prefix, length):
    table, out, prev, token = np.asarray(table), list(prefix), 0, 0
    for t in range(length):
        logits = table[t, prev, token]
        nxt = out[t] if t < len(prefix) else int(np.argmax(logits))
        if t >= len(prefix):
            out.append(nxt)
        prev, token = token, nxt
        if nxt == EOS:
            return out + [0] * (length - len(out))
    return out


def test_decode_dispatches_and_sorts_samples_best_first():
    table = random_table(6, length=5, vocab=6)
    step, first = markov_step(table), jnp.array([0, 3], jnp.int32)
    config = decoding.DecodeConfig(method="sample", num_samples=4, max_decode_len=5, eos_id=EOS)
    tokens, scores = jax.jit(functools.partial(decoding.decode, config, step))(
        init_cache(2), first, jax.random.key(1)
    )
    assert tokens.shape == (2, 4, 5) and scores.shape == (2, 4)
    assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)
    for b in range(2):
        for k in range(4):
            lp, _ = sequence_log_prob(table, int(first[b]), np.asarray(tokens[b, k]))
            np.testing.assert_allclose(scores[b, k], lp, atol=1e-5)
    greedy = decoding.decode(decoding.DecodeConfig(max_decode_len=5), step, init_cache(2), first)
    np.testing.assert_array_equal(greedy[0][:, 0], reference_greedy(table, [0, 3], 5)[0])
    beam = decoding.decode(
        decoding.DecodeConfig(method="beam", num_beams=3, max_decode_len=5),
        step,
        init_cache(2),
        first,
    )
    assert beam[0].shape == (2, 3, 5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "nucleus"}, "method 'nucleus' is unknown"),
        ({"top_p": 0.0}, "top_p is 0.0; it must be in (0, 1]"),
        ({"num_beams": 0}, "num_beams is 0; it must be >= 1"),
    ],
)
def test_decode_config_errors_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decoding.DecodeConfig(**kwargs)
