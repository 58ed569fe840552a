"""Readable references for causal linear attention (as fla keeps naive.py): slow, autodiff'd.

Both take features: fp32 phi(q), phi(k) [B, L, H, F] (padded keys' features zeroed),
v [B, L, H, Dv] fp32, and the initial state s0 [B, H, F, Dv], z0 [B, H, F] (zeros if None):
  quadratic: out = (phi(Q) phi(K)^T * tril) V / row sums, O(L^2) time and memory: the
    definition; the initial state adds phi(q_i) S_0 to row i's numerator, phi(q_i).z_0 to its sum.
  cumsum: the running sums S_i = S_0 + sum_{j<=i} phi(k_j) v_j^T materialised, O(L F Dv)
    memory; `linear_attention(form="cumsum")`. With `keep` [B, L] (0 at the first token of a
    packed segment) the sums restart there: S_i = keep_i S_{i-1} + phi(k_i) v_i^T, an
    associative scan of (keep, sum) pairs.
A query whose features share no support with any key outputs 0.
"""

import jax.numpy as jnp
from jax import lax

from research.ops.attention.common import divide


def quadratic(fq, fk, v, s0=None, z0=None, *, causal: bool = True):
    """(phi(Q) phi(K)^T, lower-triangular if causal) V / row sums; shapes: module docstring."""
    length = fq.shape[1]
    sim = jnp.einsum("bihf,bjhf->bhij", fq, fk)
    if causal:
        sim = jnp.where(jnp.tril(jnp.ones((length, length), bool)), sim, 0.0)
    num = jnp.einsum("bhij,bjhv->bihv", sim, v)
    den = jnp.swapaxes(jnp.sum(sim, axis=-1), 1, 2)  # [B, L, H]
    if s0 is not None:
        num = num + jnp.einsum("blhf,bhfv->blhv", fq, s0)
    if z0 is not None:
        den = den + jnp.einsum("blhf,bhf->blh", fq, z0)
    return divide(num, den[..., None])


def _reset_cumsum(x, keep, x0):
    """Running sum over axis 1 of x [B, L, ...] from x0 [B, ...], restarted where keep == 0."""
    a = keep.reshape(keep.shape + (1,) * (x.ndim - 2))

    def combine(left, right):  # x_i = a_i x_{i-1} + b_i, composed
        return left[0] * right[0], right[0] * left[1] + right[1]

    prod, s = lax.associative_scan(combine, (jnp.broadcast_to(a, x.shape), x), axis=1)
    return s + prod * x0[:, None]


def cumsum(fq, fk, v, s0, z0, keep=None):
    """Prefix sums over tokens, then phi(q_i) S_i / phi(q_i).z_i; shapes: module docstring."""
    if keep is not None:
        s = _reset_cumsum(jnp.einsum("blhf,blhv->blhfv", fk, v), keep, s0)
        z = _reset_cumsum(fk, keep, z0)
    else:
        s = jnp.cumsum(jnp.einsum("blhf,blhv->blhfv", fk, v), axis=1) + s0[:, None]
        z = jnp.cumsum(fk, axis=1) + z0[:, None]
    num = jnp.einsum("blhf,blhfv->blhv", fq, s)
    return divide(num, jnp.einsum("blhf,blhf->blh", fq, z)[..., None])
