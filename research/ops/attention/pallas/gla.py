"""The chunk of gated linear attention for the Pallas driver (`driver.py`): no gate (plain
linear attention over [v, 1]), a scalar gate per head and step, or a per-key-dim gate (GLA).

The mathematics of `gated/chunk.py` (the reference), for one chunk of one head. With b the
inclusive cumulative log-gate from the chunk start (a lower-triangular matmul, not a cumsum)
and q scaled,
  o_i = (q_i exp(b_i)) S + sum_{j <= i, same segment} (sum_d q_id k_jd exp(b_id - b_jd)) v_j,
  S' = exp(b_C) S + sum_{j in the chunk's last segment} (k_j exp(b_C - b_j)) v_j^T.
Every exponent used is <= 0. The intra-chunk scores are built by sub-chunks of SUB tokens: a
query in sub-chunk s meets a key before s through r_s, the cumulative gate just before s
(exp(b_i - r_s) and exp(r_s - b_j), both <= 1); inside s the per-key-dim gate takes the
[SUB, C, Dk] exponents (a scalar gate [SUB, C]), never a [C, C, Dk] tensor. A [1, D] row
becomes a [D, 1] column by a masked reduction of eye(D), not a transpose.

Packed sequences: `start` [C, 1] is each token's segment's first token (-1 for the first
segment). Query i sees key j iff j >= start_i, the entering state iff start_i < c0, and key j
reaches the exit state iff j >= the last token's start.
"""

import functools

import jax.numpy as jnp

from research.ops.attention.pallas import driver
from research.ops.attention.pallas.driver import SUB
from research.ops.attention.pallas.tiles import column, dot, dot_nt, dot_t, iota, row, segment_masks
from research.ops.attention.segments import segment_starts


def chunk_step(q, k, v, g, s, start, c0, *, packed: bool, scale: float, state_only=False):
    """One chunk. q (multiplied by `scale` here), k [C, Dk], v [C, Dv], g [C, Dg] (Dg = Dk or
    1) or None (no gate), all fp32; s [Dk, Dv] the entering state; start [C, 1] int32 the first
    token of each token's segment (global index, -1 for the first segment); c0 the chunk's first
    global index. Returns (o [C, Dv], the exit state [Dk, Dv]); with state_only, (None, the
    exit state), skipping the intra-chunk work (the backward's recomputation of states)."""
    c_len = q.shape[0]
    q = q * scale
    rows, cols = iota((c_len, c_len), 0), iota((c_len, c_len), 1)
    visible = cols <= rows
    if packed:
        visible, from_state, to_state, keep = segment_masks(start, c0, c_len)
    o = None
    if g is None:
        if not state_only:
            o = dot(jnp.where(visible, dot_nt(q, k), 0.0), v)
        q_in, k_out = q, k
        s_dec = s
    else:
        f32 = jnp.float32
        b = dot((cols <= rows).astype(f32), g)  # [C, Dg] b_i: sums of one sign (<= 0)
        after = dot((cols > rows).astype(f32), g)  # b_C - b_j, summed directly (no cancelling)
        sub_r, sub_c = iota((SUB, SUB), 0), iota((SUB, SUB), 1)
        pieces = []
        for sc in range(0 if state_only else c_len // SUB):
            lo = sc * SUB
            qs, ks, vs, gs = (x[lo : lo + SUB] for x in (q, k, v, g))
            seen = sub_c <= sub_r
            if packed:
                seen &= sub_c + (lo + c0) >= start[lo : lo + SUB]
            # exponents l_i - l_j = sum of g_m over j < m <= i, summed directly: a difference
            # of l_i and l_j would cancel (l ~ -300 after strong gates leaves ~1e-5 absolute)
            if g.shape[-1] == 1:  # [SUB, SUB] = (g_m for m <= i) @ [m > j]
                upto = jnp.where(sub_c <= sub_r, row(gs), 0.0)  # [i, m]
                expo = dot(upto, (sub_r > sub_c).astype(f32))  # [i, j]
                diag = dot_nt(qs, ks) * jnp.exp(jnp.where(seen, expo, -jnp.inf))
            else:  # [SUB, SUB, Dk]: one [SUB^2, SUB] x [SUB, Dk] product
                i3, j3, m3 = (iota((SUB, SUB, SUB), d) for d in range(3))
                pairs = ((j3 < m3) & (m3 <= i3)).astype(f32).reshape(SUB * SUB, SUB)
                expo = dot(pairs, gs).reshape(SUB, SUB, gs.shape[-1])
                seen3 = iota(expo.shape, 1) <= iota(expo.shape, 0)  # causal (finite, <= 0)
                expo = jnp.where(seen3, expo, -jnp.inf)
                diag = jnp.sum(qs[:, None, :] * ks[None, :, :] * jnp.exp(expo), axis=-1)
            o_s = dot(jnp.where(seen, diag, 0.0), vs)
            if sc:  # keys before the sub-chunk meet the query through r = b_{lo - 1}:
                # exp(b_i - r) = exp(l_i) and exp(r - b_j), the gates strictly between j and lo
                local = dot((sub_c <= sub_r).astype(f32), gs)  # l_i = b_i - r
                between = dot(((cols > rows) & (cols < lo)).astype(f32), g)
                off = dot_nt(qs * jnp.exp(local), k * jnp.exp(between))  # [SUB, C]
                keys = iota((SUB, c_len), 1)
                earlier = keys < lo
                if packed:
                    earlier &= keys + c0 >= start[lo : lo + SUB]
                o_s = o_s + dot(jnp.where(earlier, off, 0.0), v)
            pieces.append(o_s)
        o = jnp.concatenate(pieces, axis=0) if pieces else None
        q_in = q * jnp.exp(b)
        k_out = k * jnp.exp(after)
        decay = jnp.exp(b[c_len - 1 :])  # [1, Dg]
        s_dec = s * (column(decay) if g.shape[-1] > 1 else decay)
    if packed:
        q_in = jnp.where(from_state, q_in, 0.0)
        k_out = jnp.where(to_state, k_out, 0.0)
        s_dec = jnp.where(keep, s_dec, 0.0)
    s_out = s_dec + dot_t(k_out, v)
    return (None, s_out) if state_only else (o + dot(q_in, s), s_out)


def step(q, k, v, *rest, start, c0, packed: bool, scale: float, state_only=False):
    """`chunk_step` in the driver's calling convention: (q, k, v, s) or (q, k, v, g, s)."""
    g, s = rest if len(rest) == 2 else (None, rest[0])
    return chunk_step(q, k, v, g, s, start, c0, packed=packed, scale=scale, state_only=state_only)


def normalized_step(q, k, v, s, *, start, c0, packed: bool, phi=None, state_only=False):
    """Plain linear attention on features q, k (phi(q), phi(k) when `phi` is given: a
    per-element map applied here, so only q and k are kept for the backward): no gate over
    [v, 1] (numerator and denominator in one pass; s [Dk, Dv + 1] carries z as its last
    column), then the guarded division, so the output and its gradient stay [C, Dv]."""
    if phi is not None:
        q, k = phi(q), phi(k)
    ones = jnp.ones((v.shape[0], 1), jnp.float32)
    vz = jnp.concatenate([v, ones], axis=1)
    o, s = chunk_step(q, k, vz, None, s, start, c0, packed=packed, scale=1.0, state_only=state_only)
    if state_only:
        return None, s
    num, den = o[:, :-1], o[:, -1:]
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0), s


def _reset(seg):
    return None if seg is None else segment_starts(seg)


def chunked(q, k, v, g, seg, s0, *, scale: float, chunk: int):
    """As `gated.chunk.chunked` (the reference): q, k [B, L, H, Dk] (k, v repeated to H heads),
    v [B, L, H, Dv], g [B, L, H, Dk or 1] or None (no gate), seg [B, L] int or None, s0 [B, H,
    Dk, Dv] fp32. Returns (out [B, L, H, Dv] fp32, final state)."""
    fn = functools.partial(step, packed=seg is not None, scale=float(scale))
    if g is None:
        xs = (q, k, v)
    else:  # a scalar gate travels lane-dense ([B, L, H]), a per-key-dim gate as a matrix
        g = g.astype(jnp.float32)
        xs = (q, k, v, g[..., 0] if g.shape[-1] == 1 else g)
    return driver.run(fn, xs, _reset(seg), s0, chunk=chunk)


def normalized(fq, fk, v, seg, s0, *, chunk: int, phi=None):
    """Causal linear attention on features fq, fk [B, L, H, F] (or on q, k and a per-element
    feature map `phi` applied in the kernel; `normalized_step`): v [B, L, H, Dv], seg [B, L] or
    None, s0 [B, H, F, Dv + 1] (the state [s, z]). Returns o [B, L, H, Dv] fp32 (num / den, 0
    where den = 0)."""
    fn = functools.partial(normalized_step, packed=seg is not None, phi=phi)
    o, _ = driver.run(fn, (fq, fk, v), _reset(seg), s0, chunk=chunk, out_dim=v.shape[-1])
    return o
