"""Readable reference for gated linear attention (as fla keeps naive.py): a Python loop over
tokens, autodiff'd, O(L) traced steps; for tests only (`form="naive"`).

Inputs as `recurrent.py` takes them: q (already scaled), k, v fp32 [B, L, H, .] with k, v
repeated to H heads, the log-gates g [B, L, H, Dk] or [B, L, H, 1], `keep` [B, L] fp32 (0 at
the first token of a new segment, where the state restarts from zero) or None, and the initial
state s0 [B, H, Dk, Dv]:
  S_t = keep_t diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t.
"""

import jax.numpy as jnp


def loop(q, k, v, g, keep, s0):
    """The recurrence token by token; returns (out [B, L, H, Dv] fp32, final state)."""
    s, outs = s0, []
    for t in range(q.shape[1]):
        a = jnp.exp(g[:, t])[..., None]  # [B, H, Dk or 1, 1]
        if keep is not None:
            a = a * keep[:, t, None, None, None]
        s = a * s + jnp.einsum("bhd,bhv->bhdv", k[:, t], v[:, t])
        outs.append(jnp.einsum("bhd,bhdv->bhv", q[:, t], s))
    return jnp.stack(outs, axis=1), s
