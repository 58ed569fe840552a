"""Ring attention (Liu et al. 2023): causal or full softmax attention with the sequence sharded
over a mesh axis, K/V blocks passed around the ring (`research.ops.attention.context_parallel`
describes the family and its communication; `cp.ring_attention` is this function)."""

# jaxtyping shape strings ("B L H D") are not forward references.

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from research.ops.attention.common import check_qkv, mesh_axis_size, repeat_kv
from research.ops.attention.softmax import online_softmax_update
from research.ops.checks import check_bool


def ring_attention(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B N Hkv D"],
    v: Float[Array, "B N Hkv Dv"],
    *,
    axis_name: str,
    axis_size: int | None = None,
    causal: bool = True,
    scale: float | None = None,
) -> Float[Array, "B N H Dv"]:
    """Ring attention on this device's block: out_i = softmax over all keys j (<= i if causal).

    q [B, L/P, H, D], k [B, L/P, Hkv, D], v [B, L/P, Hkv, Dv]. Logits and sums in fp32. The
    backward pass is its own second ring (as ring-flash kernels do): it keeps only this device's
    q, k, v, output and log-sum-exp, recomputes each step's logits, and passes the K/V blocks
    round again with their fp32 gradients travelling beside them, home after P hops. A custom
    VJP: reverse mode only (no jax.jvp), and `scale` is a Python number, not a traced value.
    """
    check_bool("causal", causal)
    check_qkv(q, k, v)
    axis_size = mesh_axis_size(axis_name, axis_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise ValueError(f"scale must be a Python number (a constant of the ring), got {scale!r}")
    return _ring(q, k, v, axis_name, axis_size, causal, scale)


def _ring_logits(qt, kb, s, axis_name, size, causal, scale):
    """Logits of this device's queries against the K block from device idx - s, masked."""
    n = qt.shape[2]
    logits = jnp.einsum("bhqd,bhkd->bhqk", qt, kb) * scale
    if causal:
        idx = lax.axis_index(axis_name)
        src, pos = (idx - s) % size, jnp.arange(n)  # src: which device's keys these are
        visible = (src * n + pos[None, :]) <= (idx * n + pos[:, None])
        logits = jnp.where(visible, logits, -jnp.inf)
    return logits


def _heads_first(x, heads):  # [B, n, Hkv, D] -> [B, H, n, D] fp32, k/v heads repeated
    return jnp.swapaxes(repeat_kv(x, heads), 1, 2).astype(jnp.float32)


def _ring_perm(size):
    return [(i, (i + 1) % size) for i in range(size)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _ring(q, k, v, axis_name, size, causal, scale):
    return _ring_fwd(q, k, v, axis_name, size, causal, scale)[0]


def _ring_fwd(q, k, v, axis_name, size, causal, scale):
    b, n, h, _ = q.shape
    qt = jnp.swapaxes(q, 1, 2).astype(jnp.float32)  # [B, H, n, D]

    def merge(carry, kv, s):
        kb, vb = (_heads_first(x, h) for x in kv)
        logits = _ring_logits(qt, kb, s, axis_name, size, causal, scale)
        return online_softmax_update(carry, logits, vb)

    carry = (jnp.full((b, h, n), -jnp.inf), jnp.zeros((b, h, n)), jnp.zeros((b, h, n, v.shape[-1])))
    carry = merge(carry, (k, v), 0)

    def step(s, state):  # a loop, not unrolled: compile time stays flat in the ring size
        carry, kv = state
        kv = jax.tree.map(lambda t: lax.ppermute(t, axis_name, _ring_perm(size)), kv)
        return merge(carry, kv, s), kv

    (m, l, acc), _ = lax.fori_loop(1, size, step, (carry, (k, v)))
    out = acc / jnp.where(l > 0, l, 1.0)[..., None]  # [B, H, n, Dv] fp32
    lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), -jnp.inf)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype), (q, k, v, out, lse)


def _ring_bwd(axis_name, size, causal, scale, res, dout):
    """FlashAttention-2's backward, one K/V block per ring step; dK, dV travel with the block."""
    q, k, v, out, lse = res
    b, n, h, _ = q.shape
    hkv = k.shape[2]
    qt = jnp.swapaxes(q, 1, 2).astype(jnp.float32)
    do = jnp.swapaxes(dout, 1, 2).astype(jnp.float32)  # [B, H, n, Dv]
    delta = jnp.sum(do * out, axis=-1)  # [B, H, n]
    lse_safe = jnp.where(jnp.isfinite(lse), lse, 0.0)

    def to_kv_heads(x):  # [B, H, n, D] -> [B, n, Hkv, D]: sums each group of query heads
        x = x.reshape(b, hkv, h // hkv, n, x.shape[-1]).sum(axis=2)
        return jnp.swapaxes(x, 1, 2)

    def block(dq, kv, dkv, s):
        kb, vb = (_heads_first(x, h) for x in kv)
        logits = _ring_logits(qt, kb, s, axis_name, size, causal, scale)
        p = jnp.exp(logits - lse_safe[..., None])  # 0 where masked
        dp = jnp.einsum("bhqd,bhkd->bhqk", do, vb)
        ds = p * (dp - delta[..., None])
        dq = dq + jnp.einsum("bhqk,bhkd->bhqd", ds, kb) * scale
        dk = jnp.einsum("bhqk,bhqd->bhkd", ds, qt) * scale
        dv = jnp.einsum("bhqk,bhqd->bhkd", p, do)
        return dq, (dkv[0] + to_kv_heads(dk), dkv[1] + to_kv_heads(dv))

    zeros = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    dq, dkv = block(jnp.zeros(qt.shape, jnp.float32), (k, v), zeros, 0)

    def step(s, state):
        dq, kv, dkv = state
        kv, dkv = jax.tree.map(lambda t: lax.ppermute(t, axis_name, _ring_perm(size)), (kv, dkv))
        dq, dkv = block(dq, kv, dkv, s)
        return dq, kv, dkv

    dq, _, dkv = lax.fori_loop(1, size, step, (dq, (k, v), dkv))
    # home: the P-th hop, in the inputs' dtype (the sums are done)
    dk, dv = (
        lax.ppermute(t.astype(x.dtype), axis_name, _ring_perm(size))
        for t, x in zip(dkv, (k, v), strict=True)
    )
    return jnp.swapaxes(dq, 1, 2).astype(q.dtype), dk, dv


_ring.defvjp(_ring_fwd, _ring_bwd)
