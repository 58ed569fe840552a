"""Context parallelism: attention with the sequence axis sharded over a mesh axis.

Call these inside `jax.shard_map` with q, k, v split along length over `axis_name` (device i
holds positions [i L/P, (i+1) L/P), N = L/P of them); each returns this device's outputs. Both
equal the single-device causal result (tests/ops/test_context_parallel.py). `axis_size` is read
from the mesh when omitted; a given one must match it.

linear: each device sums its keys into a d_k x d_v state, an exclusive prefix of those states
  over devices (Hillis-Steele, log2 P `ppermute`s of one state each) gives the sums of all earlier
  devices, and local causal linear attention starts from it. Communication per device:
  ceil(log2 P) x B H (F Dv + F) floats, independent of the length.
softmax: ring attention (Liu et al. 2023): K/V blocks travel around the ring with `ppermute`
  for P - 1 steps while each device merges their contributions into an online softmax.
  Communication per device: (P - 1) x B (L/P) Hkv (D + Dv) floats.
The byte counts are `cost.bytes_communicated`.
"""

# jaxtyping shape strings ("B L H D") are not forward references.

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from research.ops import feature_maps as fm
from research.ops.attention.common import check_qkv, repeat_kv
from research.ops.attention.linear import (
    LinearAttentionState,
    linear_attention,
    linear_attention_state,
)
from research.ops.attention.softmax import online_softmax_update
from research.ops.checks import check_bool, check_causal_allowed


def _axis_size(axis_name: str, axis_size: int | None) -> int:
    """The size of mesh axis `axis_name` (inside shard_map); a given `axis_size` must match it,
    since a wrong one silently mixes the wrong blocks."""
    actual = lax.axis_size(axis_name)
    if axis_size is not None and axis_size != actual:
        raise ValueError(f"axis_size={axis_size}, but mesh axis {axis_name!r} has {actual} devices")
    return actual


def _exclusive_prefix(x, axis_name: str, size: int):
    """sum of x over devices with a smaller index on `axis_name` (log2(size) ppermutes)."""
    idx = lax.axis_index(axis_name)
    inclusive = x
    offset = 1
    while offset < size:
        perm = [(i, i + offset) for i in range(size - offset)]
        received = jax.tree.map(lambda t, p=perm: lax.ppermute(t, axis_name, p), inclusive)
        inclusive = jax.tree.map(lambda a, r, o=offset: a + jnp.where(idx >= o, r, 0.0),
                                 inclusive, received)  # fmt: skip
        offset *= 2
    return jax.tree.map(jnp.subtract, inclusive, x)


def linear_attention_cp(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B N Hkv D"],
    v: Float[Array, "B N Hkv Dv"],
    *,
    axis_name: str,
    axis_size: int | None = None,
    feature_map="elu",
    favor_projection: Float[Array, "M D"] | None = None,
    form: str = "chunked",
    chunk_size: int = 64,
    block_bytes: int | None = None,
) -> Float[Array, "B N H Dv"]:
    """Causal linear attention on this device's sequence block; see the module docstring.

    q [B, L/P, H, D], k [B, L/P, Hkv, D], v [B, L/P, Hkv, Dv] (this device's block).
    feature_map, favor_projection (the same [M, D] matrix on every device), form: as in
    `linear_attention`.
    """
    feature_map = fm.with_projection(feature_map, favor_projection)
    check_causal_allowed(feature_map=feature_map)
    axis_size = _axis_size(axis_name, axis_size)
    heads = q.shape[2]
    kr, vr = repeat_kv(k, heads), repeat_kv(v, heads)
    local = linear_attention_state(kr, vr, feature_map=feature_map)
    s_prev, z_prev = _exclusive_prefix((local.s, local.z), axis_name, axis_size)
    return linear_attention(
        q, k, v, feature_map=feature_map, causal=True, form=form, chunk_size=chunk_size,
        block_bytes=block_bytes, initial_state=LinearAttentionState(s_prev, z_prev),
    )  # fmt: skip


def ring_attention(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B N Hkv D"],
    v: Float[Array, "B N Hkv Dv"],
    *,
    axis_name: str,
    axis_size: int | None = None,
    causal: bool = True,
    scale: float | None = None,
) -> Float[Array, "B N H Dv"]:
    """Ring attention on this device's block: out_i = softmax over all keys j (<= i if causal).

    q [B, L/P, H, D], k [B, L/P, Hkv, D], v [B, L/P, Hkv, Dv]. Logits and sums in fp32.
    """
    check_bool("causal", causal)
    check_qkv(q, k, v)
    axis_size = _axis_size(axis_name, axis_size)
    b, n, h, d = q.shape
    scale = d**-0.5 if scale is None else scale
    idx = lax.axis_index(axis_name)
    qt = jnp.swapaxes(q, 1, 2).astype(jnp.float32)  # [B, H, n, D]
    pos = jnp.arange(n)
    perm = [(i, (i + 1) % axis_size) for i in range(axis_size)]

    def merge(carry, kv, s):
        kb, vb = (jnp.swapaxes(repeat_kv(x, h), 1, 2).astype(jnp.float32) for x in kv)
        src = (idx - s) % axis_size  # which device's keys these are
        logits = jnp.einsum("bhqd,bhkd->bhqk", qt, kb) * scale
        if causal:
            visible = (src * n + pos[None, :]) <= (idx * n + pos[:, None])
            logits = jnp.where(visible, logits, -jnp.inf)
        return online_softmax_update(carry, logits, vb)

    carry = (jnp.full((b, h, n), -jnp.inf), jnp.zeros((b, h, n)), jnp.zeros((b, h, n, v.shape[-1])))
    # The backward pass recomputes each step's logits instead of storing P blocks of them.
    merge = jax.checkpoint(merge)
    carry = merge(carry, (k, v), 0)

    def step(s, state):  # a loop, not unrolled: compile time stays flat in the ring size
        carry, kv = state
        kv = jax.tree.map(lambda t: lax.ppermute(t, axis_name, perm), kv)
        return merge(carry, kv, s), kv

    (_, l, acc), _ = lax.fori_loop(1, axis_size, step, (carry, (k, v)))
    out = acc / jnp.where(l > 0, l, 1.0)[..., None]
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)
