"""How many dimensions a word embedding needs (Su 2020; docs/research_notes.md section 7)."""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

# 2 / 0.24 from the note; exact: 2 / (1/2 ln((sqrt5 + 1)/2)) = 4 / ln(golden ratio) = 8.3123...
APPROX_CONSTANT = 8.33
EXACT_CONSTANT = 4.0 / math.log((math.sqrt(5.0) + 1.0) / 2.0)


def min_embedding_dim(vocab_size: int, exact: bool = False) -> int:
    """Smallest n with n > c ln N: ceil(8.33 ln N), or ceil(8.3123 ln N) with exact=True.

    From the entropy of a skip-gram-like model with vectors uniform on the sphere of radius
    sqrt(n): H ~ 2 ln N + h_n with h_n / n -> -1/2 ln((sqrt5+1)/2); capacity needs H < 0.
    N = 100k gives 96.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
    c = EXACT_CONSTANT if exact else APPROX_CONSTANT
    return math.ceil(c * math.log(vocab_size))


def sphere_entropy(n: int, *, points: int = 200_000) -> float:
    """h_n of the note: the entropy of p(i, j) ~ exp(<u_i, v_j>) is 2 ln N + h_n when the
    vectors are uniform on the sphere of radius sqrt(n), with

        h_n = ln E[e^s] - E[s e^s] / E[e^s],   s = <u, v> = n cos(theta),

    and theta, the angle between two independent uniform directions, has density
    proportional to sin(theta)^(n - 2) on (0, pi). Computed by the midpoint rule over theta in
    float64 with log-sum-exp (no overflow at any n); the rule's error is far below the
    1/n finite-size term, h_n / n = -1/2 ln((sqrt5 + 1)/2) + O(1/n).
    """
    import numpy as np
    from scipy.special import logsumexp

    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n={n!r}: must be an int >= 2 (a dimension)")
    theta = (np.arange(points) + 0.5) * (np.pi / points)
    log_density = (n - 2) * np.log(np.sin(theta))
    s = n * np.cos(theta)
    log_weights = log_density + s  # density x e^s
    log_mean_exp = logsumexp(log_weights) - logsumexp(log_density)
    tilted_mean = float(np.sum(s * np.exp(log_weights - logsumexp(log_weights))))
    return float(log_mean_exp - tilted_mean)


def sphere_entropy_monte_carlo(n: int, samples: int, seed: int = 0) -> float:
    """h_n estimated from `samples` pairs of random directions (normalised Gaussian vectors).
    Exact in expectation but dominated by rare large s as n grows: it agrees with
    `sphere_entropy` to about 1e-3 up to n = 8 with 1e6 samples and drifts above it beyond,
    which is why the quadrature is the reference."""
    import numpy as np
    from scipy.special import logsumexp

    rng = np.random.default_rng(seed)
    g1, g2 = rng.standard_normal((2, samples, n))
    s = n * np.sum(g1 * g2, axis=1) / (np.linalg.norm(g1, axis=1) * np.linalg.norm(g2, axis=1))
    log_z = logsumexp(s)
    return float(log_z - np.log(samples) - np.sum(s * np.exp(s - log_z)))


def threshold_constant(n: int) -> float:
    """c(n) = 2 / (-h_n / n): H < 0 needs n > c ln N. c(n) -> 4 / ln((sqrt5 + 1)/2) = 8.3123."""
    return 2.0 / (-sphere_entropy(n) / n)


def skipgram_log_probs(
    u: Float[Array, "N n"], v: Float[Array, "N n"], centers: Int[Array, " B"]
) -> Float[Array, "B N"]:
    """log p(j | i) = <u_i, v_j> - log sum_k exp(<u_i, v_k>) for each center i: the
    skip-gram-like model of the note (one table for centers, one for contexts, no bias)."""
    return jax.nn.log_softmax(u[centers] @ v.T, axis=-1)


def skipgram_loss(
    u: Float[Array, "N n"],
    v: Float[Array, "N n"],
    centers: Int[Array, " B"],
    contexts: Int[Array, " B"],
) -> Float[Array, ""]:
    """Mean -log p(context | center) under the full softmax over all N words (nats)."""
    logp = skipgram_log_probs(u, v, centers)
    return -jnp.mean(jnp.take_along_axis(logp, contexts[:, None], axis=1))


def sampled_skipgram_loss(
    u: Float[Array, "N n"],
    v: Float[Array, "N n"],
    centers: Int[Array, " B"],
    contexts: Int[Array, " B"],
    negatives: Int[Array, " K"],
    log_q: Float[Array, " N"],
) -> Float[Array, ""]:
    """Sampled softmax (Jean et al. 2015): the softmax over the true context and K words drawn
    with replacement from q (shared by the batch), every logit corrected by -log(K q_j) so the
    gradient estimates the full softmax's; a draw equal to the example's own context is masked
    out ("accidental hit"). log_q: log of the proposal, [N], normalised.

        loss = -s_o + log( e^{s_o} + sum_{k: j_k != o} e^{s_{j_k}} ),  s_j = <u_i, v_j> - log(K q_j)
    """
    h = u[centers]
    log_k = jnp.log(negatives.shape[0]).astype(h.dtype)
    true = jnp.sum(h * v[contexts], axis=-1) - (log_k + log_q[contexts])
    sampled = h @ v[negatives].T - (log_k + log_q[negatives])[None, :]
    sampled = jnp.where(negatives[None, :] == contexts[:, None], -jnp.inf, sampled)
    logits = jnp.concatenate([true[:, None], sampled], axis=1)
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - true)
