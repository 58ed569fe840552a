"""Helpers every attention form shares: input checks, mask/bias normalisation, GQA, padding,
the guarded division, and the per-backend default block sizes.

The checks run on static shapes, so errors come before anything is traced or compiled.
"""

import contextlib
import contextvars
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def check_qkv(q, k, v) -> None:
    """q [B, Lq, H, D], k [B, Lk, Hkv, D], v [B, Lk, Hkv, Dv] with H % Hkv == 0, else ValueError."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if jnp.ndim(x) != 4:
            raise ValueError(
                f"{name} must have rank 4 [batch, length, heads, head_dim], "
                f"got shape {jnp.shape(x)}"
            )
    if not q.shape[0] == k.shape[0] == v.shape[0]:
        raise ValueError(f"batch sizes differ: q {q.shape}, k {k.shape}, v {v.shape}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v lengths differ: k {k.shape}, v {v.shape}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v head counts differ: k {k.shape}, v {v.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"q heads ({q.shape[2]}) must be a multiple of k/v heads ({k.shape[2]})")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k head_dim differ: q {q.shape}, k {k.shape}")


def check_form(form: str, allowed: tuple[str, ...]) -> None:
    """`form` must be one of `allowed`, else ValueError naming them."""
    if form not in allowed:
        raise ValueError(f"unknown form {form!r}; allowed: {', '.join(allowed)}")


def check_causal_lengths(what: str, q, k) -> None:
    """A causal op needs as many queries as keys, else ValueError naming `what`."""
    if q.shape[1] != k.shape[1]:
        raise ValueError(
            f"{what} is causal and needs q_length == kv_length, got {q.shape[1]}, {k.shape[1]}"
        )


def check_step_ranks(**arrays) -> None:
    """Decode-step inputs (q_t=..., k_t=..., v_t=...) must be [batch, heads, head_dim]."""
    for name, x in arrays.items():
        if jnp.ndim(x) != 3:
            raise ValueError(
                f"{name} must have rank 3 [batch, heads, head_dim], got {jnp.shape(x)}"
            )


def resolve_scale(scale, key_dim: int) -> float:
    """The multiplier of q: `scale` as a float, key_dim ** -0.5 if None, else ValueError."""
    if scale is None:
        return key_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, int | float | np.floating | np.integer):
        raise ValueError(f"scale must be a number or None (key_dim ** -0.5), got {scale!r}")
    return float(scale)


def normalise_mask(mask, batch: int, heads: int, q_len: int, kv_len: int):
    """Returns the mask as a rank-4 boolean array broadcastable to [B, H, Lq, Lk], or None."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise ValueError(f"mask must be boolean (True = attend), got dtype {mask.dtype}")
    if mask.ndim == 2:
        if mask.shape != (batch, kv_len):
            raise ValueError(
                f"a rank-2 mask is a key-padding mask and must be [batch, kv_length] = "
                f"{(batch, kv_len)}, got {mask.shape}"
            )
        return mask[:, None, None, :]
    if mask.ndim == 4:
        target = (batch, heads, q_len, kv_len)
        if any(m not in (1, t) for m, t in zip(mask.shape, target, strict=True)):
            raise ValueError(
                f"mask of shape {mask.shape} is not broadcastable to [batch, heads, q_length, "
                f"kv_length] = {target}"
            )
        return mask
    raise ValueError(
        f"mask must be [batch, kv_length] or rank 4 broadcastable to [batch, heads, q_length, "
        f"kv_length], got shape {mask.shape}"
    )


def normalise_bias(bias, batch: int, heads: int, q_len: int, kv_len: int):
    """Returns the bias as a rank-4 array broadcastable to [B, H, Lq, Lk], or None."""
    if bias is None:
        return None
    bias = jnp.asarray(bias)
    target = (batch, heads, q_len, kv_len)
    if bias.ndim > 4 or any(
        b not in (1, t) for b, t in zip(bias.shape, target[4 - bias.ndim :], strict=True)
    ):
        raise ValueError(
            f"bias of shape {bias.shape} is not broadcastable to [batch, heads, q_length, "
            f"kv_length] = {target}"
        )
    return bias.reshape((1,) * (4 - bias.ndim) + bias.shape)


def repeat_kv(x: jax.Array, heads: int) -> jax.Array:
    """Grouped-query attention: [B, L, Hkv, D] -> [B, L, heads, D], each k/v head repeated."""
    groups = heads // x.shape[2]
    return x if groups == 1 else jnp.repeat(x, groups, axis=2)


def pad_axis(x, axis: int, new_size: int, value=0):
    """Pads `x` at the end of `axis` up to `new_size` with `value`."""
    pad = new_size - x.shape[axis]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, and 0 where den == 0 (no key shares support with the query's features)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


class BlockSizes(NamedTuple):
    """Default tile sizes: softmax blockwise query/key blocks (tokens); linear chunked blocks
    (bytes of one [B, H, block, F] fp32 array)."""

    block_q: int
    block_k: int
    block_bytes: int


# Keyed by `jax.default_backend()`. "cpu" was measured on the 2-core CPU the benchmarks run on
# (1 MiB linear blocks were fastest: passes that spill to DRAM cost more than the matmuls).
# "gpu" and "tpu" are untuned starting points: 512 is a multiple of the 128-wide matmul tiles,
# and larger linear blocks mean fewer loop iterations, each of which launches its own kernels.
DEFAULT_BLOCK_SIZES = {
    "cpu": BlockSizes(block_q=512, block_k=512, block_bytes=2**20),
    "gpu": BlockSizes(block_q=512, block_k=512, block_bytes=2**23),
    "tpu": BlockSizes(block_q=512, block_k=512, block_bytes=2**23),
}


_TARGET_BACKEND = contextvars.ContextVar("target_backend", default=None)


@contextlib.contextmanager
def target_backend(backend: str):
    """Default block sizes for `backend` in code traced inside: a planner compiling for a TPU
    topology on a CPU host traces with the TPU's tiles, not its host's."""
    token = _TARGET_BACKEND.set(backend)
    try:
        yield
    finally:
        _TARGET_BACKEND.reset(token)


def default_block_sizes(backend: str | None = None) -> BlockSizes:
    """The defaults for `backend` (default: the `target_backend` being traced for, else
    `jax.default_backend()`); unknown backends get cpu's."""
    backend = backend or _TARGET_BACKEND.get() or jax.default_backend()
    return DEFAULT_BLOCK_SIZES.get(backend, DEFAULT_BLOCK_SIZES["cpu"])


def mesh_axis_size(axis_name: str, axis_size: int | None) -> int:
    """The size of mesh axis `axis_name` (inside shard_map); a given `axis_size` must match it,
    since a wrong one silently mixes the wrong blocks."""
    actual = jax.lax.axis_size(axis_name)
    if axis_size is not None and axis_size != actual:
        raise ValueError(f"axis_size={axis_size}, but mesh axis {axis_name!r} has {actual} devices")
    return actual
