"""Readable references for causal linear attention (as fla keeps naive.py): slow, autodiff'd.

Both take features: fp32 phi(q), phi(k) [B, L, H, F] (padded keys' features zeroed),
v [B, L, H, Dv] fp32, and the initial state s0 [B, H, F, Dv], z0 [B, H, F] (zeros if None):
  quadratic: out = (phi(Q) phi(K)^T * tril) V / row sums, O(L^2) time and memory: the
    definition; the initial state adds phi(q_i) S_0 to row i's numerator, phi(q_i).z_0 to its sum.
  cumsum: the running sums S_i = S_0 + sum_{j<=i} phi(k_j) v_j^T materialised, O(L F Dv)
    memory; `linear_attention(form="cumsum")`.
A query whose features share no support with any key outputs 0.
"""

import jax.numpy as jnp

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


def cumsum(fq, fk, v, s0, z0):
    """Prefix sums over tokens, then phi(q_i) S_i / phi(q_i).z_i; shapes: module docstring."""
    s = jnp.cumsum(jnp.einsum("blhf,blhv->blhfv", fk, v), axis=1) + s0[:, None]
    z = jnp.cumsum(fk, axis=1) + z0[:, None]
    num = jnp.einsum("blhf,blhfv->blhv", fq, s)
    return divide(num, jnp.einsum("blhf,blhf->blh", fq, z)[..., None])
