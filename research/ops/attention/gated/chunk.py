"""Gated linear attention, chunked (fla's chunk_gla; chunk_simple_gla for a scalar gate).

Tokens are cut into chunks of C, chunks into blocks of N chunks. A `lax.scan` over blocks
carries the state S [B, H, Dk, Dv]; inside a block everything that does not depend on the
state is computed for all N chunks at once by batched einsums, and only the cheap state
recurrence S_{c+1} = diag(a_c) S_c + dS_c walks the chunks one by one. Inside a chunk, with
b_i = sum_{m <= i} g_m the cumulative log-gate from the chunk start and q already scaled,
  o_i = (q_i * exp(b_i)) S_c + sum_{j <= i} sum_d q_id k_jd exp(b_id - b_jd) v_j,
  S_{c+1} = diag(exp(b_C)) S_c + sum_j (k_j * exp(b_C - b_j)) v_j^T.
Every exponent above is <= 0, but exp(b_i) and exp(-b_j) separately are not: with g down to
-20 per step, exp(-b_j) overflows fp32 after a few tokens, so each pair's decay is factored at
a point r between the two tokens, with both factors exp(b_i - b_r), exp(b_r - b_j) <= 1, or,
when it is safe, at the chunk start:
  - per-key-dim gate whose every chunk sums to >= -FACTOR_RANGE (`factored_terms`, one switch
    per call): r = 0, factors exp(b_i) >= e^-40 and exp(-b_j) <= e^40, one [C, C] score matmul.
  - any other per-key-dim gate (`tree_terms`): every pair j < i first falls in different
    halves of one block of 2s tokens (s = 1, 2, .., C/2; C padded to a power of two); r is that
    block's midpoint, so each level is one batched matmul of decayed q and k halves, and no
    [C, C, Dk] tensor is formed. Level 2s's partial sums are level s's plus the other half's.
  - scalar gate (`chunk_terms`): one [C, C] exponent matrix per chunk, from partial sums over
    sub-chunks of c <= 16 tokens (fla's secondary chunking): l_i within i's sub-chunk, e_j
    after j in j's sub-chunk, and the totals of the sub-chunks between them.
Partial sums are triangular-matrix products (at full fp32 precision on every backend) or
additions of log-gates of one sign (not `jnp.cumsum`); the only difference taken is the
scalar gate's l_i - l_j inside one sub-chunk.
Packed sequences (`seg`, non-decreasing ids) mask the intra-chunk scores to same-segment pairs,
the carried state to queries of the segment it belongs to, and the state update to the chunk's
last segment.

The block body is rematerialised: its backward stores one state per block and recomputes the
block's intermediates, so fwd+bwd memory is O(L d + L/(N C) d^2), never a state per token.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from research.ops.attention.common import pad_axis

SUB_CHUNK = 16  # the secondary split; fla's chunk_gla uses 16 too
FACTOR_RANGE = 40.0  # calls whose every chunk's log-gates sum to >= -40 skip the tree (e^40 ~ 2e17)
BLOCK_TOKENS = 1024  # tokens per rematerialised block (a few MiB of intermediates per head)
# Log-gate sums become exponents: a TF32 (GPU) or bf16 (TPU) pass would round a sum of -40 by
# 0.02-0.2, a 2-20% error after exp. The 0/1 matmuls that form them run at full fp32.
EXACT = lax.Precision.HIGHEST


def sub_chunk_size(chunk: int) -> int:
    """The largest divisor of `chunk` that is at most SUB_CHUNK."""
    return max(d for d in range(1, min(chunk, SUB_CHUNK) + 1) if chunk % d == 0)


def _tri(n: int, k: int = 0, upper: bool = False):
    """0/1 fp32 [n, n]: tril(ones, k), or triu(ones, k) if upper (cumulative sums as matmuls)."""
    ones = jnp.ones((n, n), jnp.float32)
    return jnp.triu(ones, k) if upper else jnp.tril(ones, k)


def chunk_terms(q, k, g, seg, *, sub: int):
    """The state-independent terms of N chunks at once, for a scalar gate. q, k [B, H, N, C, Dk]
    fp32 (q scaled), g [B, H, N, C, 1], seg [B, N, C] int or None. Returns (a [B, H, N, C, C]
    the intra-chunk scores masked to same-segment pairs, q_dec [B, H, N, C, Dk] queries decayed
    from the chunk start, k_dec keys decayed to the chunk end, decay [B, H, N, 1, 1] the chunk's
    total decay); `block_step` masks the last three to the segments the state reaches."""
    f32 = jnp.float32
    b, h, n, c_len, dk = q.shape
    ns = c_len // sub
    qs, ks, gs = (x.reshape(b, h, n, ns, sub, x.shape[-1]) for x in (q, k, g))
    # Log-gate partial sums, all of one sign (<= 0), as triangular-matrix products.
    sums = functools.partial(jnp.einsum, precision=EXACT)
    local = sums("ij,bhnsjd->bhnsid", _tri(sub), gs)  # l_i: sub-chunk start .. i
    rest = sums("ij,bhnsjd->bhnsid", _tri(sub, 1, upper=True), gs)  # e_j: after j in sub
    total = local[..., -1, :]  # T_s [B, H, N, ns, Dg]
    before = sums("st,bhntd->bhnsd", _tri(ns, -1), total)  # sum_{u < s} T_u
    after = sums("st,bhntd->bhnsd", _tri(ns, 1, upper=True), total)  # sum_{u > t} T_u
    u = jnp.arange(ns)
    between_mask = (u[None, :, None] < u[None, None, :]) & (u[None, None, :] < u[:, None, None])
    between = sums("stu,bhnud->bhnstd", between_mask.astype(f32), total)
    q_dec = (qs * jnp.exp(local + before[..., None, :])).reshape(q.shape)
    k_dec = (ks * jnp.exp(rest + after[..., None, :])).reshape(k.shape)
    decay = jnp.exp(jnp.sum(total, axis=-2))[..., None]  # [B, H, N, Dg, 1]
    tril = jnp.tril(jnp.ones((sub, sub), bool))
    off = jnp.tril(jnp.ones((ns, ns), bool), -1)
    # One exponent per pair (i in s, j in t): l_i + e_j + between_st (t < s), l_i - l_j
    # (t = s, j <= i); -inf elsewhere.
    lo, re, bt = local[..., 0], rest[..., 0], between[..., 0]
    expo = (
        lo[:, :, :, :, :, None, None] + re[:, :, :, None, None] + bt[:, :, :, :, None, :, None]
    )  # [B, H, N, s, i, t, j]
    diag_expo = lo[..., :, None] - lo[..., None, :]  # [B, H, N, s, i, j]
    eye = jnp.eye(ns, dtype=bool)[:, None, :, None]
    expo = jnp.where(eye, diag_expo[:, :, :, :, :, None], expo)
    mask = off[:, None, :, None] | (eye & tril[None, :, None, :])
    decays = jnp.exp(jnp.where(mask, expo, -jnp.inf)).reshape(b, h, n, c_len, c_len)
    a = jnp.einsum("bhnid,bhnjd->bhnij", q, k) * decays
    if seg is not None:
        a = jnp.where((seg[..., :, None] == seg[..., None, :])[:, None], a, 0.0)
    return a, q_dec, k_dec, decay


def _halves(x, s: int):
    """x [B, H, N, C, D] -> [B, H, N, C / 2s, 2, s, D]: pairs of adjacent blocks of s tokens."""
    return x.reshape(*x.shape[:3], -1, 2, s, x.shape[-1])


def tree_terms(q, k, v, g, seg):
    """As `chunk_terms` for a per-key-dim gate g [B, H, N, C, Dk], C a power of two, but
    returning the intra-chunk output o [B, H, N, C, Dv] instead of the scores, and without any
    [C, C, Dk] tensor. Every pair j < i first
    falls in different halves of one block of 2s tokens (s = 1, 2, .., C/2); with r that
    block's midpoint, exp(b_i - b_j) = exp(I_s(i)) exp(E_s(j)): I_s(i) the log-gates from r to
    i (inclusive within i's half), E_s(j) those after j within j's half, both <= 0. So each
    level is one batched [s, Dk] x [Dk, s] matmul per block; I_2s, E_2s follow from I_s, E_s by
    adding the other half's total (sums of one sign: nothing cancels)."""
    b, h, n, c_len, _ = q.shape
    o = jnp.einsum("bhncd,bhncd->bhnc", q, k)[..., None] * v  # the diagonal j = i
    inc, exc = g, jnp.zeros_like(g)  # I_1, E_1
    s = 1
    while s < c_len:
        qh, kh, vh, ih, eh = (_halves(x, s) for x in (q, k, v, inc, exc))
        qf = qh[..., 1, :, :] * jnp.exp(ih[..., 1, :, :])
        kf = kh[..., 0, :, :] * jnp.exp(eh[..., 0, :, :])
        a = jnp.einsum("bhnpid,bhnpjd->bhnpij", qf, kf)
        if seg is not None:
            sh = seg.reshape(b, n, -1, 2, s)
            a = jnp.where((sh[..., 1, :, None] == sh[..., 0, None, :])[:, None], a, 0.0)
        oh = jnp.einsum("bhnpij,bhnpjv->bhnpiv", a, vh[..., 0, :, :])
        o = o + jnp.stack([jnp.zeros_like(oh), oh], axis=-3).reshape(o.shape)
        tot = ih[..., -1:, :]  # [.., P, 2, 1, Dg] each half's total
        inc = ih + jnp.stack([jnp.zeros_like(tot[..., 0, :, :]), tot[..., 0, :, :]], -3)
        exc = eh + jnp.stack([tot[..., 1, :, :], jnp.zeros_like(tot[..., 1, :, :])], -3)
        inc, exc = inc.reshape(g.shape), exc.reshape(g.shape)
        s *= 2
    q_dec, k_dec = q * jnp.exp(inc), k * jnp.exp(exc)
    decay = jnp.exp(inc[..., -1, :])[..., None]
    return o, q_dec, k_dec, decay


def factored_terms(q, k, v, g, seg):
    """As `tree_terms`, when every chunk's total log-gate is >= -FACTOR_RANGE (each key dim):
    then exp(b_i - b_j) = exp(b_i) exp(-b_j) with both factors within e^(+-FACTOR_RANGE), so one
    [C, Dk] x [Dk, C] matmul per chunk replaces the tree (fla's chunk_gla before its secondary
    split). GLA's gate, log-sigmoid over 16, sums to about -3 per 64 tokens at initialisation;
    a chunk needs the tree only once its mean -log sigmoid(logit) exceeds 10."""
    c_len = q.shape[-2]
    cum = jnp.einsum("ij,bhnjd->bhnid", _tri(c_len), g, precision=EXACT)  # b_i in [-range, 0]
    total = cum[..., -1:, :]
    q_dec = q * jnp.exp(cum)
    k_inv = k * jnp.exp(-cum)
    a = jnp.einsum("bhnid,bhnjd->bhnij", q_dec, k_inv)
    keep = jnp.tril(jnp.ones((c_len, c_len), bool))
    if seg is not None:
        keep = keep & (seg[..., :, None] == seg[..., None, :])[:, None]
    o = jnp.einsum("bhnij,bhnjv->bhniv", jnp.where(keep, a, 0.0), v)
    k_dec = k_inv * jnp.exp(total)  # = k exp(b_C - b_j), from factors within e^(+-range)
    decay = jnp.exp(total[..., 0, :])[..., None]
    return o, q_dec, k_dec, decay


def block_step(s, p, q, k, v, g, seg, *, scale: float, sub: int, factored: bool = False):
    """N chunks. s [B, H, Dk, Dv] the state before them; p [B] the segment id that state belongs
    to (ignored when seg is None); q, k [B, N, C, H, Dk], v [B, N, C, H, Dv], g [B, N, C, H, Dg],
    seg [B, N, C] int or None. Returns (state after the block, o [B, N, C, H, Dv] fp32)."""
    f32 = jnp.float32
    q, k, v, g = (jnp.moveaxis(x, 3, 1).astype(f32) for x in (q, k, v, g))  # [B, H, N, C, .]
    q = q * scale
    # The segment each chunk's entering state belongs to: the previous chunk's last token's.
    pc = None if seg is None else jnp.concatenate([p[:, None], seg[:, :-1, -1]], axis=1)
    if factored:
        o_in, q_dec, k_dec, decay = factored_terms(q, k, v, g, seg)
    elif g.shape[-1] > 1:
        o_in, q_dec, k_dec, decay = tree_terms(q, k, v, g, seg)
    else:
        a, q_dec, k_dec, decay = chunk_terms(q, k, g, seg, sub=sub)
        o_in = jnp.einsum("bhnij,bhnjv->bhniv", a, v)
    if seg is not None:  # the entering state reaches its own segment; only the last leaves
        q_dec = jnp.where((seg == pc[..., None])[:, None, ..., None], q_dec, 0.0)
        k_dec = jnp.where((seg == seg[..., -1:])[:, None, ..., None], k_dec, 0.0)
        decay = jnp.where((seg[..., -1] == pc)[:, None, :, None, None], decay, 0.0)
    ds = jnp.einsum("bhnjd,bhnjv->bhndv", k_dec, v)  # each chunk's own contribution

    def step(s, x):
        dec, d = x
        return dec * s + d, s

    s, starts = lax.scan(step, s, (jnp.moveaxis(decay, 2, 0), jnp.moveaxis(ds, 2, 0)))
    o = o_in + jnp.einsum("bhnid,nbhdv->bhniv", q_dec, starts)
    return s, jnp.moveaxis(o, 1, 3)


def chunked(q, k, v, g, seg, s0, *, scale: float, chunk: int, p0=None):
    """q, k [B, L, H, Dk] (k, v repeated to H heads), v [B, L, H, Dv], g [B, L, H, Dk or 1],
    seg [B, L] int or None, s0 [B, H, Dk, Dv] fp32, p0 [B] the segment id s0 belongs to
    (default seg[:, 0]: s0 feeds the first segment). Returns (out [B, L, H, Dv] fp32, state)."""
    b, length, h, _ = q.shape
    # A short input is one chunk, not padded to chunk_size: the length rounded up to the
    # requested chunk's sub-chunk (the length itself could have no divisor to split it by).
    sub = sub_chunk_size(chunk)
    chunk = min(chunk, -(-length // sub) * sub)
    sub = sub_chunk_size(chunk)
    n_chunks = -(-length // chunk)
    per_block = max(1, min(n_chunks, BLOCK_TOKENS // chunk))
    n = -(-n_chunks // per_block)
    padded = n * per_block * chunk
    # Padded tokens (k = v = 0, g = 0, the last segment's id) leave the state unchanged.
    xs = [pad_axis(x, 1, padded) for x in (q, k, v, g)]
    # Inside shard_map the carries must vary over the mesh axes the inputs do (a loop's carry
    # keeps its type): adding zeros shaped like the inputs unions their axes.
    s0 = s0 + sum(jnp.zeros_like(x, jnp.float32, shape=()) for x in (q, k, v, g))
    if seg is not None:
        p0 = (seg[:, 0] if p0 is None else p0) + jnp.zeros_like(seg[:, 0])
        xs.append(jnp.pad(seg, ((0, 0), (0, padded - length)), mode="edge"))
    else:
        p0 = jnp.zeros((b,), jnp.int32)
    xs = [jnp.moveaxis(x.reshape(b, n, per_block, chunk, *x.shape[2:]), 1, 0) for x in xs]
    # The per-key-dim gate's tree needs a power-of-two chunk: pad each chunk at its end (the
    # factored path shares the padded layout: one switch between the two, same shapes).
    width = chunk if g.shape[-1] == 1 else 1 << (chunk - 1).bit_length()
    if width > chunk:
        xs = [
            jnp.pad(
                x,
                [(0, 0)] * 3 + [(0, width - chunk)] + [(0, 0)] * (x.ndim - 4),
                mode="edge" if x.dtype.kind in "iu" else "constant",
            )
            for x in xs
        ]

    def walk(factored: bool):
        @jax.checkpoint
        def body(carry, x):
            s, p = carry
            seg_c = x[4] if seg is not None else None
            s, o = block_step(s, p, *x[:4], seg_c, scale=scale, sub=sub, factored=factored)
            return (s, p if seg_c is None else seg_c[:, -1, -1]), o

        return lax.scan(body, (s0, p0), tuple(xs))

    if g.shape[-1] == 1:
        (s, _), out = walk(False)
    else:
        # One switch for the whole call, outside the scan: a switch per block would make the
        # backward carry both branches' intermediates (measured: it gave back 40% of the gain).
        mild = jnp.all(jnp.sum(xs[3], axis=3) >= -FACTOR_RANGE)
        (s, _), out = lax.cond(mild, lambda: walk(True), lambda: walk(False))
    out = jnp.moveaxis(out[:, :, :, :chunk], 0, 1).reshape(b, padded, h, -1)
    return out[:, :length], s
