"""What the chunk functions and the driver share inside a kernel: iotas, fp32 matmuls at full
precision, rows <-> columns without a transpose (Mosaic refuses transposes of [1, D] rows), and
the packed-sequence masks of one chunk."""

import jax.numpy as jnp
from jax import lax

_HI = lax.Precision.HIGHEST


def iota(shape, dim):
    return lax.broadcasted_iota(jnp.int32, shape, dim)


def dot(a, b):  # a b
    return jnp.dot(a, b, precision=_HI, preferred_element_type=jnp.float32)


def dot_t(a, b):  # a^T b
    return lax.dot_general(
        a, b, (((0,), (0,)), ((), ())), precision=_HI, preferred_element_type=jnp.float32
    )


def dot_nt(a, b):  # a b^T
    return lax.dot_general(
        a, b, (((1,), (1,)), ((), ())), precision=_HI, preferred_element_type=jnp.float32
    )


def column(row):
    """[1, D] -> [D, 1]: the diagonal of eye(D) * row, summed over lanes."""
    d = row.shape[-1]
    return jnp.sum(jnp.where(iota((d, d), 0) == iota((d, d), 1), row, 0.0), axis=1, keepdims=True)


def row(col):
    """[C, 1] -> [1, C]: the diagonal of eye(C) * col, summed over sublanes."""
    c = col.shape[0]
    return jnp.sum(jnp.where(iota((c, c), 0) == iota((c, c), 1), col, 0.0), axis=0, keepdims=True)


def segment_masks(start, c0, c_len: int):
    """A chunk's packed-sequence masks, from start [C, 1] (each token's segment's first token,
    -1 for the first segment) and c0 (the chunk's first token): (visible [C, C]: key j causal
    and in query i's segment, from_state [C, 1]: the query's segment began before the chunk
    (it sees the entering state), to_state [C, 1]: the key is in the chunk's last segment (it
    reaches the exit state), keep [1, 1]: the entering state survives the chunk)."""
    rows, cols = iota((c_len, c_len), 0), iota((c_len, c_len), 1)
    last = start[c_len - 1 :, :]
    visible = (cols <= rows) & (cols + c0 >= start)
    return visible, start < c0, iota((c_len, 1), 0) + c0 >= last, last < c0
