"""The chunk of the (gated) delta rule for the Pallas driver (`driver.py`): DeltaNet, and Gated
DeltaNet with a scalar log-gate per head and step.

The mathematics of `delta/chunk.py` (the reference: the WY representation, fla's
chunk_gated_delta_rule), for one chunk of one head, from the entering state S. With G the
inclusive cumulative log-gate (a lower-triangular matmul, not a cumsum) and D_ts = exp(G_t -
G_s) for s <= t in one segment (all <= 1):
  T = (I + A)^{-1},  A_ts = beta_t D_ts k_t.k_s (s < t),
  W_k = T diag(beta exp(G)) K,  W_v = T diag(beta) V,  U = W_v - W_k S,
  O = diag(exp(G)) Q S + (Q K^T * D) U,  S' = exp(G_C) S + (diag(exp(G_C - G)) K)^T U.
T is formed by forward substitution over the chunk's rows (a `fori_loop`; each row one
[1, C] x [C, C] product, the row picked by an iota mask: Mosaic slices no value at a dynamic
row), with the VJP dA = -T^T dT T^T. Packed sequences mask D, exp(G) (the entering state reaches
only its own segment) and exp(G_C - G) (only the last segment reaches the exit state), as in
`gla.py`.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from research.ops.attention.pallas import driver
from research.ops.attention.pallas.tiles import dot, dot_nt, dot_t, iota, row, segment_masks


def _exp_where(mask, x):
    """exp(x) where mask, else 0, with no inf or NaN in either branch or its gradient."""
    return jnp.where(mask, jnp.exp(jnp.where(mask, x, 0.0)), 0.0)


def _substitute(a):
    c = a.shape[0]
    rows, cols = iota((c, c), 0), iota((c, c), 1)

    def body(i, t):  # row i of T: e_i - a_i T (a_i is zero from column i on)
        a_i = jnp.sum(jnp.where(rows == i, a, 0.0), axis=0, keepdims=True)
        t_i = jnp.where(iota((1, c), 1) == i, 1.0, 0.0) - dot(a_i, t)
        return jnp.where(rows == i, t_i, t)

    return lax.fori_loop(1, c, body, (rows == cols).astype(jnp.float32))


@jax.custom_vjp
def unit_lower_inverse(a):
    """(I + a)^{-1} for strictly lower-triangular a [C, C]."""
    return _substitute(a)


def _inverse_fwd(a):
    t = _substitute(a)
    return t, t


def _inverse_bwd(t, dt):
    return (-dot_nt(dot_t(t, dt), t),)


unit_lower_inverse.defvjp(_inverse_fwd, _inverse_bwd)


def chunk_step(q, k, v, beta, g, s, start, c0, *, packed: bool, scale: float, state_only=False):
    """One chunk: q (multiplied by `scale` here), k [C, Dk], v [C, Dv], beta [C, 1], g [C, 1]
    or None (DeltaNet), fp32; s [Dk, Dv]; start [C, 1] int32 and c0 as in `gla.chunk_step`.
    Returns (o [C, Dv], the exit state [Dk, Dv]); with state_only, (None, the exit state)."""
    c_len = q.shape[0]
    q = q * scale
    rows, cols = iota((c_len, c_len), 0), iota((c_len, c_len), 1)
    causal = cols <= rows
    from_state = jnp.ones((c_len, 1), bool)
    to_state = jnp.ones((c_len, 1), bool)
    keep = jnp.ones((1, 1), bool)
    if packed:
        causal, from_state, to_state, keep = segment_masks(start, c0, c_len)
    if g is None:
        big_g = jnp.zeros((c_len, 1), jnp.float32)
    else:
        big_g = dot((cols <= rows).astype(jnp.float32), g)  # G_t, inclusive, <= 0
    g_last = big_g[c_len - 1 :, :]
    decay_ts = _exp_where(causal, big_g - row(big_g))
    decay_q = _exp_where(from_state, big_g)
    decay_k = _exp_where(to_state, g_last - big_g)
    decay = _exp_where(keep, g_last)
    a = jnp.where(cols < rows, beta * decay_ts * dot_nt(k, k), 0.0)
    t = unit_lower_inverse(a)
    w_k = dot(t, (beta * decay_q) * k)
    w_v = dot(t, beta * v)
    u = w_v - dot(w_k, s)
    s_out = decay * s + dot_t(decay_k * k, u)
    if state_only:
        return None, s_out
    return dot(decay_q * q, s) + dot(dot_nt(q, k) * decay_ts, u), s_out


def step(q, k, v, beta, *rest, start, c0, packed: bool, scale: float, state_only=False):
    """`chunk_step` in the driver's calling convention: (q, k, v, beta, s) or with g before s."""
    g, s = rest if len(rest) == 2 else (None, rest[0])
    return chunk_step(
        q, k, v, beta, g, s, start, c0, packed=packed, scale=scale, state_only=state_only
    )


def chunked(q, k, v, beta, g, reset, s0, *, scale: float, chunk: int):
    """As `delta.chunk.chunked` (the reference): q, k [B, L, H, Dk] (k, v repeated to H heads),
    v [B, L, H, Dv], beta [B, L, H], g [B, L, H] or None, reset [B, L] bool or None, s0 [B, H,
    Dk, Dv]. Returns (out [B, L, H, Dv] fp32, final state [B, H, Dk, Dv] fp32)."""
    fn = functools.partial(step, packed=reset is not None, scale=float(scale))
    xs = (q, k, v, beta.astype(jnp.float32))  # beta and g travel lane-dense
    if g is not None:
        xs = (*xs, g.astype(jnp.float32))
    return driver.run(fn, xs, reset, s0, chunk=chunk)
