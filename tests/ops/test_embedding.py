import math

import jax.numpy as jnp
import numpy as np
import pytest

from research.ops.embedding import (
    EXACT_CONSTANT,
    min_embedding_dim,
    sampled_skipgram_loss,
    skipgram_log_probs,
    skipgram_loss,
    sphere_entropy,
    sphere_entropy_monte_carlo,
    threshold_constant,
)


def test_published_values():
    assert min_embedding_dim(100_000) == 96  # the note: N = 100k gives 96
    assert abs(min_embedding_dim(5_000_000) - 128) <= 1  # the note: "about 128"
    assert abs(EXACT_CONSTANT - 2 / 0.2406) < 1e-3  # 1/2 ln((sqrt5 + 1)/2) = 0.2406


@pytest.mark.parametrize("n", [2, 30_000, 50_257, 250_000])
def test_formula(n):
    assert min_embedding_dim(n) == math.ceil(8.33 * math.log(n))
    assert min_embedding_dim(n, exact=True) == math.ceil(8.3123 * math.log(n))


@pytest.mark.parametrize("bad", [1, 0, -5, 2.5, True, "100"])
def test_bad_vocab(bad):
    with pytest.raises(ValueError, match="vocab_size must be an int >= 2"):
        min_embedding_dim(bad)


def test_the_constant_rederived_numerically():
    """h_n / n -> -1/2 ln((sqrt5 + 1)/2) = -0.2406 with a 1/n finite-size term (about -0.074/n
    at these n), and the threshold constant 2 / (-h_n/n) -> 8.31 (the note rounds it to 8.33)."""
    limit = -0.5 * math.log((math.sqrt(5) + 1) / 2)
    per_dim = {n: sphere_entropy(n) / n for n in (32, 64, 128, 256, 512)}
    for n, v in per_dim.items():
        assert v < limit and abs(v - limit) < 0.08 / n, (n, v)  # approaches from below as 1/n
    assert abs(per_dim[512] - (-0.2406)) < 2e-4
    assert abs(threshold_constant(512) - 8.31) < 0.01
    assert abs(threshold_constant(512) - EXACT_CONSTANT) < 0.006
    # Richardson: 2 h_{2n}/(2n) - h_n/n cancels the 1/n term and lands on the limit.
    assert abs(2 * per_dim[512] - per_dim[256] - limit) < 2e-6


def test_monte_carlo_agrees_where_it_can():
    for n in (2, 4, 8):
        assert abs(sphere_entropy_monte_carlo(n, 400_000) - sphere_entropy(n)) < 4e-3 * n
    with pytest.raises(ValueError, match="n=1: must be an int >= 2"):
        sphere_entropy(1)


def _numpy_log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _tables(vocab=7, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(vocab, dim)), rng.normal(size=(vocab, dim))


def test_skipgram_loss_matches_numpy():
    u, v = _tables()
    centers, contexts = np.array([0, 3, 3, 6, 1]), np.array([2, 2, 5, 0, 1])
    logp = _numpy_log_softmax(u[centers] @ v.T)  # p(j|i) = e^{u_i.v_j} / sum_k e^{u_i.v_k}
    expected = -np.mean(logp[np.arange(5), contexts])
    got = skipgram_loss(
        jnp.asarray(u, jnp.float32),
        jnp.asarray(v, jnp.float32),
        jnp.asarray(centers),
        jnp.asarray(contexts),
    )
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    lp = skipgram_log_probs(jnp.asarray(u), jnp.asarray(v), jnp.asarray(centers))
    np.testing.assert_allclose(np.exp(np.asarray(lp)).sum(axis=1), 1.0, rtol=1e-6)


def test_sampled_skipgram_loss_matches_numpy_and_masks_accidental_hits():
    u, v = _tables(vocab=9, dim=4, seed=1)
    centers, contexts = np.array([1, 4, 8]), np.array([2, 7, 3])
    negatives = np.array([7, 0, 5, 7])  # 7 is example 1's own context: an accidental hit
    q = np.arange(1.0, 10.0)
    q /= q.sum()
    k = len(negatives)
    loss = []
    for i, o in zip(centers, contexts, strict=True):
        s_true = u[i] @ v[o] - np.log(k * q[o])
        s_neg = [u[i] @ v[j] - np.log(k * q[j]) for j in negatives if j != o]
        loss.append(np.log(np.exp(s_true) + np.sum(np.exp(s_neg))) - s_true)
    got = sampled_skipgram_loss(
        *(jnp.asarray(a, jnp.float32) for a in (u, v)),
        jnp.asarray(centers),
        jnp.asarray(contexts),
        jnp.asarray(negatives),
        jnp.log(jnp.asarray(q, jnp.float32)),
    )
    np.testing.assert_allclose(float(got), np.mean(loss), rtol=1e-5)


def test_sampled_loss_with_every_word_once_under_uniform_q_is_the_full_loss():
    # K = N negatives covering the vocabulary, q uniform: log(K q) = 0 and the sampled
    # softmax's normaliser is the full one (the true word counted once, its draw masked).
    u, v = _tables(vocab=6, dim=3, seed=2)
    centers, contexts = jnp.array([0, 5, 2]), jnp.array([4, 1, 2])
    full = skipgram_loss(jnp.asarray(u), jnp.asarray(v), centers, contexts)
    sampled = sampled_skipgram_loss(
        jnp.asarray(u),
        jnp.asarray(v),
        centers,
        contexts,
        jnp.arange(6),
        jnp.full((6,), -np.log(6.0)),
    )
    np.testing.assert_allclose(float(sampled), float(full), rtol=1e-6)
