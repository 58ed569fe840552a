"""Readable reference for the (gated) delta rule, as fla keeps naive.py: one token at a time in
a Python loop, autodiff'd. Slow; for tests and for reading.

Inputs are head-major fp32: q (already scaled), k [B, H, L, Dk], v [B, H, L, Dv], beta and the
log-gate g [B, H, L], `reset` [B, L] bool (True: the state restarts from zero before this token)
and the initial state s0 [B, H, Dk, Dv]:
  S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,  o_t = S_t^T q_t.
"""

import jax.numpy as jnp


def loop(q, k, v, beta, g, reset, s0):
    """The recurrence token by token; returns (o [B, H, L, Dv], final state [B, H, Dk, Dv])."""
    s, outs = s0, []
    for t in range(q.shape[2]):
        s = jnp.where(reset[:, t, None, None, None], 0.0, s)
        k_t, v_t, b_t = k[:, :, t], v[:, :, t], beta[:, :, t, None, None]
        ks = jnp.einsum("bhk,bhkv->bhv", k_t, s)  # k_t^T S_{t-1}
        s = jnp.exp(g[:, :, t, None, None]) * (s - b_t * k_t[..., None] * ks[..., None, :])
        s = s + b_t * k_t[..., None] * v_t[..., None, :]
        outs.append(jnp.einsum("bhkv,bhk->bhv", s, q[:, :, t]))
    return jnp.stack(outs, axis=2), s
