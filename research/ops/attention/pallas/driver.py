"""The grid, the state in VMEM and the custom VJP shared by the chunked linear-attention kernels.

A kernel here is one pure function, `step(*xs, s, *, start, c0) -> (o, s')`, for one chunk of C
tokens of one (batch row, head): xs the chunk's per-token inputs [C, D_i] in fp32, s [Dk, Dv]
the entering state, start [C, 1] int32 the first token of each token's segment (`starts`), c0
the chunk's first token index. `gla.py` and `delta.py` write it; this module runs it.

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

SUB = 16  # tokens per sub-chunk, and the smallest chunk
BLOCK_TOKENS = 1024  # tokens per grid step; the backward keeps one state per block


def check_chunk(chunk: int) -> None:
    """The kernels' chunk: a power of two from SUB to BLOCK_TOKENS (it tiles a block)."""
    if not isinstance(chunk, int) or chunk < SUB or chunk > BLOCK_TOKENS or chunk & (chunk - 1):
        raise ValueError(
            f"chunk_size={chunk!r} with implementation='pallas': use a power of two from {SUB} "
            f"to {BLOCK_TOKENS} (the kernel tiles blocks of {BLOCK_TOKENS} tokens by chunks, "
            f"chunks by sub-chunks of {SUB})"
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


def _chunk(refs, c, chunk):
    rows = pl.ds(pl.multiple_of(c * chunk, chunk), chunk)
    return [r[rows].astype(jnp.float32) for r in refs], rows


def _fwd_kernel(*refs, step, n_in: int, chunk: int):
    xs_refs, (start_ref, s0_ref, o_ref, sb_ref, st_ref, s_scr) = refs[:n_in], refs[n_in:]
    j = pl.program_id(2)
    block = start_ref.shape[0]

    @pl.when(j == 0)
    def _():
        s_scr[...] = s0_ref[...]

    sb_ref[...] = s_scr[...]

    def body(c, s):
        xs, rows = _chunk(xs_refs, c, chunk)
        o, s = step(*xs, s, start=start_ref[rows], c0=j * block + c * chunk)
        o_ref[rows] = o.astype(o_ref.dtype)
        return s

    s_scr[...] = lax.fori_loop(0, block // chunk, body, s_scr[...])

    @pl.when(j == pl.num_programs(2) - 1)
    def _():
        st_ref[...] = s_scr[...]


def _bwd_kernel(*refs, step, n_in: int, chunk: int):
    xs_refs = refs[:n_in]
    start_ref, sb_ref, do_ref, dst_ref = refs[n_in : n_in + 4]
    dxs_refs = refs[n_in + 4 : 2 * n_in + 4]
    ds0_ref, ds_scr, states_scr = refs[2 * n_in + 4 :]
    j, nb = pl.program_id(2), pl.num_programs(2)
    blk = nb - 1 - j  # the blocks in reverse
    block = start_ref.shape[0]
    n = block // chunk

    @pl.when(j == 0)
    def _():
        ds_scr[...] = dst_ref[...]

    def forward(c, s):
        xs, rows = _chunk(xs_refs, c, chunk)
        states_scr[c] = s
        return step(*xs, s, start=start_ref[rows], c0=blk * block + c * chunk)[1]

    lax.fori_loop(0, n, forward, sb_ref[...])

    def backward(i, ds):
        c = n - 1 - i
        xs, rows = _chunk(xs_refs, c, chunk)
        at = functools.partial(step, start=start_ref[rows], c0=blk * block + c * chunk)
        _, vjp = jax.vjp(at, *xs, states_scr[c])
        grads = vjp((do_ref[rows].astype(jnp.float32), ds))
        for r, d in zip(dxs_refs, grads[:-1], strict=True):
            r[rows] = d.astype(r.dtype)
        return grads[-1]

    ds_scr[...] = lax.fori_loop(0, n, backward, ds_scr[...])

    @pl.when(j == nb - 1)
    def _():
        ds0_ref[...] = ds_scr[...]


def _params():
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _forward(xs, start, s0, *, step, chunk, block, interpret):
    bsz, h, length, _ = xs[0].shape
    dk, dv = s0.shape[-2:]
    nb = length // block
    tok = [pl.BlockSpec((None, None, block, x.shape[-1]), lambda b, i, j: (b, i, j, 0)) for x in xs]
    start_spec = pl.BlockSpec((None, None, block, 1), lambda b, i, j: (b, 0, j, 0))
    state = pl.BlockSpec((None, None, dk, dv), lambda b, i, j: (b, i, 0, 0))
    return pl.pallas_call(
        functools.partial(_fwd_kernel, step=step, n_in=len(xs), chunk=chunk),
        grid=(bsz, h, nb),
        in_specs=[*tok, start_spec, state],
        out_specs=[
            pl.BlockSpec((None, None, block, dv), lambda b, i, j: (b, i, j, 0)),
            pl.BlockSpec((None, None, None, dk, dv), lambda b, i, j: (b, i, j, 0, 0)),
            state,
        ],
        out_shape=[
            jax.ShapeDtypeStruct((bsz, h, length, dv), jnp.float32),
            jax.ShapeDtypeStruct((bsz, h, nb, dk, dv), jnp.float32),
            jax.ShapeDtypeStruct((bsz, h, dk, dv), jnp.float32),
        ],
        scratch_shapes=[pltpu.VMEM((dk, dv), jnp.float32)],
        compiler_params=_params(),
        interpret=interpret,
    )(*xs, start, s0)


def _backward(xs, start, sb, do, dst, *, step, chunk, block, interpret):
    bsz, h, length, _ = xs[0].shape
    dk, dv = dst.shape[-2:]
    nb = length // block

    def rev(b, i, j):
        return (b, i, nb - 1 - j, 0)

    tok = [pl.BlockSpec((None, None, block, x.shape[-1]), rev) for x in xs]
    start_spec = pl.BlockSpec((None, None, block, 1), lambda b, i, j: (b, 0, nb - 1 - j, 0))
    sb_spec = pl.BlockSpec((None, None, None, dk, dv), lambda b, i, j: (b, i, nb - 1 - j, 0, 0))
    state = pl.BlockSpec((None, None, dk, dv), lambda b, i, j: (b, i, 0, 0))
    do_spec = pl.BlockSpec((None, None, block, dv), rev)
    return pl.pallas_call(
        functools.partial(_bwd_kernel, step=step, n_in=len(xs), chunk=chunk),
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4, 5))
def _run(step, xs, start, s0, chunk, block):
    fwd = functools.partial(_forward, step=step, chunk=chunk, block=block)
    o, _, st = _on_platform(fwd, xs, start, s0)
    return o, st


def _run_fwd(step, xs, start, s0, chunk, block):
    fwd = functools.partial(_forward, step=step, chunk=chunk, block=block)
    o, sb, st = _on_platform(fwd, xs, start, s0)
    return (o, st), (xs, start, sb)


def _run_bwd(step, chunk, block, res, cts):
    xs, start, sb = res
    bwd = functools.partial(_backward, step=step, chunk=chunk, block=block)
    *dxs, ds0 = _on_platform(bwd, xs, start, sb, *cts)
    return tuple(d.astype(x.dtype) for d, x in zip(dxs, xs, strict=True)), None, ds0


_run.defvjp(_run_fwd, _run_bwd)


def run(step, xs, reset, s0, *, chunk: int):
    """Run the chunk function `step` (module docstring) over token-major inputs.

    xs: per-token inputs [B, L, H, D_i] (any float dtype: the kernel computes in fp32), reset
    [B, L] bool or None (the state restarts before each True token), s0 [B, H, Dk, Dv]. `step`
    must be hashable (a module-level function or a functools.partial of one). Returns (o [B, L,
    H, Dv] fp32, final state [B, H, Dk, Dv] fp32); differentiable in xs and s0."""
    check_chunk(chunk)
    check_backend()
    length = xs[0].shape[1]
    block = min(BLOCK_TOKENS, -(-length // chunk) * chunk)
    padded = -(-length // block) * block
    pad = ((0, 0), (0, padded - length))
    # Padded tokens (every input 0, the last token's segment) leave the state unchanged.
    heads_major = tuple(jnp.swapaxes(jnp.pad(x, (*pad, (0, 0), (0, 0))), 1, 2) for x in xs)
    if reset is None:
        start = jnp.full((xs[0].shape[0], padded), -1, jnp.int32)
    else:
        start = jnp.pad(starts(reset), pad, mode="edge")
    o, st = _run(step, heads_major, start[:, None, :, None], s0.astype(jnp.float32), chunk, block)
    return jnp.swapaxes(o, 1, 2)[:, :length], st
