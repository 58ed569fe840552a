"""The (gated) delta rule, chunked: the WY representation (the UT transform), as fla's
chunk_delta_rule / chunk_gated_delta_rule (Yang et al., "Parallelizing Linear Transformers with
the Delta Rule over Sequence Length", NeurIPS 2024; "Gated Delta Networks", ICLR 2025).

Write the step as S_t = a_t S_{t-1} + k_t u_t^T with u_t = beta_t (v_t - a_t S_{t-1}^T k_t).
Inside a chunk of C tokens starting from state S_0, with G_t = sum_{r<=t} g_r the cumulative
log-gate (a product with a lower-triangular ones matrix, not a cumsum) and D_ts = exp(G_t - G_s)
(s <= t; relative decays, all <= 1, so g down to -20 per token stays finite in fp32):
  (I + A) U = diag(beta) V - diag(beta exp(G)) K S_0,  A_ts = beta_t D_ts k_t.k_s for s < t,
so U = W_v - W_k S_0 with [W_k | W_v] = (I + A)^{-1} [diag(beta exp(G)) K | diag(beta) V]
(one unit-lower-triangular solve per chunk; A does not depend on S_0). Then
  O = diag(exp(G)) Q S_0 + (tril(Q K^T) * D) U,
  S_C = exp(G_C) S_0 + (diag(exp(G_C - G)) K)^T U.
Everything but the last three products is computed for all chunks of a block at once; a
lax.scan over the block's chunks carries S, and a fori_loop over blocks (about `block_bytes` per
[B, H, T, D] array, as linear attention's kernel) carries it on. The hand-written VJP keeps one
state per block and recomputes each block in reverse: no per-token or per-chunk states.

Packed sequences: `reset` gives every token a local segment index; D_ts is zero across segments,
and exp(G_t) (token t sees S_0) is zero unless t is in S_0's segment (the chunk's previous token's;
the initial state's for the first chunk).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

from research.ops.attention.common import pad_axis
from research.ops.attention.linear.chunk import chunk_blocks


def _chunks(x, n: int, c: int, axis: int):
    """Splits `axis` (length n c) of x into [n, c]."""
    return x.reshape(*x.shape[:axis], n, c, *x.shape[axis + 1 :])


def _exp_where(mask, x):
    """exp(x) where mask, else 0, with no inf or NaN in either branch or its gradient."""
    return jnp.where(mask, jnp.exp(jnp.where(mask, x, 0.0)), 0.0)


def chunk_operands(q, k, v, beta, g, reset, chunk: int):
    """The per-chunk products that do not depend on the carried state, for all chunks at once.

    Shapes: module docstring of `recurrent.py`; the length is padded to a multiple of `chunk`
    (padding tokens have beta = 0, g = 0: they leave the state unchanged). Returns, with n
    chunks, [B, H, n, C, .] arrays w_k, w_v, qg = diag(exp(G)) Q, kend = diag(exp(G_C - G)) K,
    p = tril(Q K^T) * D [B, H, n, C, C], and the chunk's decay of S_0, decay [B, H, n]."""
    length = q.shape[2]
    n = -(-length // chunk)
    q, k, v, beta, g = (_chunks(pad_axis(x, 2, n * chunk), n, chunk, 2) for x in (q, k, v, beta, g))
    reset = _chunks(pad_axis(reset, 1, n * chunk), n, chunk, 1)  # [B, n, C]
    # Local segment index of every token; the chunk's S_0 belongs to the segment of the token
    # before the chunk (segment 0, the initial state's, for the first chunk).
    seg = jnp.cumsum(reset.reshape(reset.shape[0], -1), axis=1).reshape(reset.shape)
    seg0 = jnp.concatenate([jnp.zeros_like(seg[:, :1, 0]), seg[:, :-1, -1]], axis=1)  # [B, n]
    seg, seg0 = seg[:, None], seg0[:, None]  # broadcast over heads
    tri = jnp.tril(jnp.ones((chunk, chunk), jnp.float32))
    big_g = jnp.einsum("ts,bhns->bhnt", tri, g)  # G_t, inclusive
    causal = tri.astype(bool) & (seg[..., :, None] == seg[..., None, :])
    decay_ts = _exp_where(causal, big_g[..., :, None] - big_g[..., None, :])  # D_ts
    from_start = seg == seg0[..., None]  # token t sees S_0
    decay_q = _exp_where(from_start, big_g)  # exp(G_t)
    last = seg[..., -1:] == seg  # tokens whose k u^T reaches the chunk's final state
    decay_k = _exp_where(last, big_g[..., -1:] - big_g)  # exp(G_C - G_s)
    decay = _exp_where(from_start[..., -1], big_g[..., -1])  # exp(G_C)
    strict = jnp.tril(jnp.ones((chunk, chunk), bool), -1)
    kk = jnp.einsum("bhntk,bhnsk->bhnts", k, k)
    a = jnp.where(strict, beta[..., :, None] * decay_ts * kk, 0.0)
    rhs = jnp.concatenate([(beta * decay_q)[..., None] * k, beta[..., None] * v], axis=-1)
    w = solve_triangular(a, rhs, lower=True, unit_diagonal=True)  # (I + A)^{-1} rhs
    dk = k.shape[-1]
    p = jnp.einsum("bhntk,bhnsk->bhnts", q, k) * decay_ts
    return w[..., :dk], w[..., dk:], decay_q[..., None] * q, decay_k[..., None] * k, p, decay


def chunk_scan(s0, w_k, w_v, qg, kend, p, decay):
    """Carries S across the chunks of `chunk_operands`: per chunk U = W_v - W_k S,
    O = Qg S + P U, S <- decay S + Kend^T U. Returns (final S, o [B, H, n C, Dv])."""

    def step(s, xs):
        w_k, w_v, qg, kend, p, decay = xs
        u = w_v - jnp.einsum("bhck,bhkv->bhcv", w_k, s)
        o = jnp.einsum("bhck,bhkv->bhcv", qg, s) + jnp.einsum("bhts,bhsv->bhtv", p, u)
        s = decay[..., None, None] * s + jnp.einsum("bhck,bhcv->bhkv", kend, u)
        return s, o

    xs = tuple(jnp.moveaxis(x, 2, 0) for x in (w_k, w_v, qg, kend, p, decay))
    s, o = lax.scan(step, s0, xs)  # o [n, B, H, C, Dv]
    o = jnp.moveaxis(o, 0, 2)
    return s, o.reshape(*o.shape[:2], -1, o.shape[-1])


def _block(s, q, k, v, beta, g, reset, scale, chunk):
    """One block of tokens, token-major in ([B, T, H, .], beta and g [B, T, H], reset [B, T]) and
    out (o [B, T, H, Dv] fp32), from the state s before it; returns (o, state after it)."""
    heads = lambda x: jnp.swapaxes(x, 1, 2).astype(jnp.float32)  # noqa: E731
    ops = chunk_operands(heads(q) * scale, heads(k), heads(v), heads(beta), heads(g), reset, chunk)
    s, o = chunk_scan(s, *ops)
    return jnp.swapaxes(o, 1, 2), s


def _zeros(shape, *like):
    """fp32 zeros that, inside shard_map, vary over the same mesh axes as the arrays `like` (a
    loop's carries must keep their type; zeros_like carries it, a sum unions it)."""
    return sum((jnp.zeros_like(x, jnp.float32, shape=()) for x in like), jnp.zeros(shape))


def _geometry(q, v, chunk: int, block_bytes: int | None) -> tuple[int, int]:
    """(tokens per block, number of blocks): whole chunks per block, a block's [B, H, T, D] fp32
    array about `block_bytes` (the same layout as linear attention's chunked kernel)."""
    b, length, h, dk = q.shape
    nc, nb = chunk_blocks(length, chunk, 4 * b * h * max(dk, v.shape[-1]), v.shape[-1], block_bytes)
    return nc * chunk, nb


def _slices(xs, start, size):
    return [lax.dynamic_slice_in_dim(x, start, size, axis=1) for x in xs]


def _forward(q, k, v, beta, g, reset, s0, scale, chunk, block_bytes):
    length = q.shape[1]
    t, nb = _geometry(q, v, chunk, block_bytes)
    # Padding tokens (beta = 0, g = 0, no reset) leave the state unchanged.
    xs = [pad_axis(x, 1, nb * t) for x in (q, k, v, beta, g, reset)]

    def body(i, carry):
        s, out, starts = carry
        starts = lax.dynamic_update_index_in_dim(starts, s, i, axis=0)
        o, s = _block(s, *_slices(xs, i * t, t), scale, chunk)
        out = lax.dynamic_update_slice_in_dim(out, o.astype(out.dtype), i * t, axis=1)
        return s, out, starts

    ins = (q, k, v, beta, g, s0)
    s0 = s0 + _zeros((), *ins)
    out = _zeros((*q.shape[:1], nb * t, *v.shape[2:]), *ins).astype(q.dtype)
    s, out, starts = lax.fori_loop(0, nb, body, (s0, out, _zeros((nb, *s0.shape), *ins)))
    return out[:, :length], s, starts


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def chunked(q, k, v, beta, g, reset, s0, scale, chunk, block_bytes):
    """Chunked (gated) delta rule on token-major inputs: q, k [B, L, H, Dk] (q not yet scaled;
    `scale` is applied here), v [B, L, H, Dv], beta, g [B, L, H], reset [B, L] bool, s0
    [B, H, Dk, Dv] fp32. Returns (o [B, L, H, Dv] in the dtype of q, final state fp32).

    Blocks of whole chunks (about `block_bytes` per [B, H, T, D] array) are walked by a
    fori_loop that keeps only each block's starting state; the hand-written VJP walks the blocks
    in reverse, recomputing each block's forward and taking its VJP. So the backward holds
    O(L / T) states and one block's intermediates, not per-token (or per-chunk) states."""
    out, s, _ = _forward(q, k, v, beta, g, reset, s0, scale, chunk, block_bytes)
    return out, s


def _chunked_fwd(q, k, v, beta, g, reset, s0, scale, chunk, block_bytes):
    out, s, starts = _forward(q, k, v, beta, g, reset, s0, scale, chunk, block_bytes)
    return (out, s), (q, k, v, beta, g, reset, s0, starts)


def _chunked_bwd(scale, chunk, block_bytes, res, cotangents):
    q, k, v, beta, g, reset, s0, starts = res
    do, ds = cotangents
    length = q.shape[1]
    t, nb = _geometry(q, v, chunk, block_bytes)
    xs = [pad_axis(x, 1, nb * t) for x in (q, k, v, beta, g, reset, do)]
    diff = xs[:5]

    def body(j, carry):
        ds, grads = carry
        i = nb - 1 - j
        q_b, k_b, v_b, beta_b, g_b, reset_b, do_b = _slices(xs, i * t, t)
        fn = lambda s, *a: _block(s, *a, reset_b, scale, chunk)  # noqa: E731
        _, vjp = jax.vjp(fn, starts[i], q_b, k_b, v_b, beta_b, g_b)
        ds, *dx = vjp((do_b.astype(jnp.float32), ds))
        grads = [
            lax.dynamic_update_slice_in_dim(a, d.astype(a.dtype), i * t, axis=1)
            for a, d in zip(grads, dx, strict=True)
        ]
        return ds, grads

    ins = (q, k, v, beta, g, do, ds, starts)
    grads = [_zeros(x.shape, *ins).astype(x.dtype) for x in diff]
    ds0, grads = lax.fori_loop(0, nb, body, (ds.astype(jnp.float32) + _zeros((), *ins), grads))
    dq, dk, dv, dbeta, dg = (x[:, :length] for x in grads)
    return dq, dk, dv, dbeta, dg, None, ds0.astype(s0.dtype)


chunked.defvjp(_chunked_fwd, _chunked_bwd)
