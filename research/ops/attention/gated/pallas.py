"""Gated linear attention as a Pallas TPU (Mosaic) kernel, forward and backward.

The same mathematics as `gated/chunk.py` (the reference), written for one TPU core: the grid
is (batch, head, block) with the block axis sequential, and each grid step walks the
`chunk`-token chunks of one block of T <= BLOCK_TOKENS tokens with a `fori_loop`, the state
S [Dk, Dv] (fp32) held in VMEM scratch across chunks and blocks. One kernel serves
  - plain linear attention: no gate (`g=None`), v = [v, 1] for the normaliser (linear/);
  - GLA with a scalar gate per head and step (g [.., 1]) and a per-key-dim gate (g [.., Dk]).
Inside a chunk, with b the inclusive cumulative log-gate from the chunk start and q scaled,
  o_i = (q_i exp(b_i)) S + sum_{j <= i, same segment} (sum_d q_id k_jd exp(b_id - b_jd)) v_j,
  S' = exp(b_C) S + sum_{j in the last segment} (k_j exp(b_C - b_j)) v_j^T.
Every exponent is <= 0. The intra-chunk scores are built by sub-chunks of SUB tokens: a query
in sub-chunk s and a key before s meet through r_s, the cumulative gate just before s
(exp(b_i - r_s) and exp(r_s - b_j), both <= 1); inside sub-chunk s the per-key-dim gate needs
the [SUB, C, Dk] exponents (a scalar gate [SUB, C]), never [C, C, Dk].

Pallas TPU limits designed around:
  - `jnp.cumsum` does not lower on TPU (jax-ml/jax #32991): cumulative gates are products with
    a lower-triangular 0/1 matrix (on the MXU).
  - a scan with per-step (extensive) outputs does not lower (#21190): the chunk loop is a
    `fori_loop` that writes each chunk's rows into the output block in place.
  - block shapes follow the TPU tiling: the last two dims of each block are (T, D) with T a
    multiple of 8 (the whole padded length when it is one block) and D the full head dim;
    the segments travel as one int32 column [L, 1] (the first token of each token's segment),
    from which every mask is an iota comparison (no [1, L] row and no lane-dim slicing).
  - a [1, Dk] row is turned into a [Dk, 1] column by a masked lane reduction of eye(Dk), not
    a transpose.
Packed sequences: `start` [B, L] holds, per token, the index of its segment's first token (-1
for the first segment: the initial state is "token -1" of it). A query sees key j iff
j >= start_i, the entering state iff start_i < chunk start, and a key enters the chunk's exit
state iff j >= start of the chunk's last token.

Backward (custom VJP): the forward stores the state entering every block ([B, H, L / T, Dk,
Dv] fp32; the XLA form's rematerialisation stores the same). The backward kernel walks the
blocks in reverse; per block it recomputes the chunk-entry states into VMEM, then walks the
chunks in reverse, each chunk's gradients being `jax.vjp` of the chunk function above (traced
into the kernel: one source of truth for forward and backward), with dS carried in VMEM.

Off TPU the same kernels run under the Pallas interpreter (`interpret=True`: slow, for tests).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

SUB = 16  # tokens per sub-chunk (fla's chunk_gla secondary chunking uses 16 too)
BLOCK_TOKENS = 1024  # tokens per grid step; the backward keeps one state per block
_HI = lax.Precision.HIGHEST


def check_chunk(chunk: int) -> None:
    """The kernel's chunk: a power of two from SUB to BLOCK_TOKENS (it tiles a block)."""
    if chunk < SUB or chunk > BLOCK_TOKENS or chunk & (chunk - 1):
        raise ValueError(
            f"chunk_size={chunk} with implementation='pallas': use a power of two from {SUB} "
            f"to {BLOCK_TOKENS} (the kernel tiles blocks of {BLOCK_TOKENS} tokens by chunks "
            "and chunks by sub-chunks of 16)"
        )


def _dot(a, b):
    return jnp.dot(a, b, precision=_HI, preferred_element_type=jnp.float32)


def _dot_t(a, b):  # a^T b
    return lax.dot_general(
        a, b, (((0,), (0,)), ((), ())), precision=_HI, preferred_element_type=jnp.float32
    )


def _dot_nt(a, b):  # a b^T
    return lax.dot_general(
        a, b, (((1,), (1,)), ((), ())), precision=_HI, preferred_element_type=jnp.float32
    )


def _column(row):
    """[1, D] -> [D, 1] without a transpose: the diagonal of eye(D) * row, summed over lanes."""
    d = row.shape[-1]
    eye = lax.broadcasted_iota(jnp.int32, (d, d), 0) == lax.broadcasted_iota(jnp.int32, (d, d), 1)
    return jnp.sum(jnp.where(eye, row, 0.0), axis=1, keepdims=True)


def _iota(shape, dim):
    return lax.broadcasted_iota(jnp.int32, shape, dim)


def chunk_step(q, k, v, g, s, start, c0, *, packed: bool, scale: float):
    """One chunk. q (multiplied by `scale` here), k [C, Dk], v [C, Dv], g [C, Dg] (Dg = Dk or
    1) or None (no gate), all fp32; s [Dk, Dv] the entering state; start [C, 1] int32 the first
    token of each token's segment (global index, -1 for the first segment); c0 the chunk's first
    global index. Returns (o [C, Dv], the exit state [Dk, Dv])."""
    c_len = q.shape[0]
    q = q * scale
    rows, cols = _iota((c_len, c_len), 0), _iota((c_len, c_len), 1)
    visible = cols <= rows
    if packed:
        visible &= cols + c0 >= start  # key j in query i's segment
        from_state = start < c0  # [C, 1] the query's segment began before the chunk
        last = start[c_len - 1 :, :]  # [1, 1]
        to_state = _iota((c_len, 1), 0) + c0 >= last  # the key is in the last segment
        keep = last < c0  # [1, 1] the entering state survives the chunk
    if g is None:
        a = jnp.where(visible, _dot_nt(q, k), 0.0)
        o = _dot(a, v)
        q_in, k_out = q, k
        s_dec = s
    else:
        tri = (cols <= rows).astype(jnp.float32)
        b = _dot(tri, g)  # [C, Dg] inclusive cumulative log-gate, <= 0, non-increasing
        parts = []
        for sc in range(c_len // SUB):
            lo = sc * SUB
            qs, bs = q[lo : lo + SUB], b[lo : lo + SUB]
            r = b[lo - 1 : lo] if sc else jnp.zeros_like(b[:1])  # gate sum before sub-chunk
            before = _iota((1, c_len), 1) < lo  # [1, C] keys before the sub-chunk
            # keys before: exp(b_i - r) exp(r - b_j), each <= 1 (the key factor masked to 0
            # where j is not before, so nothing overflows)
            kr = k * jnp.exp(jnp.minimum(r - b, 0.0))
            off = _dot_nt(qs * jnp.exp(bs - r), kr)
            off = jnp.where(before, off, 0.0)
            inside = (_iota((SUB, c_len), 1) >= lo) & (
                _iota((SUB, c_len), 1) <= _iota((SUB, c_len), 0) + lo
            )
            if g.shape[-1] == 1:
                expo = jnp.where(inside, bs - _row(b), -jnp.inf)  # [SUB, C]
                diag = _dot_nt(qs, k) * jnp.exp(expo)
            else:
                shape3 = (SUB, c_len, g.shape[-1])
                i3, j3 = _iota(shape3, 0) + lo, _iota(shape3, 1)
                inside3 = (j3 >= lo) & (j3 <= i3)  # 3D iotas: Mosaic reshapes no i1 vectors
                expo = jnp.where(inside3, bs[:, None, :] - b[None, :, :], -jnp.inf)
                diag = jnp.sum(qs[:, None, :] * k[None, :, :] * jnp.exp(expo), axis=-1)
            parts.append(off + diag)
        a = jnp.where(visible, jnp.concatenate(parts, axis=0), 0.0)
        o = _dot(a, v)
        b_last = b[c_len - 1 :]  # [1, Dg]
        q_in = q * jnp.exp(b)
        k_out = k * jnp.exp(b_last - b)
        decay = jnp.exp(b_last)
        s_dec = s * (_column(decay) if g.shape[-1] > 1 else decay)
    if packed:
        q_in = jnp.where(from_state, q_in, 0.0)
        k_out = jnp.where(to_state, k_out, 0.0)
        s_dec = jnp.where(keep, s_dec, 0.0)
    o = o + _dot(q_in, s)
    return o, s_dec + _dot_t(k_out, v)


def _row(col):
    """[C, 1] -> [1, C] (the scalar gate's cumulative sums as a row), by the eye mask."""
    c = col.shape[0]
    eye = _iota((c, c), 0) == _iota((c, c), 1)
    return jnp.sum(jnp.where(eye, col, 0.0), axis=0, keepdims=True)


def _chunk_refs(refs, c, chunk, gated):
    rows = pl.ds(pl.multiple_of(c * chunk, chunk), chunk)
    q, k, v = (r[rows].astype(jnp.float32) for r in refs[:3])
    g = refs[3][rows].astype(jnp.float32) if gated else None
    return q, k, v, g, refs[4][rows], rows


def _fwd_kernel(*refs, chunk: int, gated: bool, packed: bool, scale: float):
    q_ref, k_ref, v_ref, g_ref, start_ref, s0_ref, o_ref, sb_ref, st_ref, s_scr = refs
    j = pl.program_id(2)
    block = q_ref.shape[0]

    @pl.when(j == 0)
    def _():
        s_scr[...] = s0_ref[...]

    sb_ref[...] = s_scr[...]  # the state entering this block (for the backward)

    def body(c, s):
        q, k, v, g, start, rows = _chunk_refs(refs, c, chunk, gated)
        o, s = chunk_step(q, k, v, g, s, start, j * block + c * chunk, packed=packed, scale=scale)
        o_ref[rows] = o.astype(o_ref.dtype)
        return s

    s_scr[...] = lax.fori_loop(0, block // chunk, body, s_scr[...])

    @pl.when(j == pl.num_programs(2) - 1)
    def _():
        st_ref[...] = s_scr[...]


def _bwd_kernel(*refs, chunk: int, gated: bool, packed: bool, scale: float):
    (q_ref, k_ref, v_ref, g_ref, start_ref, sb_ref, do_ref, dst_ref) = refs[:8]
    dq_ref, dk_ref, dv_ref, dg_ref, ds0_ref, ds_scr, states_scr = refs[8:]
    j = pl.program_id(2)
    nb = pl.num_programs(2)
    blk = nb - 1 - j  # blocks in reverse
    block = q_ref.shape[0]
    n = block // chunk

    @pl.when(j == 0)
    def _():
        ds_scr[...] = dst_ref[...]

    def forward(c, s):
        q, k, v, g, start, _ = _chunk_refs(refs, c, chunk, gated)
        states_scr[c] = s
        c0 = blk * block + c * chunk
        return chunk_step(q, k, v, g, s, start, c0, packed=packed, scale=scale)[1]

    lax.fori_loop(0, n, forward, sb_ref[...])

    def backward(i, ds):
        c = n - 1 - i
        q, k, v, g, start, rows = _chunk_refs(refs, c, chunk, gated)
        c0 = blk * block + c * chunk
        step = functools.partial(chunk_step, start=start, c0=c0, packed=packed, scale=scale)
        if gated:
            _, vjp = jax.vjp(lambda q, k, v, g, s: step(q, k, v, g, s), q, k, v, g, states_scr[c])
        else:
            _, vjp = jax.vjp(lambda q, k, v, s: step(q, k, v, None, s), q, k, v, states_scr[c])
        grads = vjp((do_ref[rows].astype(jnp.float32), ds))
        dq_ref[rows] = grads[0].astype(dq_ref.dtype)
        dk_ref[rows] = grads[1].astype(dk_ref.dtype)
        dv_ref[rows] = grads[2].astype(dv_ref.dtype)
        if gated:
            dg_ref[rows] = grads[3].astype(dg_ref.dtype)
        return grads[-1]

    ds_scr[...] = lax.fori_loop(0, n, backward, ds_scr[...])

    @pl.when(j == nb - 1)
    def _():
        ds0_ref[...] = ds_scr[...]


def _specs(block, dims, reverse=False):
    """BlockSpecs over [B, H, L, D] arrays (one block of tokens, one head) for each D in dims."""

    def tokens(b, h, j, nb):
        return (b, h, nb - 1 - j if reverse else j, 0)

    return [pl.BlockSpec((None, None, block, d), tokens) for d in dims]


def _call(kernel, grid, in_specs, out_specs, out_shape, scratch, interpret):
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=scratch,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
    )


def _forward(q, k, v, g, start, s0, *, chunk, block, scale, interpret):
    """q, k, v, g [B, H, L, .] (L a multiple of block), start [B, 1, L, 1] int32, s0 [B, H, Dk,
    Dv] fp32 -> (o [B, H, L, Dv] fp32, block states [B, H, L / block, Dk, Dv], final state)."""
    bsz, h, length, dk = q.shape
    dv = v.shape[-1]
    nb = length // block
    gated = g is not None
    g = g if gated else jnp.zeros((bsz, h, length, 1), jnp.float32)
    grid = (bsz, h, nb)
    state = pl.BlockSpec((None, None, dk, dv), lambda b, hh, j: (b, hh, 0, 0))
    seq = [
        pl.BlockSpec((None, None, block, d), lambda b, hh, j: (b, hh, j, 0))
        for d in (dk, dk, dv, g.shape[-1])
    ]
    start_spec = pl.BlockSpec((None, None, block, 1), lambda b, hh, j: (b, 0, j, 0))
    kernel = functools.partial(
        _fwd_kernel, chunk=chunk, gated=gated, packed=start is not None, scale=scale
    )
    start = start if start is not None else jnp.full((bsz, 1, length, 1), -1, jnp.int32)
    return _call(
        kernel,
        grid,
        [*seq, start_spec, state],
        [
            pl.BlockSpec((None, None, block, dv), lambda b, hh, j: (b, hh, j, 0)),
            pl.BlockSpec((None, None, None, dk, dv), lambda b, hh, j: (b, hh, j, 0, 0)),
            state,
        ],
        [
            jax.ShapeDtypeStruct((bsz, h, length, dv), jnp.float32),
            jax.ShapeDtypeStruct((bsz, h, nb, dk, dv), jnp.float32),
            jax.ShapeDtypeStruct((bsz, h, dk, dv), jnp.float32),
        ],
        [pltpu.VMEM((dk, dv), jnp.float32)],
        interpret,
    )(q, k, v, g, start, s0)


def _backward(q, k, v, g, start, sb, do, dst, *, chunk, block, scale, interpret):
    """Gradients (dq, dk, dv, dg or None, ds0) of `_forward`'s (o, final state)."""
    bsz, h, length, dk = q.shape
    dv = v.shape[-1]
    nb = length // block
    gated = g is not None
    g = g if gated else jnp.zeros((bsz, h, length, 1), jnp.float32)
    packed = start is not None
    start = start if packed else jnp.full((bsz, 1, length, 1), -1, jnp.int32)

    def rev(b, hh, j):
        return (b, hh, nb - 1 - j, 0)

    seq = [pl.BlockSpec((None, None, block, d), rev) for d in (dk, dk, dv, g.shape[-1])]
    start_spec = pl.BlockSpec((None, None, block, 1), lambda b, hh, j: (b, 0, nb - 1 - j, 0))
    sb_spec = pl.BlockSpec((None, None, None, dk, dv), lambda b, hh, j: (b, hh, nb - 1 - j, 0, 0))
    state = pl.BlockSpec((None, None, dk, dv), lambda b, hh, j: (b, hh, 0, 0))
    do_spec = pl.BlockSpec((None, None, block, dv), rev)
    kernel = functools.partial(_bwd_kernel, chunk=chunk, gated=gated, packed=packed, scale=scale)
    dq, dk_, dv_, dg, ds0 = _call(
        kernel,
        (bsz, h, nb),
        [*seq, start_spec, sb_spec, do_spec, state],
        [*seq, state],
        [
            jax.ShapeDtypeStruct(q.shape, jnp.float32),
            jax.ShapeDtypeStruct(k.shape, jnp.float32),
            jax.ShapeDtypeStruct(v.shape, jnp.float32),
            jax.ShapeDtypeStruct(g.shape, jnp.float32),
            jax.ShapeDtypeStruct((bsz, h, dk, dv), jnp.float32),
        ],
        [pltpu.VMEM((dk, dv), jnp.float32), pltpu.VMEM((block // chunk, dk, dv), jnp.float32)],
        interpret,
    )(q, k, v, g, start, sb, do, dst)
    return dq, dk_, dv_, (dg if gated else None), ds0


def _on_platform(fn, *args):
    """fn(*args, interpret=False) when lowered for TPU (Mosaic), else under the interpreter."""
    return lax.platform_dependent(
        *args,
        tpu=functools.partial(fn, interpret=False),
        default=functools.partial(fn, interpret=True),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _kernel(q, k, v, g, start, s0, chunk, block, scale):
    o, _, st = _on_platform(
        functools.partial(_forward, chunk=chunk, block=block, scale=scale), q, k, v, g, start, s0
    )
    return o, st


def _kernel_fwd(q, k, v, g, start, s0, chunk, block, scale):
    o, sb, st = _on_platform(
        functools.partial(_forward, chunk=chunk, block=block, scale=scale), q, k, v, g, start, s0
    )
    return (o, st), (q, k, v, g, start, sb)


def _kernel_bwd(chunk, block, scale, res, cts):
    q, k, v, g, start, sb = res
    do, dst = cts
    dq, dk, dv, dg, ds0 = _on_platform(
        functools.partial(_backward, chunk=chunk, block=block, scale=scale),
        q,
        k,
        v,
        g,
        start,
        sb,
        do,
        dst,
    )
    dq, dk, dv = (d.astype(x.dtype) for d, x in ((dq, q), (dk, k), (dv, v)))
    return dq, dk, dv, dg, None, ds0


_kernel.defvjp(_kernel_fwd, _kernel_bwd)


def segment_first_token(seg):
    """seg [B, L] non-decreasing ids -> [B, L] int32: the index of each token's segment's first
    token, -1 throughout the first segment (the one the initial state belongs to)."""
    pos = jnp.arange(seg.shape[1], dtype=jnp.int32)
    new = jnp.concatenate([jnp.zeros_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], axis=1)
    return lax.cummax(jnp.where(new, pos, -1), axis=1)


def chunked(q, k, v, g, seg, s0, *, scale: float, chunk: int):
    """As `gated.chunk.chunked` (the reference): q, k [B, L, H, Dk] (k, v repeated to H heads),
    v [B, L, H, Dv], g [B, L, H, Dk or 1] fp32 or None (no gate: plain linear attention), seg
    [B, L] int or None, s0 [B, H, Dk, Dv] fp32. Returns (out [B, L, H, Dv] fp32, state)."""
    check_chunk(chunk)
    if jax.default_backend() == "gpu":
        raise ValueError(
            "implementation='pallas' has TPU (Mosaic) kernels only, no GPU (Triton) kernel for "
            "linear attention: use implementation='xla' (the chunked jnp form) on GPU"
        )
    b, length, _, _ = q.shape
    block = min(BLOCK_TOKENS, -(-length // chunk) * chunk)
    padded = -(-length // block) * block

    def prep(x):
        return (
            None
            if x is None
            else jnp.swapaxes(jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0))), 1, 2)
        )

    f32 = jnp.float32
    qh, kh, vh = prep(q), prep(k), prep(v)  # in their dtype; the kernel computes in fp32
    gh = prep(None if g is None else g.astype(f32))
    start = None
    if seg is not None:
        first = jnp.pad(segment_first_token(seg), ((0, 0), (0, padded - length)), mode="edge")
        start = first[:, None, :, None]
    s0 = s0.astype(f32)
    o, st = _kernel(qh, kh, vh, gh, start, s0, chunk, block, float(scale))
    return jnp.swapaxes(o, 1, 2)[:, :length], st
