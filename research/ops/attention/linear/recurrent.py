"""Causal linear attention as a recurrence over tokens (Katharopoulos et al. 2020, "Transformers
are RNNs"): S_t = S_{t-1} + phi(k_t) v_t^T, z_t = z_{t-1} + phi(k_t),
out_t = phi(q_t) S_t / phi(q_t).z_t.

`recurrence` is that one step; the scan form (with a reverse-scan VJP) and the decode step both
use it. Everything here takes features: fp32 phi(q), phi(k) with padded keys already zeroed.
"""

# jaxtyping shape strings ("B L H D") are not forward references.

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from research.ops.attention.common import divide


class LinearAttentionState(NamedTuple):
    """Recurrent state of causal linear attention.

    s: [batch, heads, feature_dim, value_dim] fp32, sum_j phi(k_j) v_j^T.
    z: [batch, heads, feature_dim] fp32, sum_j phi(k_j).
    """

    s: Float[Array, "B H F Dv"]
    z: Float[Array, "B H F"]


def recurrence(s, z, fq_t, fk_t, v_t):
    """One token: fq_t, fk_t [B, H, F], v_t [B, H, Dv], the state s [B, H, F, Dv], z [B, H, F]
    before it -> (s, z after it, num [B, H, Dv], den [B, H]); out_t = num / den."""
    s = s + jnp.einsum("bhf,bhv->bhfv", fk_t, v_t)
    z = z + fk_t
    num = jnp.einsum("bhf,bhfv->bhv", fq_t, s)
    den = jnp.einsum("bhf,bhf->bh", fq_t, z)
    return s, z, num, den


def decode_step(state: LinearAttentionState, fq_t, fk_t, v_t):
    """One causal step on features: fq_t, fk_t [B, H, F] fp32, v_t [B, H, Dv] fp32.
    Returns (new state, out_t [B, H, Dv] fp32)."""
    s, z, num, den = recurrence(state.s, state.z, fq_t, fk_t, v_t)
    return LinearAttentionState(s, z), divide(num, den[..., None])


def prefix_state(fk, v) -> LinearAttentionState:
    """State after a whole prefix: fk [B, L, H, F] (padded keys zeroed), v [B, L, H, Dv] fp32."""
    s = jnp.einsum("blhf,blhv->bhfv", fk, v)
    return LinearAttentionState(s, jnp.sum(fk, axis=1))


def scan(fq, fk, v, state: LinearAttentionState):
    """Token recurrence with a hand-written VJP (see `_scan_bwd`): O(d^2) memory for gradients.
    fq, fk [B, L, H, F], v [B, L, H, Dv] fp32 -> out [B, L, H, Dv] fp32."""
    return _scan(fq, fk, v, state.s, state.z)


def _scan_steps(fq, fk, v, s0, z0, g=None):
    """Forward recurrence over tokens. With cotangents g it also returns, per token,
    dq_t = S_t dnum_t + z_t dden_t, dnum_t = g_t / den_t and dden_t = -(g_t . out_t) / den_t."""

    def step(carry, xs):
        s, z = carry
        fq_t, fk_t, v_t = xs[:3]
        s, z, num, den = recurrence(s, z, fq_t, fk_t, v_t)
        inv = divide(1.0, den)[..., None]
        out = num * inv
        if g is None:
            return (s, z), out
        dnum = xs[3] * inv
        dden = -jnp.sum(xs[3] * out, axis=-1, keepdims=True) * inv
        dq = jnp.einsum("bhfv,bhv->bhf", s, dnum) + z * dden
        return (s, z), (dq, dnum, dden)

    xs = tuple(jnp.swapaxes(x, 0, 1) for x in (fq, fk, v) + (() if g is None else (g,)))
    return lax.scan(step, (s0, z0), xs)[1]


@jax.custom_vjp
def _scan(fq, fk, v, s0, z0):
    return jnp.swapaxes(_scan_steps(fq, fk, v, s0, z0), 0, 1)


def _scan_fwd(fq, fk, v, s0, z0):
    return _scan(fq, fk, v, s0, z0), (fq, fk, v, s0, z0)


def _scan_bwd(res, g):
    """Reverse-scan VJP (the Performer trick, with the forward states recomputed, not
    subtracted): dk_t = R_t v_t + r_t, dv_t = R_t^T phi(k_t), with R_t = sum_{u>=t} phi(q_u)
    dnum_u^T and r_t = sum_{u>=t} phi(q_u) dden_u carried backwards; R_0, r_0 are the
    gradients of the initial state."""
    fq, fk, v, s0, z0 = res
    dq, dnum, dden = _scan_steps(fq, fk, v, s0, z0, g)  # time-major [L, B, H, .]

    def back(carry, xs):
        r_s, r_z = carry
        fq_t, fk_t, v_t, dnum_t, dden_t = xs
        r_s = r_s + jnp.einsum("bhf,bhv->bhfv", fq_t, dnum_t)
        r_z = r_z + fq_t * dden_t
        dk = jnp.einsum("bhfv,bhv->bhf", r_s, v_t) + r_z
        dv = jnp.einsum("bhfv,bhf->bhv", r_s, fk_t)
        return (r_s, r_z), (dk, dv)

    xs = tuple(jnp.swapaxes(x, 0, 1) for x in (fq, fk, v)) + (dnum, dden)
    (ds0, dz0), (dk, dv) = lax.scan(
        back, (jnp.zeros_like(s0), jnp.zeros_like(z0)), xs, reverse=True
    )
    t = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    return t(dq), t(dk), t(dv), ds0, dz0


_scan.defvjp(_scan_fwd, _scan_bwd)
