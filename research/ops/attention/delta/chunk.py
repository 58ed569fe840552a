"""The (gated) delta rule, chunked: the WY representation (the UT transform), as fla's
chunk_delta_rule / chunk_gated_delta_rule (Yang et al., "Parallelizing Linear Transformers with
the Delta Rule over Sequence Length", NeurIPS 2024; "Gated Delta Networks", ICLR 2025).

Write the step as S_t = a_t S_{t-1} + k_t u_t^T with u_t = beta_t (v_t - a_t S_{t-1}^T k_t).
Inside a chunk of C tokens starting from state S_0, with G_t = sum_{r<=t} g_r the cumulative
log-gate (a product with a lower-triangular ones matrix, not a cumsum) and D_ts = exp(G_t - G_s)
(s <= t; relative decays, all <= 1, so g down to -20 per token stays finite in fp32):
  (I + A) U = diag(beta) V - diag(beta exp(G)) K S_0,  A_ts = beta_t D_ts k_t.k_s for s < t,
so U = W_v - W_k S_0 with [W_k | W_v] = T [diag(beta exp(G)) K | diag(beta) V], T = (I + A)^{-1}
(A does not depend on S_0). With P = tril(Q K^T) * D, Kend = diag(exp(G_C - G)) K:
  O   = Q' S_0 + P W_v,            Q' = diag(exp(G)) Q - P W_k,
  S_C = M S_0 + B,                 M = exp(G_C) I - Kend^T W_k,  B = Kend^T W_v.
Everything but the state recurrence S_{c+1} = M_c S_c + B_c (one [Dk, Dk] x [Dk, Dv] product
per chunk, a lax.scan over a block's chunks) and the readout Q'_c S_c is computed for all chunks
of a block at once, by batched matmuls. T is formed explicitly, by recursive doubling over
diagonal blocks (`unit_lower_inverse`: forward substitution in 8 x 8 blocks, then log2(C / 8)
levels of batched matmuls; no LAPACK call), and its VJP is two matmuls, dA = -T^T dT T^T.
(`jax.scipy.linalg.solve_triangular`, LAPACK's trsm on CPU, was used before: it was slower, and
fwd+bwd runs over several blocks stalled for seconds or hung outright on the 2-core CPU here.)

A fori_loop walks blocks of whole chunks (about `block_bytes` per [B, H, T, D] array; by default
half linear attention's block) carrying S. The hand-written VJP keeps one state per block,
recomputes each block in reverse and runs the transposed recurrence R_c = Q'_c^T dO_c +
M_c^T R_{c+1} (again one product per chunk); everything else in the backward is the batched VJP
of the per-chunk operands. No per-token states are kept, and per-chunk states only for the
block in hand.

Packed sequences: `reset` gives every token a local segment index; D_ts is zero across segments,
and exp(G_t) (token t sees S_0) is zero unless t is in S_0's segment (the chunk's previous token's;
the block's starting state's for the block's first chunk).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from research.ops.attention.common import default_block_sizes, pad_axis
from research.ops.attention.linear.chunk import chunk_blocks


def _exp_where(mask, x):
    """exp(x) where mask, else 0, with no inf or NaN in either branch or its gradient."""
    return jnp.where(mask, jnp.exp(jnp.where(mask, x, 0.0)), 0.0)


_BASE = 8  # diagonal blocks up to this size are inverted by forward substitution


def _inverse(a):
    """(I + a)^{-1} for strictly lower-triangular a [..., C, C] (C padded to a power of two with
    the identity). The matrix is split recursively into halves [[L11, 0], [L21, L22]] down to
    `_BASE` x `_BASE` diagonal blocks (static slices, stacked on new batch axes), which are
    inverted by forward substitution; the halves are then joined bottom-up by
    inv = [[T11, 0], [-T22 L21 T11, T22]] (recursive doubling, log2(C / _BASE) levels of batched
    matmuls). Measured on the 2-core CPU, for 64 chunks of 64: 0.5-0.7 ms, against 1.0-1.2 ms
    doubling from 1 x 1 blocks and 1.2-1.5 ms for LAPACK's trsm (`solve_triangular`)."""
    c = a.shape[-1]
    p = 1 << (c - 1).bit_length()
    a = pad_axis(pad_axis(a, -1, p), -2, p)
    levels = []
    while a.shape[-1] > _BASE:
        h = a.shape[-1] // 2
        levels.append(a[..., h:, :h])
        a = jnp.stack([a[..., :h, :h], a[..., h:, h:]], axis=-3)
    # Forward substitution, row by row: t_i = e_i - sum_{j < i} a_ij t_j.
    base = a.shape[-1]
    eye = jnp.eye(base, dtype=a.dtype)
    t = jnp.broadcast_to(eye, a.shape)
    for i in range(1, base):
        row = eye[i] - jnp.einsum("...j,...jk->...k", a[..., i, :i], t[..., :i, :])
        t = t.at[..., i, :].set(row)
    for a21 in reversed(levels):
        t11, t22 = t[..., 0, :, :], t[..., 1, :, :]
        t21 = -jnp.matmul(t22, jnp.matmul(a21, t11))
        top = jnp.concatenate([t11, jnp.zeros_like(t11)], axis=-1)
        t = jnp.concatenate([top, jnp.concatenate([t21, t22], axis=-1)], axis=-2)
    return t[..., :c, :c]


@jax.custom_vjp
def unit_lower_inverse(a):
    """T = (I + a)^{-1} for strictly lower-triangular a [..., C, C] (`_inverse`); the VJP is
    dA = -T^T dT T^T (only its strictly lower part reaches a, as the caller masks a)."""
    return _inverse(a)


def _inverse_fwd(a):
    t = _inverse(a)
    return t, t


def _inverse_bwd(t, dt):
    tt = jnp.swapaxes(t, -1, -2)
    return (-jnp.matmul(tt, jnp.matmul(dt, tt)),)


unit_lower_inverse.defvjp(_inverse_fwd, _inverse_bwd)


def _to_chunks(x, chunk: int):
    """Token-major [B, T, H, ...] -> head-major chunks [B, H, n, C, ...], fp32."""
    b, t, h = x.shape[:3]
    x = x.reshape(b, t // chunk, chunk, h, *x.shape[3:])
    return jnp.moveaxis(x, 3, 1).astype(jnp.float32)


def _from_chunks(x):
    """Head-major chunks [B, H, n, C, D] -> token-major [B, n C, H, D]."""
    b, h, n, c, d = x.shape
    return jnp.moveaxis(x, 1, 3).reshape(b, n * c, h, d)


def chunk_operands(q, k, v, beta, g, reset, scale, chunk: int):
    """The per-chunk products that do not depend on the carried state, for all chunks of a block
    at once. Token-major in: q, k [B, T, H, Dk], v [B, T, H, Dv], beta, g [B, T, H], reset [B, T]
    (T a multiple of `chunk`). Returns, head-major with n = T / C chunks: Q' [B, H, n, C, Dk],
    P W_v [B, H, n, C, Dv], M [B, H, n, Dk, Dk], B [B, H, n, Dk, Dv] (module docstring)."""
    q, k, v = (_to_chunks(x, chunk) for x in (q, k, v))
    beta, g = (_to_chunks(x[..., None], chunk)[..., 0] for x in (beta, g))  # [B, H, n, C]
    b, t = reset.shape
    reset = reset.reshape(b, t // chunk, chunk)
    # Local segment index of every token; the chunk's S_0 belongs to the segment of the token
    # before the chunk (segment 0, the block's starting state's, for the first chunk).
    seg = jnp.cumsum(reset.reshape(b, -1), axis=1).reshape(reset.shape)
    seg0 = jnp.concatenate([jnp.zeros_like(seg[:, :1, 0]), seg[:, :-1, -1]], axis=1)  # [B, n]
    seg, seg0 = seg[:, None], seg0[:, None]  # broadcast over heads
    tri = jnp.tril(jnp.ones((chunk, chunk), jnp.float32))
    # G_t, inclusive; at full fp32 (a TF32 / bf16 pass would round the sums before exp)
    big_g = jnp.einsum("ts,bhns->bhnt", tri, g, precision=lax.Precision.HIGHEST)
    causal = tri.astype(bool) & (seg[..., :, None] == seg[..., None, :])
    decay_ts = _exp_where(causal, big_g[..., :, None] - big_g[..., None, :])  # D_ts
    from_start = seg == seg0[..., None]  # token t sees S_0
    decay_q = _exp_where(from_start, big_g)  # exp(G_t)
    last = seg[..., -1:] == seg  # tokens whose k u^T reaches the chunk's final state
    decay_k = _exp_where(last, big_g[..., -1:] - big_g)  # exp(G_C - G_s)
    decay = _exp_where(from_start[..., -1], big_g[..., -1])  # exp(G_C)
    strict = jnp.tril(jnp.ones((chunk, chunk), bool), -1)
    kk = jnp.einsum("bhntk,bhnsk->bhnts", k, k)
    t_inv = unit_lower_inverse(jnp.where(strict, beta[..., :, None] * decay_ts * kk, 0.0))
    rhs = jnp.concatenate([(beta * decay_q)[..., None] * k, beta[..., None] * v], axis=-1)
    w = jnp.einsum("bhnts,bhnsd->bhntd", t_inv, rhs)  # [W_k | W_v]
    q = q * scale
    pw = jnp.einsum("bhnts,bhnsd->bhntd", jnp.einsum("bhntk,bhnsk->bhnts", q, k) * decay_ts, w)
    kw = jnp.einsum("bhnck,bhncd->bhnkd", decay_k[..., None] * k, w)
    dk = k.shape[-1]
    qp = decay_q[..., None] * q - pw[..., :dk]
    m = decay[..., None, None] * jnp.eye(dk, dtype=jnp.float32) - kw[..., :dk]
    return qp, pw[..., dk:], m, kw[..., dk:]


def _states(s, m, b):
    """The state before every chunk: S_{c+1} = M_c S_c + B_c from S_0 = s [B, H, Dk, Dv], for m
    [B, H, n, Dk, Dk], b [B, H, n, Dk, Dv]. Returns (state after the last chunk, the states
    before each chunk [B, H, n, Dk, Dv])."""

    def step(s, x):
        m_c, b_c = x
        return jnp.einsum("bhkj,bhjv->bhkv", m_c, s) + b_c, s

    s, before = lax.scan(step, s, (jnp.moveaxis(m, 2, 0), jnp.moveaxis(b, 2, 0)))
    return s, jnp.moveaxis(before, 0, 2)


def _block_forward(s, q, k, v, beta, g, reset, scale, chunk):
    """One block, token-major in, from the state s before it: (o [B, T, H, Dv] fp32, state
    after it)."""
    qp, o_intra, m, b = chunk_operands(q, k, v, beta, g, reset, scale, chunk)
    s, before = _states(s, m, b)
    o = jnp.einsum("bhnck,bhnkv->bhncv", qp, before) + o_intra
    return _from_chunks(o), s


def _block_backward(s, do, ds, q, k, v, beta, g, reset, scale, chunk):
    """The VJP of `_block_forward` for the cotangents do [B, T, H, Dv] and ds (of the state after
    the block): (ds of the state before it, dq, dk, dv, dbeta, dg)."""
    fn = lambda *x: chunk_operands(*x, reset, scale, chunk)  # noqa: E731
    (qp, _, m, b), vjp = jax.vjp(fn, q, k, v, beta, g)
    _, before = _states(s, m, b)
    do = _to_chunks(do, chunk)
    local = jnp.einsum("bhnck,bhncv->bhnkv", qp, do)  # Q'_c^T dO_c

    def step(r, x):  # r: the cotangent of the state after chunk c
        m_c, local_c = x
        return local_c + jnp.einsum("bhjk,bhjv->bhkv", m_c, r), r

    ds, after = lax.scan(step, ds, (jnp.moveaxis(m, 2, 0), jnp.moveaxis(local, 2, 0)), reverse=True)
    after = jnp.moveaxis(after, 0, 2)
    dqp = jnp.einsum("bhncv,bhnkv->bhnck", do, before)
    dm = jnp.einsum("bhnkv,bhnjv->bhnkj", after, before)
    return (ds, *vjp((dqp, do, dm, after)))


def _zeros(shape, *like, fill=0):
    """fp32 `fill`s that, inside shard_map, vary over the same mesh axes as the arrays `like` (a
    loop's carries must keep their type; zeros_like carries it, a sum unions it). Loop output
    buffers get distinct fills, or XLA merges their initialisation into one broadcast and copies."""
    return sum((jnp.zeros_like(x, jnp.float32, shape=()) for x in like), jnp.full(shape, fill))


def _geometry(q, v, chunk: int, block_bytes: int | None) -> tuple[int, int]:
    """(tokens per block, number of blocks): whole chunks per block, a block's [B, H, T, D] fp32
    array about `block_bytes` (the same layout as linear attention's chunked kernel). The default
    is half the backend's linear-attention block: a block here also holds several [C, C] arrays
    per chunk. On the 2-core CPU, fwd+bwd at 16k (B1 H4 D64): 0.31 s with 512 KiB blocks, 0.34 s
    with 1 MiB (4k: 256 KiB 0.079, 512 KiB 0.077, 1 MiB 0.086, 2 MiB 0.116 s)."""
    b, length, h, dk = q.shape
    if block_bytes is None:
        block_bytes = default_block_sizes().block_bytes // 2
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
        o, s = _block_forward(s, *_slices(xs, i * t, t), scale, chunk)
        out = lax.dynamic_update_slice_in_dim(out, o.astype(out.dtype), i * t, axis=1)
        return s, out, starts

    ins = (q, k, v, beta, g, s0)
    s0 = s0 + _zeros((), *ins)
    out = _zeros((*q.shape[:1], nb * t, *v.shape[2:]), *ins, fill=1).astype(q.dtype)
    s, out, starts = lax.fori_loop(0, nb, body, (s0, out, _zeros((nb, *s0.shape), *ins, fill=2)))
    return out[:, :length], s, starts


def chunked(q, k, v, beta, g, reset, s0, scale, chunk, block_bytes):
    """`_chunked` with every differentiable input varying over the same mesh axes (inside
    shard_map): the hand-written backward returns cotangents of the union of the inputs' axes,
    and a cotangent must have its primal's type. Adding those zeros (a pvary) lets JAX's own
    transpose sum the cotangent of an input that does not vary (a replicated initial state or
    the [I | 0] of context parallelism) over the devices. Outside shard_map it adds scalar
    zeros, which XLA folds away."""
    like = (q, k, v, beta, g, s0)
    q, k, v, beta, g, s0 = (x + _zeros((), *like).astype(x.dtype) for x in like)
    return _chunked(q, k, v, beta, g, reset, s0, scale, chunk, block_bytes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _chunked(q, k, v, beta, g, reset, s0, scale, chunk, block_bytes):
    """Chunked (gated) delta rule on token-major inputs: q, k [B, L, H, Dk] (q not yet scaled;
    `scale` is applied here), v [B, L, H, Dv], beta, g [B, L, H], reset [B, L] bool, s0
    [B, H, Dk, Dv] fp32. Returns (o [B, L, H, Dv] in the dtype of q, final state fp32).

    Blocks of whole chunks (about `block_bytes` per [B, H, T, D] array) are walked by a
    fori_loop that keeps only each block's starting state; the hand-written VJP walks the blocks
    in reverse, recomputing each block's operands and states. So the backward holds O(L / T)
    states and one block's intermediates, not per-token states."""
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
        ds, *dx = _block_backward(
            starts[i], do_b, ds, q_b, k_b, v_b, beta_b, g_b, reset_b, scale, chunk
        )
        grads = [
            lax.dynamic_update_slice_in_dim(a, d.astype(a.dtype), i * t, axis=1)
            for a, d in zip(grads, dx, strict=True)
        ]
        return ds, grads

    ins = (q, k, v, beta, g, do, ds, starts)
    grads = [_zeros(x.shape, *ins, fill=n).astype(x.dtype) for n, x in enumerate(diff, 3)]
    ds0, grads = lax.fori_loop(0, nb, body, (ds.astype(jnp.float32) + _zeros((), *ins), grads))
    dq, dk, dv, dbeta, dg = (x[:, :length] for x in grads)
    return dq, dk, dv, dbeta, dg, None, ds0.astype(s0.dtype)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)
