"""Gated linear attention as a recurrence over tokens (fla's fused_recurrent_gla):
  S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t   (q already scaled).

`recurrence` is that one step; the scan form and the decode step both use it. The scan walks
blocks of tokens with a rematerialised body, so its backward stores one state per block, not
per token (O(L/block d^2) memory), and recomputes a block's token states when it needs them.
Inputs are fp32 with k, v repeated to H heads; g is [.., H, Dk] or [.., H, 1] (a scalar gate
per head, broadcast over Dk); `keep` is 0 at a token that starts a new segment (the state
restarts from zero there) and 1 elsewhere.
"""

import jax
import jax.numpy as jnp
from jax import lax

from research.ops.attention.common import pad_axis


def recurrence(s, q_t, k_t, v_t, g_t, keep_t=None):
    """One token: q_t, k_t [B, H, Dk], v_t [B, H, Dv], g_t [B, H, Dk or 1], keep_t [B] or None,
    the state s [B, H, Dk, Dv] before it -> (state after it, o_t [B, H, Dv])."""
    a = jnp.exp(g_t)[..., None]
    if keep_t is not None:
        a = a * keep_t[:, None, None, None]
    s = a * s + jnp.einsum("bhd,bhv->bhdv", k_t, v_t)
    return s, jnp.einsum("bhd,bhdv->bhv", q_t, s)


def scan(q, k, v, g, keep, s0, block: int):
    """The token recurrence, `block` tokens per rematerialised step. q, k [B, L, H, Dk],
    v [B, L, H, Dv], g [B, L, H, Dk or 1], keep [B, L] or None, s0 [B, H, Dk, Dv].
    Returns (out [B, L, H, Dv] fp32, final state)."""
    b, length, h, _ = q.shape
    n = -(-length // block)
    # Padded tokens have k = v = 0 and g = 0 (keep = 1): they leave the state as it is.
    xs = [pad_axis(x, 1, n * block) for x in (q, k, v, g)]
    if keep is not None:
        xs.append(pad_axis(keep, 1, n * block, 1.0))
    # [B, n*block, ...] -> [n, block, B, ...]: the outer scan walks blocks, the inner tokens.
    xs = [jnp.moveaxis(x.reshape(b, n, block, *x.shape[2:]), (1, 2), (0, 1)) for x in xs]

    @jax.checkpoint
    def one_block(s, xb):
        def step(s, xt):
            return recurrence(s, *xt)

        return lax.scan(step, s, tuple(xb))

    s0 = s0 + sum(jnp.zeros_like(x, shape=()) for x in xs)  # carry type inside shard_map
    s, out = lax.scan(one_block, s0, tuple(xs))
    out = jnp.moveaxis(out, (0, 1), (1, 2)).reshape(b, n * block, h, -1)
    return out[:, :length], s


def decode_step(s, q_t, k_t, v_t, g_t, keep_t=None):
    """One decoding step; shapes as `recurrence`. Returns (new state, o_t [B, H, Dv])."""
    return recurrence(s, q_t, k_t, v_t, g_t, keep_t)
