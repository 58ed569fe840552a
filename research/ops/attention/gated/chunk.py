"""Gated linear attention, chunked (fla's chunk_gla; chunk_simple_gla for a scalar gate).

Tokens are cut into chunks of C; a `lax.scan` over chunks carries the state S [B, H, Dk, Dv].
Inside a chunk, with b_i = sum_{m <= i} g_m the cumulative log-gate from the chunk start and
q already scaled,
  o_i = (q_i * exp(b_i)) S_prev + sum_{j <= i} sum_d q_id k_jd exp(b_id - b_jd) v_j,
  S_next = diag(exp(b_C)) S_prev + sum_j (k_j * exp(b_C - b_j)) v_j^T.
Cumulative sums are products with triangular 0/1 matrices (not `jnp.cumsum`, so the same code
ports to a kernel). Every exponent above is <= 0, but exp(b_i) and exp(-b_j) separately are not:
with g down to -20 per step, exp(-b_j) overflows fp32 after a few tokens. So the chunk is split
again into sub-chunks of c <= 16 tokens (fla's secondary chunking), and each factor is taken
relative to a point between the two tokens:
  - query sub-chunk s, key sub-chunk t < s: exp(b_i - b_j) = exp(l_i) exp(e_j + sum_{t<u<s} T_u)
    with l_i the inclusive log-gate sum within i's sub-chunk, e_j the sum over the rest of j's
    sub-chunk after j, T_u a sub-chunk's total: both factors <= 1, one matmul per (s, t);
  - the diagonal sub-chunks (t = s): exp(l_i - l_j) masked to j <= i, an explicit
    [c, c, Dk] tensor (a plain [c, c] scale for a scalar gate).
All these partial sums add log-gates of one sign, so none cancels. Packed sequences
(`seg`, non-decreasing ids) mask the intra-chunk matrix to same-segment pairs, the carried state
to queries of the segment it belongs to, and the state update to the chunk's last segment.

The scan body is rematerialised: its backward stores one state per chunk and recomputes the
chunk's intermediates, so fwd+bwd memory is O(L d + L/C d^2), never a state per token.
"""

import jax
import jax.numpy as jnp
from jax import lax

from research.ops.attention.common import pad_axis

SUB_CHUNK = 16  # the secondary split; fla's chunk_gla uses 16 too


def sub_chunk_size(chunk: int) -> int:
    """The largest divisor of `chunk` that is at most SUB_CHUNK."""
    return max(d for d in range(1, min(chunk, SUB_CHUNK) + 1) if chunk % d == 0)


def _tri(n: int, k: int = 0, upper: bool = False):
    """0/1 fp32 [n, n]: tril(ones, k), or triu(ones, k) if upper (cumulative sums as matmuls)."""
    ones = jnp.ones((n, n), jnp.float32)
    return jnp.triu(ones, k) if upper else jnp.tril(ones, k)


def chunk_step(s, p, q, k, v, g, seg, *, scale: float, sub: int):
    """One chunk. s [B, H, Dk, Dv] the state before it; p [B] the segment id that state belongs
    to (ignored when seg is None); q, k [B, C, H, Dk], v [B, C, H, Dv], g [B, C, H, Dk or 1],
    seg [B, C] int or None. Returns (state after the chunk, o [B, C, H, Dv] fp32)."""
    f32 = jnp.float32
    q, k, v, g = (jnp.swapaxes(x, 1, 2).astype(f32) for x in (q, k, v, g))  # [B, H, C, .]
    q = q * scale
    b, h, c_len, dk = q.shape
    ns = c_len // sub
    qs, ks, gs = (x.reshape(b, h, ns, sub, x.shape[-1]) for x in (q, k, g))
    # Log-gate partial sums, all of one sign (<= 0), as triangular-matrix products.
    local = jnp.einsum("ij,bhsjd->bhsid", _tri(sub), gs)  # l_i: sub-chunk start .. i
    rest = jnp.einsum("ij,bhsjd->bhsid", _tri(sub, 1, upper=True), gs)  # e_j: after j in sub
    total = local[:, :, :, -1]  # T_s [B, H, ns, Dg]
    before = jnp.einsum("st,bhtd->bhsd", _tri(ns, -1), total)  # sum_{u < s} T_u
    after = jnp.einsum("st,bhtd->bhsd", _tri(ns, 1, upper=True), total)  # sum_{u > t} T_u
    u = jnp.arange(ns)
    between_mask = (u[None, :, None] < u[None, None, :]) & (u[None, None, :] < u[:, None, None])
    between = jnp.einsum("stu,bhud->bhstd", between_mask.astype(f32), total)
    # Inter-chunk: queries decayed from the chunk start, keys to the chunk end.
    q_dec = (qs * jnp.exp(local + before[:, :, :, None])).reshape(q.shape)
    k_dec = (ks * jnp.exp(rest + after[:, :, :, None])).reshape(k.shape)
    # Intra-chunk, off-diagonal sub-chunks t < s, factored at the start of sub-chunk s.
    off = jnp.tril(jnp.ones((ns, ns), bool), -1)[None, None, :, :, None, None]
    k_st = ks[:, :, None] * jnp.exp(jnp.where(off, rest[:, :, None] + between[:, :, :, :, None],
                                              -jnp.inf))  # fmt: skip
    a = jnp.einsum("bhsid,bhstjd->bhsitj", qs * jnp.exp(local), k_st)
    # Diagonal sub-chunks: exp(l_i - l_j) for j <= i (the exponent masked before exp).
    tril = jnp.tril(jnp.ones((sub, sub), bool))[:, :, None]
    diff = jnp.where(tril, local[:, :, :, :, None] - local[:, :, :, None], -jnp.inf)
    if g.shape[-1] == 1:
        a_diag = jnp.einsum("bhsid,bhsjd->bhsij", qs, ks) * jnp.exp(diff[..., 0])
    else:
        a_diag = jnp.sum(qs[:, :, :, :, None] * ks[:, :, :, None] * jnp.exp(diff), axis=-1)
    diag = jnp.eye(ns, dtype=bool)[:, None, :, None]
    a = jnp.where(diag, a_diag[:, :, :, :, None], a).reshape(b, h, c_len, c_len)
    decay = jnp.exp(jnp.sum(total, axis=2))[..., None]  # [B, H, Dg, 1]
    if seg is not None:
        a = jnp.where((seg[:, :, None] == seg[:, None, :])[:, None], a, 0.0)
        q_dec = jnp.where((seg == p[:, None])[:, None, :, None], q_dec, 0.0)
        k_dec = jnp.where((seg == seg[:, -1:])[:, None, :, None], k_dec, 0.0)
        decay = jnp.where((seg[:, -1] == p)[:, None, None, None], decay, 0.0)
    o = jnp.einsum("bhij,bhjv->bhiv", a, v) + jnp.einsum("bhid,bhdv->bhiv", q_dec, s)
    s = decay * s + jnp.einsum("bhjd,bhjv->bhdv", k_dec, v)
    return s, jnp.swapaxes(o, 1, 2)


def chunked(q, k, v, g, seg, s0, *, scale: float, chunk: int, p0=None):
    """q, k [B, L, H, Dk] (k, v repeated to H heads), v [B, L, H, Dv], g [B, L, H, Dk or 1],
    seg [B, L] int or None, s0 [B, H, Dk, Dv] fp32, p0 [B] the segment id s0 belongs to
    (default seg[:, 0]: s0 feeds the first segment). Returns (out [B, L, H, Dv] fp32, state)."""
    b, length, h, _ = q.shape
    n = -(-length // chunk)
    sub = sub_chunk_size(chunk)
    # Padded tokens (k = v = 0, g = 0, the last segment's id) leave the state unchanged.
    xs = [pad_axis(x, 1, n * chunk) for x in (q, k, v, g)]
    # Inside shard_map the carries must vary over the mesh axes the inputs do (a loop's carry
    # keeps its type): adding zeros shaped like the inputs unions their axes.
    s0 = s0 + sum(jnp.zeros_like(x, jnp.float32, shape=()) for x in (q, k, v, g))
    if seg is not None:
        p0 = (seg[:, 0] if p0 is None else p0) + jnp.zeros_like(seg[:, 0])
        xs.append(jnp.pad(seg, ((0, 0), (0, n * chunk - length)), mode="edge"))
    else:
        p0 = jnp.zeros((b,), jnp.int32)
    xs = [jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0) for x in xs]

    @jax.checkpoint
    def body(carry, x):
        s, p = carry
        seg_c = x[4] if seg is not None else None
        s, o = chunk_step(s, p, *x[:4], seg_c, scale=scale, sub=sub)
        return (s, p if seg_c is None else seg_c[:, -1]), o

    (s, _), out = lax.scan(body, (s0, p0), tuple(xs))
    out = jnp.moveaxis(out, 0, 1).reshape(b, n * chunk, h, -1)
    return out[:, :length], s
