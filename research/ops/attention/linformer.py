"""Linformer (Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity").

Keys and values are projected along the sequence, k' = E k, v' = F v with E, F [m, n], then
softmax attention runs over the m projected positions: O(n m) instead of O(n^2). Non-causal
only: every projected key mixes all n positions.
"""

# jaxtyping shape strings ("B L H D") are not forward references.

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from research.ops.attention.common import check_qkv, normalise_mask
from research.ops.attention.softmax import softmax_attention
from research.ops.checks import check_bool, check_causal_allowed


def linformer_attention(
    q: Float[Array, "B Lq H D"],
    k: Float[Array, "B N Hkv D"],
    v: Float[Array, "B N Hkv Dv"],
    e: Float[Array, "M N"],
    f: Float[Array, "M N"],
    *,
    causal: bool = False,
    mask: Bool[Array, "B N"] | None = None,
    scale: float | None = None,
) -> Float[Array, "B Lq H Dv"]:
    """Linformer (Wang et al. 2020): softmax(scale q (E k)^T) (F v), K and V projected along L.

    Shapes: q [B, Lq, H, D], k [B, n, Hkv, D], v [B, n, Hkv, Dv], e and f [m, n] -> [B, Lq, H, Dv].
    `mask` [B, n] is a key-padding mask: padded keys and values are zeroed before projecting.
    """
    check_bool("causal", causal)
    if causal:
        check_causal_allowed(attention="linformer")
    check_qkv(q, k, v)
    n = k.shape[1]
    for name, p in (("e", e), ("f", f)):
        if jnp.ndim(p) != 2 or jnp.shape(p)[1] != n:
            raise ValueError(f"{name} must be [m, kv_length={n}], got shape {jnp.shape(p)}")
    if jnp.shape(e)[0] != jnp.shape(f)[0]:
        raise ValueError(
            f"e and f must project to the same m, got {jnp.shape(e)} and {jnp.shape(f)}"
        )
    if mask is not None:
        normalise_mask(mask, k.shape[0], q.shape[2], q.shape[1], n)
        if jnp.ndim(mask) != 2:
            raise ValueError(
                f"linformer_attention takes a key-padding mask [batch, n], got {jnp.shape(mask)}"
            )
        keep = jnp.asarray(mask)[:, :, None, None]
        k, v = jnp.where(keep, k, 0), jnp.where(keep, v, 0)
    k_proj = jnp.einsum("mn,bnhd->bmhd", e, k)
    v_proj = jnp.einsum("mn,bnhd->bmhd", f, v)
    return softmax_attention(q, k_proj, v_proj, scale=scale)
