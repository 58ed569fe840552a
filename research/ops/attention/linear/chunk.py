"""Causal linear attention, chunked: a blocked kernel with a hand-written VJP.

Tokens are cut into chunks of C, and chunks into blocks of nc chunks whose working set fits
in cache (on the 2-core CPU here, passes over arrays that spill to DRAM cost more than the
matmuls). A `fori_loop` walks the blocks carrying the d_k x d_v state; inside a block every
chunk is handled at once by batched matmuls:
  A_c = tril(Q_c K_c^T), dS_c = K_c^T V_c, S_c = S_block + sum_{c' < c} dS_c' (a log-depth
  prefix sum over the block's chunks), num_c = A_c V_c + Q_c S_c.
A named feature map is applied inside the block, so q, k, v are read from memory once. Autodiff
through this loop would store every block's intermediates; the backward pass below instead
recomputes them block by block in reverse, carrying R = sum_{later} Q^T dnum, so memory is
O(L d) for any length. Sums are fp32.

Block size: `block_bytes` is the size of one [B, H, block, F] fp32 array (per-backend default in
`common.default_block_sizes`; 1 MiB measured fastest on the 2-core CPU here).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from research.ops.attention.common import default_block_sizes, divide, pad_axis

_BACKWARD_SPLIT = 2  # the backward holds ~2x the live arrays per block, so it walks half-blocks


def as_float32(x):  # the kernel's "feature map" for features computed by the caller
    return x.astype(jnp.float32)


def chunk_blocks(
    length: int, chunk: int, row_bytes: int, value_dim: int, block_bytes: int | None = None
) -> tuple[int, int]:
    """(chunks per block, number of blocks) for `length` tokens, preferring a block size that
    divides the chunk count so no padding is needed. Blocks hold at least 8 * value_dim tokens,
    so the d x d fp32 states saved for the backward (one per backward block, which is half a
    forward block) take at most 1/4 of q's fp32 size."""
    n_chunks = -(-length // chunk)
    if block_bytes is None:
        block_bytes = default_block_sizes().block_bytes
    want = max(block_bytes // (row_bytes * chunk), -(-8 * value_dim // chunk))
    want = max(1, min(n_chunks, want))
    divisor = max(d for d in range(1, want + 1) if n_chunks % d == 0)
    nc = divisor if 2 * divisor >= want else want
    return nc, -(-n_chunks // nc)


def _chunk_geometry(q, s0, chunk: int, block_bytes: int) -> tuple[int, int, int, int]:
    """The block layout both passes share: (chunks per forward block, forward blocks, chunks per
    backward block, padded length) for q [B, L, H, D] and the state s0 [B, H, F, Dv]."""
    b, length, h, d = q.shape
    f, dv = s0.shape[-2:]
    nc, nb = chunk_blocks(length, chunk, 4 * b * h * max(f, dv, d), dv, block_bytes)
    ncb = nc // _BACKWARD_SPLIT if nc % _BACKWARD_SPLIT == 0 else nc
    return nc, nb, ncb, nb * nc * chunk


def _every(x, n: int):
    """Every n-th chunk's entry of x [B, H, nc, ...], chunk-major: [nc / n, B, H, ...]."""
    return jnp.moveaxis(x[:, :, ::n], 2, 0)


def _load(x, start, nc: int, chunk: int):
    """Tokens [start, start + nc*C) of x [B, L, H, F] as fp32 chunks [B, H, nc, C, F]."""
    b, _, h, f = x.shape
    x = lax.dynamic_slice_in_dim(x, start, nc * chunk, axis=1).reshape(b, nc, chunk, h, f)
    return jnp.transpose(x, (0, 3, 1, 2, 4)).astype(jnp.float32)


def _load_tokens(x, start, nc: int, chunk: int):
    """Tokens [start, start + nc*C) of x [..., L] as fp32 [..., nc, C]. Per-token scalars are
    kept token-minor ([B, H, L], not [B, L, H, 1]): TPUs pad a size-1 minor axis to 128 lanes."""
    x = lax.dynamic_slice_in_dim(x, start, nc * chunk, axis=-1)
    return x.reshape(*x.shape[:-1], nc, chunk).astype(jnp.float32)


def _store(buf, x, start):
    """Write chunks x [B, H, nc, C, F] into buf [B, L, H, F] at token `start`."""
    b, h, nc, c, f = x.shape
    x = jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(b, nc * c, h, f).astype(buf.dtype)
    return lax.dynamic_update_slice_in_dim(buf, x, start, axis=1)


def _exclusive(x, reverse: bool = False):
    """Sum over earlier (later, if reverse) chunks of a block: x [B, H, nc, ...] -> same shape.
    A log-depth scan: a triangular [nc, nc] matmul over the chunk axis made XLA transpose x."""
    c = lax.associative_scan(jnp.add, x, axis=2, reverse=reverse)
    zero = jnp.zeros_like(x[:, :, :1])
    return jnp.concatenate([c[:, :, 1:], zero] if reverse else [zero, c[:, :, :-1]], axis=2)


def _causal_scores(q, k):
    """tril(q k^T) per chunk: q, k [B, H, nc, C, F] -> [B, H, nc, C, C]."""
    c = q.shape[3]
    return jnp.where(jnp.tril(jnp.ones((c, c), bool)), jnp.einsum("bhnif,bhnjf->bhnij", q, k), 0)


def _block_inputs(q, k, v, kmask, start, nc, chunk, phi):
    """One block's features and values, fp32 [B, H, nc, C, .], with the maps' VJPs."""
    fq, q_vjp = jax.vjp(phi, _load(q, start, nc, chunk))
    kb = _load(k, start, nc, chunk)
    if kmask is not None:
        m = _load_tokens(kmask, start, nc, chunk)[:, None, :, :, None]  # [B, 1, nc, C, 1]
        fk, k_vjp = jax.vjp(lambda x: phi(x) * m, kb)
    else:
        fk, k_vjp = jax.vjp(phi, kb)
    return fq, fk, _load(v, start, nc, chunk), q_vjp, k_vjp


def _block_states(fk, v, s, z):
    """States before each chunk of a block, given the states s [B,H,F,V], z [B,H,F] before it."""
    ds = jnp.einsum("bhnjf,bhnjv->bhnfv", fk, v)
    dz = jnp.sum(fk, axis=3)
    return _exclusive(ds) + s[:, :, None], _exclusive(dz) + z[:, :, None], ds, dz


def _full(shape, *like, dtype=jnp.float32, fill=0):
    """A `fill`-valued array that, inside shard_map, varies over the same mesh axes as the arrays
    `like` (a loop's carries must keep their type); zeros_like carries that type, a sum unions
    it. Output buffers that the loop overwrites get distinct fills: XLA would otherwise merge
    their initialisation into one broadcast plus a copy per buffer (a DRAM pass each)."""
    return sum((jnp.zeros_like(x, dtype, shape=()) for x in like), jnp.full(shape, fill, dtype))


def _chunked_forward(q, k, v, kmask, s0, z0, phi, chunk, block_bytes):
    b, length, h, _ = q.shape
    dv = s0.shape[-1]
    nc, nb, ncb, padded = _chunk_geometry(q, s0, chunk, block_bytes)
    q, k, v = (pad_axis(x, 1, padded) for x in (q, k, v))
    if kmask is not None:
        kmask = pad_axis(kmask, 1, padded)

    def body(i, carry):
        s, z, out, den_all, s_starts, z_starts = carry
        start = i * nc * chunk
        fq, fk, vb, _, _ = _block_inputs(q, k, v, kmask, start, nc, chunk, phi)
        sp, zp, ds, dz = _block_states(fk, vb, s, z)
        a = _causal_scores(fq, fk)
        num = jnp.einsum("bhnij,bhnjv->bhniv", a, vb) + jnp.einsum("bhnif,bhnfv->bhniv", fq, sp)
        den = jnp.sum(a, axis=-1) + jnp.einsum("bhnif,bhnf->bhni", fq, zp)
        out = _store(out, divide(num, den[..., None]), start)
        den_all = lax.dynamic_update_slice_in_dim(den_all, den.reshape(b, h, -1), start, axis=2)
        # States at the start of every backward block.
        at = i * (nc // ncb)
        s_starts = lax.dynamic_update_slice_in_dim(s_starts, _every(sp, ncb), at, axis=0)
        z_starts = lax.dynamic_update_slice_in_dim(z_starts, _every(zp, ncb), at, axis=0)
        return s + jnp.sum(ds, axis=2), z + jnp.sum(dz, axis=2), out, den_all, s_starts, z_starts

    ins = (q, k, v, s0, z0)
    # Each block's outputs are final when written, so they are stored in the input dtype.
    n_starts = nb * (nc // ncb)
    init = (
        s0,
        z0,
        _full((b, padded, h, dv), *ins, dtype=q.dtype, fill=1),
        _full((b, h, padded), *ins),
        _full((n_starts, *s0.shape), *ins),
        _full((n_starts, *z0.shape), *ins),
    )
    _, _, out, den, s_starts, z_starts = lax.fori_loop(0, nb, body, init)
    return out[:, :length], (den[:, :, :length], s_starts, z_starts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def chunked(q, k, v, kmask, s0, z0, phi, chunk, block_bytes):
    """Causal linear attention, chunked. q, k [B, L, H, D] (raw; `phi` maps them to features
    inside each block), v [B, L, H, Dv], kmask [B, L] float (0 = padding) or None, s0, z0 the
    initial state. Returns out [B, L, H, Dv] in the dtype of q."""
    return _chunked_forward(q, k, v, kmask, s0, z0, phi, chunk, block_bytes)[0]


def _chunked_fwd(q, k, v, kmask, s0, z0, phi, chunk, block_bytes):
    out, (den, s_starts, z_starts) = _chunked_forward(
        q, k, v, kmask, s0, z0, phi, chunk, block_bytes
    )
    return out, (q, k, v, kmask, s0, z0, out, den, s_starts, z_starts)


def _chunked_bwd(phi, chunk, block_bytes, res, g):
    """With dnum = g / den and dden = -(g . out) / den per query, and per chunk
    dA = tril(dnum V^T + dden 1^T), S / R the states before / after the chunk:
      dQ = dA K + dnum S^T + dden z^T,  dK = dA^T Q + V R^T + r,  dV = A^T dnum + K R,
    R, r accumulated over later chunks (and blocks, walked in reverse). R, r after the whole
    sequence are the gradients of the initial state."""
    q, k, v, kmask, s0, z0, out, den, s_starts, z_starts = res
    length = q.shape[1]
    _, _, nc, padded = _chunk_geometry(q, s0, chunk, block_bytes)
    nb = padded // (nc * chunk)
    inv = divide(1.0, den)
    q, k, v, g, out = (pad_axis(x, 1, padded) for x in (q, k, v, g, out))
    inv = pad_axis(inv, 2, padded)  # [B, H, L]
    if kmask is not None:
        kmask = pad_axis(kmask, 1, padded)
    tril = jnp.tril(jnp.ones((chunk, chunk), bool))

    def body(t, carry):
        r, rz, dq, dk, dvv = carry
        i = nb - 1 - t
        start = i * nc * chunk
        fq, fk, vb, q_vjp, k_vjp = _block_inputs(q, k, v, kmask, start, nc, chunk, phi)
        dnum = _load(g, start, nc, chunk) * _load_tokens(inv, start, nc, chunk)[..., None]
        dden = -jnp.sum(dnum * _load(out, start, nc, chunk), axis=-1)
        sp, zp, _, _ = _block_states(fk, vb, s_starts[i], z_starts[i])
        dr = jnp.einsum("bhnif,bhniv->bhnfv", fq, dnum)
        drz = jnp.einsum("bhnif,bhni->bhnf", fq, dden)
        rl = _exclusive(dr, reverse=True) + r[:, :, None]
        rzl = _exclusive(drz, reverse=True) + rz[:, :, None]
        at = jnp.where(tril.T, jnp.einsum("bhnjf,bhnif->bhnji", fk, fq), 0)  # A^T, NT form
        da = jnp.where(tril, jnp.einsum("bhniv,bhnjv->bhnij", dnum, vb) + dden[..., None], 0)
        dfq = (
            jnp.einsum("bhnij,bhnjf->bhnif", da, fk)
            + jnp.einsum("bhniv,bhnfv->bhnif", dnum, sp)
            + dden[..., None] * zp[:, :, :, None]
        )
        dfk = (
            jnp.einsum("bhnij,bhnif->bhnjf", da, fq)
            + jnp.einsum("bhnjv,bhnfv->bhnjf", vb, rl)
            + rzl[:, :, :, None]
        )
        dvb = jnp.einsum("bhnji,bhniv->bhnjv", at, dnum) + jnp.einsum("bhnjf,bhnfv->bhnjv", fk, rl)
        dq = _store(dq, q_vjp(dfq)[0], start)
        dk = _store(dk, k_vjp(dfk)[0], start)
        dvv = _store(dvv, dvb, start)
        return r + jnp.sum(dr, axis=2), rz + jnp.sum(drz, axis=2), dq, dk, dvv

    ins = (q, k, v, g, s0, z0)
    grads = (_full(x.shape, *ins, dtype=x.dtype, fill=n) for n, x in enumerate((q, k, v), 2))
    init = (_full(s0.shape, *ins), _full(z0.shape, *ins), *grads)
    ds0, dz0, dq, dk, dvv = lax.fori_loop(0, nb, body, init)
    dmask = None if kmask is None else jnp.zeros_like(kmask[:, :length])
    return dq[:, :length], dk[:, :length], dvv[:, :length], dmask, ds0, dz0


chunked.defvjp(_chunked_fwd, _chunked_bwd)
