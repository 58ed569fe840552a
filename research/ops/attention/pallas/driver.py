"""The grid, the state in VMEM and the custom VJP shared by the chunked linear-attention kernels.

A kernel here is one pure function, `step(*xs, s, *, start, c0, state_only) -> (o, s')`, for
one chunk of C tokens of one (batch row, head): xs the chunk's per-token inputs [C, D_i] in
fp32, s [Dk, Dv] the entering state, start [C, 1] int32 the first token of each token's segment
(`starts`), c0 the chunk's first token index; with state_only it returns (None, s') and skips
the output's work. `gla.py` and `delta.py` write it; this module runs it.

Forward: the grid is (batch, head, block) with the block axis sequential ("arbitrary"); a grid
step walks the T / C chunks of a block of T <= BLOCK_TOKENS tokens with a `fori_loop`, the
state in VMEM scratch across chunks and blocks, and writes each chunk's output rows in place.
It also writes the state entering each block, [B, H, L / T, Dk, Dv] fp32: the backward's only
residual besides the inputs (the XLA forms' rematerialisation keeps the same, one state per
block of 1024 tokens).

Backward: the same grid with the blocks in reverse. Per block it recomputes the chunk-entry
states into VMEM scratch [T / C, Dk, Dv], then walks the chunks in reverse; a chunk's input
gradients and the gradient of its entering state are `jax.vjp(step)` at that chunk (traced into
the kernel, so forward and backward share one source of truth), dS carried in VMEM.

Pallas TPU limits designed around (say so where they bite):
  - `jnp.cumsum` does not lower on TPU (jax-ml/jax #32991): the steps build cumulative gates as
    products with a lower-triangular 0/1 matrix, on the MXU;
  - a scan with per-step (extensive) outputs does not lower (#21190): chunk loops are
    `fori_loop`s that write output rows in place;
  - block shapes follow the TPU tiling: each block's last two dims are (T, D), T a multiple of
    16 (the whole padded length when that is one block), D the full head dim; segments travel
    as one int32 column [L, 1], and every mask is an iota comparison (no [1, L] rows, no
    lane-dim slicing, no reshapes of boolean vectors, which Mosaic refuses).

Off TPU the kernels run under the Pallas interpreter (slow: tests, reading on a laptop); the
choice is made when the computation is lowered (`lax.platform_dependent`), so a CPU host that
compiles for TPU ahead of time (`research.plan`) gets the Mosaic kernels.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from research.ops.attention.pallas.tiles import iota

SUB = 16  # tokens per sub-chunk, and the smallest chunk
BLOCK_TOKENS = 1024  # tokens per grid step; the backward keeps one state per block
MAX_CHUNK = 128  # at 256 Mosaic refuses the GLA backward for v5e: 24 of 16 MiB scoped VMEM
LANES = 128  # the TPU vector width: per-token scalars are stored LANES tokens to a row
TOKENS, SCALAR = "tokens", "scalar"  # an input's layout: [.., L, D] or lane-dense scalars


def check_chunk(chunk: int) -> None:
    """The kernels' chunk: a power of two from SUB to MAX_CHUNK (it tiles a block)."""
    top = min(MAX_CHUNK, BLOCK_TOKENS)
    if not isinstance(chunk, int) or chunk < SUB or chunk > top or chunk & (chunk - 1):
        raise ValueError(
            f"chunk_size={chunk!r} with implementation='pallas': use a power of two from {SUB} "
            f"to {top} (chunks tile blocks of {BLOCK_TOKENS} tokens and are tiled by sub-chunks "
            f"of {SUB}; from 256 the GLA backward's chunk intermediates outgrow a TPU core's "
            "16 MiB of scoped VMEM)"
        )


def check_backend() -> None:
    """A GPU has no kernel here: one line naming the XLA form."""
    if jax.default_backend() == "gpu":
        raise ValueError(
            "implementation='pallas' has TPU (Mosaic) kernels only, no GPU (Triton) kernel for "
            "linear attention: use implementation='xla' (the chunked jnp form) on GPU"
        )


def starts(reset):
    """reset [B, L] bool (True: the state restarts before that token) -> [B, L] int32, the index
    of each token's segment's first token; -1 throughout the first segment (the initial state
    is its "token -1")."""
    pos = jnp.arange(reset.shape[1], dtype=jnp.int32)
    return lax.cummax(jnp.where(reset, pos, -1), axis=1)


def _lane_column(ref, c, chunk: int):
    """The chunk's C per-token scalars of a lane-dense block ref [T / LANES, LANES] as an fp32
    column [C, 1]: each row of LANES tokens picked by a dynamic row index, its lanes moved to
    sublanes by an iota mask and a lane reduction (no transpose, no dynamic lane slice)."""
    n = min(chunk, LANES)
    pieces = []
    for p in range(max(1, chunk // LANES)):
        tok0 = c * chunk + p * LANES
        row = ref[pl.ds(_row_of(tok0), 1), :].astype(jnp.float32)  # [1, LANES]
        hit = iota((n, LANES), 1) == iota((n, LANES), 0) + _lane_of(tok0)
        pieces.append(jnp.sum(jnp.where(hit, row, 0.0), axis=1, keepdims=True))
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=0)


def _store_lane_column(ref, col, c, chunk: int):
    """The inverse of `_lane_column`: writes col [C, 1] into its lanes of the rows of ref."""
    n = min(chunk, LANES)
    for p in range(max(1, chunk // LANES)):
        tok0 = c * chunk + p * LANES
        off = _lane_of(tok0)
        piece = col[p * n : (p + 1) * n]
        hit = iota((n, LANES), 1) == iota((n, LANES), 0) + off
        row = jnp.sum(jnp.where(hit, piece, 0.0), axis=0, keepdims=True)  # [1, LANES]
        lanes = iota((1, LANES), 1)
        rows = pl.ds(_row_of(tok0), 1)
        ref[rows, :] = jnp.where((lanes >= off) & (lanes < off + n), row, ref[rows, :]).astype(
            ref.dtype
        )


def _row_of(token):  # token // LANES (LANES a power of two: a shift; `//` does not lower
    return lax.shift_right_logical(token, LANES.bit_length() - 1)  # when AOT-compiling)


def _lane_of(token):  # token % LANES
    return lax.bitwise_and(token, LANES - 1)


def _chunk(refs, kinds, start_ref, c, chunk):
    """The chunk's inputs (fp32: [C, D] token matrices, [C, 1] scalars), its segment starts
    [C, 1] int32, and the row slice of its token matrices."""
    rows = pl.ds(pl.multiple_of(c * chunk, chunk), chunk)
    xs = [
        r[rows].astype(jnp.float32) if kind == TOKENS else _lane_column(r, c, chunk)
        for r, kind in zip(refs, kinds, strict=True)
    ]
    return xs, _lane_column(start_ref, c, chunk).astype(jnp.int32), rows


def _fwd_kernel(*refs, step, kinds: tuple, chunk: int, block: int):
    n_in = len(kinds)
    xs_refs, (start_ref, s0_ref, o_ref, sb_ref, st_ref, s_scr) = refs[:n_in], refs[n_in:]
    j = pl.program_id(2)

    @pl.when(j == 0)
    def _():
        s_scr[...] = s0_ref[...]

    sb_ref[...] = s_scr[...]

    def body(c, s):
        xs, start, rows = _chunk(xs_refs, kinds, start_ref, c, chunk)
        o, s = step(*xs, s, start=start, c0=j * block + c * chunk)
        o_ref[rows] = o.astype(o_ref.dtype)
        return s

    s_scr[...] = lax.fori_loop(0, block // chunk, body, s_scr[...])

    @pl.when(j == pl.num_programs(2) - 1)
    def _():
        st_ref[...] = s_scr[...]


def _bwd_kernel(*refs, step, kinds: tuple, chunk: int, block: int):
    n_in = len(kinds)
    xs_refs = refs[:n_in]
    start_ref, sb_ref, do_ref, dst_ref = refs[n_in : n_in + 4]
    dxs_refs = refs[n_in + 4 : 2 * n_in + 4]
    ds0_ref, ds_scr, states_scr = refs[2 * n_in + 4 :]
    j, nb = pl.program_id(2), pl.num_programs(2)
    blk = nb - 1 - j  # the blocks in reverse
    n = block // chunk

    @pl.when(j == 0)
    def _():
        ds_scr[...] = dst_ref[...]

    def forward(c, s):
        xs, start, _ = _chunk(xs_refs, kinds, start_ref, c, chunk)
        states_scr[c] = s
        return step(*xs, s, start=start, c0=blk * block + c * chunk, state_only=True)[1]

    lax.fori_loop(0, n, forward, sb_ref[...])

    def backward(i, ds):
        c = n - 1 - i
        xs, start, rows = _chunk(xs_refs, kinds, start_ref, c, chunk)
        at = functools.partial(step, start=start, c0=blk * block + c * chunk)
        _, vjp = jax.vjp(at, *xs, states_scr[c])
        grads = vjp((do_ref[rows].astype(jnp.float32), ds))
        for r, d, kind in zip(dxs_refs, grads[:-1], kinds, strict=True):
            if kind == TOKENS:
                r[rows] = d.astype(r.dtype)
            else:
                _store_lane_column(r, d, c, chunk)
        return grads[-1]

    ds_scr[...] = lax.fori_loop(0, n, backward, ds_scr[...])

    @pl.when(j == nb - 1)
    def _():
        ds0_ref[...] = ds_scr[...]


def _params():
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _specs(xs, kinds, block, index):
    """BlockSpecs of the inputs: token matrices [B, H, L, D] by blocks of tokens, scalars
    [B, H, L / LANES, LANES] by blocks of rows; `index(b, i, j)` the block's index."""
    rows = block // LANES
    return [
        pl.BlockSpec((None, None, block, x.shape[-1]), index)
        if kind == TOKENS
        else pl.BlockSpec((None, None, rows, LANES), index)
        for x, kind in zip(xs, kinds, strict=True)
    ]


def _forward(xs, start, s0, *, step, kinds, chunk, block, out_dim, interpret):
    bsz, h = xs[0].shape[:2]
    dk, dv = s0.shape[-2:]
    length = start.shape[2] * LANES
    nb = length // block
    at = lambda b, i, j: (b, i, j, 0)  # noqa: E731
    start_spec = pl.BlockSpec((None, None, block // LANES, LANES), lambda b, i, j: (b, 0, j, 0))
    state = pl.BlockSpec((None, None, dk, dv), lambda b, i, j: (b, i, 0, 0))
    kernel = functools.partial(_fwd_kernel, step=step, kinds=kinds, chunk=chunk, block=block)
    return pl.pallas_call(
        kernel,
        grid=(bsz, h, nb),
        in_specs=[*_specs(xs, kinds, block, at), start_spec, state],
        out_specs=[
            pl.BlockSpec((None, None, block, out_dim), at),
            pl.BlockSpec((None, None, None, dk, dv), lambda b, i, j: (b, i, j, 0, 0)),
            state,
        ],
        out_shape=[
            jax.ShapeDtypeStruct((bsz, h, length, out_dim), jnp.float32),
            jax.ShapeDtypeStruct((bsz, h, nb, dk, dv), jnp.float32),
            jax.ShapeDtypeStruct((bsz, h, dk, dv), jnp.float32),
        ],
        scratch_shapes=[pltpu.VMEM((dk, dv), jnp.float32)],
        compiler_params=_params(),
        interpret=interpret,
    )(*xs, start, s0)


def _backward(xs, start, sb, do, dst, *, step, kinds, chunk, block, interpret):
    bsz, h = xs[0].shape[:2]
    dk, dv = dst.shape[-2:]
    length = start.shape[2] * LANES
    nb = length // block

    def rev(b, i, j):
        return (b, i, nb - 1 - j, 0)

    start_spec = pl.BlockSpec(
        (None, None, block // LANES, LANES), lambda b, i, j: (b, 0, nb - 1 - j, 0)
    )
    sb_spec = pl.BlockSpec((None, None, None, dk, dv), lambda b, i, j: (b, i, nb - 1 - j, 0, 0))
    state = pl.BlockSpec((None, None, dk, dv), lambda b, i, j: (b, i, 0, 0))
    do_spec = pl.BlockSpec((None, None, block, do.shape[-1]), rev)
    kernel = functools.partial(_bwd_kernel, step=step, kinds=kinds, chunk=chunk, block=block)
    tok = _specs(xs, kinds, block, rev)
    return pl.pallas_call(
        kernel,
        grid=(bsz, h, nb),
        in_specs=[*tok, start_spec, sb_spec, do_spec, state],
        out_specs=[*tok, state],
        out_shape=[
            *(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in xs),
            jax.ShapeDtypeStruct((bsz, h, dk, dv), jnp.float32),
        ],
        scratch_shapes=[
            pltpu.VMEM((dk, dv), jnp.float32),
            pltpu.VMEM((block // chunk, dk, dv), jnp.float32),
        ],
        compiler_params=_params(),
        interpret=interpret,
    )(*xs, start, sb, do, dst)


def _on_platform(fn, *args):
    """fn(*args, interpret=False) when lowered for TPU (Mosaic), else under the interpreter."""
    return lax.platform_dependent(
        *args,
        tpu=functools.partial(fn, interpret=False),
        default=functools.partial(fn, interpret=True),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 5, 6, 7))
def _run(step, kinds, xs, start, s0, chunk, block, out_dim):
    fwd = functools.partial(
        _forward, step=step, kinds=kinds, chunk=chunk, block=block, out_dim=out_dim
    )
    o, _, st = _on_platform(fwd, xs, start, s0)
    return o, st


def _run_fwd(step, kinds, xs, start, s0, chunk, block, out_dim):
    fwd = functools.partial(
        _forward, step=step, kinds=kinds, chunk=chunk, block=block, out_dim=out_dim
    )
    o, sb, st = _on_platform(fwd, xs, start, s0)
    return (o, st), (xs, start, sb)


def _run_bwd(step, kinds, chunk, block, out_dim, res, cts):
    xs, start, sb = res
    bwd = functools.partial(_backward, step=step, kinds=kinds, chunk=chunk, block=block)
    *dxs, ds0 = _on_platform(bwd, xs, start, sb, *cts)
    return tuple(d.astype(x.dtype) for d, x in zip(dxs, xs, strict=True)), None, ds0


_run.defvjp(_run_fwd, _run_bwd)


def run(step, xs, reset, s0, *, chunk: int, out_dim: int | None = None):
    """Run the chunk function `step` (module docstring) over token-major inputs.

    xs: per-token inputs, each [B, L, H, D] (a token matrix) or [B, L, H] (a scalar per token
    and head: beta, a scalar gate; stored lane-dense, [B, H, L / LANES, LANES], since a
    [.., L, 1] array is padded to 128 lanes on TPU), any float dtype (the kernel computes in
    fp32); reset [B, L] bool or None (the state restarts before each True token); s0 [B, H, Dk,
    Dv]; out_dim: the output's last dim (default Dv). `step` must be hashable (a module-level
    function or a functools.partial of one). Returns (o [B, L, H, out_dim] fp32, final state
    [B, H, Dk, Dv] fp32); differentiable in xs and s0."""
    check_chunk(chunk)
    check_backend()
    bsz, length = xs[0].shape[:2]
    unit = max(chunk, LANES)
    block = min(BLOCK_TOKENS, -(-length // unit) * unit)
    padded = -(-length // block) * block
    pad = ((0, 0), (0, padded - length))
    kinds = tuple(TOKENS if x.ndim == 4 else SCALAR for x in xs)
    # Padded tokens (every input 0, the last token's segment) leave the state unchanged.
    heads_major = []
    for x in xs:
        x = jnp.swapaxes(jnp.pad(x, pad + ((0, 0),) * (x.ndim - 2)), 1, 2)
        heads_major.append(x if x.ndim == 4 else x.reshape(bsz, x.shape[1], -1, LANES))
    if reset is None:
        start = jnp.full((bsz, padded), -1.0, jnp.float32)
    else:
        start = jnp.pad(starts(reset), pad, mode="edge").astype(jnp.float32)
    start = start.reshape(bsz, 1, -1, LANES)  # fp32: exact for indices below 2^24
    out_dim = s0.shape[-1] if out_dim is None else out_dim
    o, st = _run(
        step, kinds, tuple(heads_major), start, s0.astype(jnp.float32), chunk, block, out_dim
    )
    return jnp.swapaxes(o, 1, 2)[:, :length], st
