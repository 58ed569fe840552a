"""The (gated) delta rule as a recurrence over tokens (fla: fused_recurrent_delta_rule,
fused_recurrent_gated_delta_rule):
  S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,  o_t = S_t^T q_t,  a_t = exp(g_t).

`recurrence` is that one step; the scan form and the decode step both use it. Inputs are
head-major fp32 (q already scaled): q, k [B, H, L, Dk], v [B, H, L, Dv], beta, g [B, H, L],
`reset` [B, L] bool (True: the state restarts from zero before this token), s0 [B, H, Dk, Dv].
"""

import jax
import jax.numpy as jnp
from jax import lax

from research.ops.attention.common import pad_axis


def recurrence(s, q_t, k_t, v_t, beta_t, g_t, reset_t):
    """One token: q_t, k_t [B, H, Dk], v_t [B, H, Dv], beta_t, g_t [B, H], reset_t [B] bool,
    s [B, H, Dk, Dv] before it -> (s after it, o_t [B, H, Dv]). Written as
    S = a S + k u^T with u = beta (v - S^T k): no Dk x Dk matrix is formed."""
    s = jnp.where(reset_t[:, None, None, None], 0.0, s)
    s = jnp.exp(g_t)[..., None, None] * s
    u = beta_t[..., None] * (v_t - jnp.einsum("bhk,bhkv->bhv", k_t, s))
    s = s + k_t[..., None] * u[..., None, :]
    return s, jnp.einsum("bhkv,bhk->bhv", s, q_t)


def scan(q, k, v, beta, g, reset, s0, steps_per_checkpoint: int = 64):
    """lax.scan over tokens; returns (o [B, H, L, Dv], final state). For gradients, the states
    are kept only every `steps_per_checkpoint` tokens (an outer scan over groups of tokens whose
    inner scan is rematerialised), so the backward holds O(L / T + T) states, not O(L)."""
    length = q.shape[2]
    t = max(1, min(steps_per_checkpoint, length))
    n = -(-length // t)
    # Padding tokens (beta = 0, g = 0, no reset) leave the state unchanged.
    xs = [pad_axis(x, 2, n * t) for x in (q, k, v, beta, g)] + [pad_axis(reset, 1, n * t)]
    # -> [n, t, B, H, ...] (reset: [n, t, B]), group-major then token-major.
    xs = [
        jnp.moveaxis(x.reshape(*x.shape[:2], n, t, *x.shape[3:]), (2, 3), (0, 1)) for x in xs[:5]
    ] + [jnp.moveaxis(xs[5].reshape(-1, n, t), (1, 2), (0, 1))]

    def token(s, x):
        return recurrence(s, *x)

    @jax.checkpoint
    def group(s, x):
        return lax.scan(token, s, x)

    # Inside shard_map the carry must vary over the same mesh axes as the inputs make it.
    s0 = s0 + sum(jnp.zeros_like(x, jnp.float32, shape=()) for x in (q, k, v, beta, g))
    s, o = lax.scan(group, s0, xs)
    o = jnp.moveaxis(o, (0, 1), (2, 3)).reshape(*o.shape[2:4], n * t, -1)
    return o[:, :, :length], s
