"""Linear (kernelised) attention: the public API, feature-map checks and dispatch to the forms.

Modules:
  chunk.py      causal chunkwise-parallel kernel with a hand-written VJP (the default form)
  recurrent.py  the token recurrence: scan form (reverse-scan VJP), decode step, prefix state
  naive.py      readable references: the O(L^2) masked quadratic form and the cumsum form
With `segment_ids` (packed sequences) the causal forms run on the gated kernels
(`research.ops.attention.gated`) with zero log-gates and the sums reset at segment starts.
"""

# jaxtyping shape strings ("B L H D") are not forward references.

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from research.ops import feature_maps as fm
from research.ops.attention import gated
from research.ops.attention.common import (
    check_form,
    check_qkv,
    check_step_ranks,
    default_block_sizes,
    divide,
    repeat_kv,
)
from research.ops.attention.linear import chunk, naive, recurrent
from research.ops.attention.linear.recurrent import LinearAttentionState
from research.ops.attention.pallas import check_implementation
from research.ops.attention.pallas import gla as pallas_gla
from research.ops.attention.segments import check_segment_ids, segment_starts
from research.ops.checks import check_bool, check_causal_allowed, check_positive_int

LINEAR_FORMS = ("chunked", "scan", "cumsum")


def check_feature_map(feature_map, causal: bool) -> None:
    """A callable, or a name in `feature_maps.FEATURE_MAP_NAMES` (or "favor") that allows
    `causal`. The public functions first bind "favor" to its projection (`fm.with_projection`)."""
    if callable(feature_map):
        return
    if feature_map not in (*fm.FEATURE_MAP_NAMES, fm.FAVOR):
        raise ValueError(f"unknown feature_map {feature_map!r}; allowed: {fm.ALLOWED}")
    if causal:
        check_causal_allowed(feature_map=feature_map)


def features(q, k, feature_map, key_mask):
    """phi(q), phi(k) in fp32, with padded keys' features set to zero. key_mask: [B, L] or None."""
    if feature_map == "softmax":
        fq = jax.nn.softmax(q.astype(jnp.float32), axis=-1)
        logits = k.astype(jnp.float32)
        if key_mask is not None:
            logits = jnp.where(key_mask[:, :, None, None], logits, -jnp.inf)
        m = lax.stop_gradient(jnp.max(logits, axis=1, keepdims=True))
        e = jnp.exp(logits - jnp.where(jnp.isfinite(m), m, 0.0))
        denom = jnp.sum(e, axis=1, keepdims=True)
        return fq, e / jnp.where(denom > 0, denom, 1.0)
    phi = fm.resolve(feature_map)
    fq, fk = phi(q).astype(jnp.float32), phi(k).astype(jnp.float32)
    if key_mask is not None:
        fk = jnp.where(key_mask[:, :, None, None], fk, 0.0)
    return fq, fk


def linear_attention(
    q: Float[Array, "B Lq H D"],
    k: Float[Array, "B Lk Hkv D"],
    v: Float[Array, "B Lk Hkv Dv"],
    *,
    feature_map="elu",
    favor_projection: Float[Array, "M D"] | None = None,
    causal: bool = False,
    mask: Bool[Array, "B Lk"] | None = None,
    form: str = "chunked",
    chunk_size: int = 64,
    block_bytes: int | None = None,
    initial_state: LinearAttentionState | None = None,
    segment_ids: Int[Array, "B L"] | None = None,
    implementation: str = "xla",
) -> Float[Array, "B Lq H Dv"]:
    """Kernelised attention: out_i = phi(q_i) sum_j phi(k_j) v_j^T / (phi(q_i) . sum_j phi(k_j)).

    Sums run over j <= i when causal (Katharopoulos et al. 2020). Shapes: q [B, L, H, D],
    k [B, L, Hkv, D], v [B, L, Hkv, Dv] -> [B, L, H, Dv]; `mask` is a key-padding mask [B, L]
    (True = real token). A query whose features share no support with any key outputs 0.

    feature_map: "elu" (elu+1), "relu", "taylor" (phi(x) = [1, x/|x|], sim = 1 + q^.k^),
      "softmax" (Efficient Attention, Shen et al. 2021: softmax over features for q, over
      positions for k; non-causal only), "favor" (FAVOR+, Choromanski et al. 2021; needs
      `favor_projection`), or a callable such as `feature_maps.favor(W)`.
    favor_projection: [M, D] random features for feature_map="favor", from
      `feature_maps.favor_projection(key, M, D)` (the same as passing `feature_maps.favor(W)`).
    form (causal only; non-causal linear attention has one O(L d^2) two-matmul form, so another
      form with causal=False is an error rather than silently ignored):
      "chunked": chunkwise-parallel. Inside each chunk of `chunk_size` tokens a masked quadratic
        product; across chunks a prefix of per-chunk d_k x d_v states. Chunks are processed a
        cache-sized block at a time (`block_bytes`, None: the backend's default) with a
        hand-written VJP (see `linear/chunk.py`): O(L (C + d) d) time, O(L d) memory for values
        and gradients, no [L, d, d] tensor.
      "scan": the token recurrence S_i = S_{i-1} + phi(k_i) v_i^T (`linear_attention_step`).
      "cumsum": reference; materialises the [B, L, H, F, Dv] prefix sums (`linear/naive.py`).
    initial_state (causal only): sums over earlier tokens (for example
      `linear_attention_state` of a prefix, or the prefix from other devices in context
      parallelism), added to every position's running sums: S_i = S_0 + sum_{j<=i} phi(k_j) v_j^T.
    segment_ids (causal only): [B, L] int, non-decreasing along L (packed sequences): the sums
      restart from zero at the first token of each segment after the first (which starts from
      `initial_state`), so each query sees only earlier keys of its own segment. "chunked" and
      "scan" then run on the gated kernels with zero gates (`research.ops.attention.gated`:
      chunk.py, recurrent.py) over [v, 1] (numerator and denominator in one pass), "cumsum" on
      a prefix sum with resets; `block_bytes` does not apply.
    implementation (causal, form="chunked"): "xla" (the jnp forms above, the reference) or
      "pallas": the Pallas TPU kernel of `pallas/gla.py` with no gate over [v, 1] (numerator
      and denominator in one pass, features computed here), forward and backward; the Pallas
      interpreter off TPU (slow); chunk_size a power of two from 16 to 128.
    All sums are accumulated in fp32; the output has the dtype of q.
    """
    check_bool("causal", causal)
    check_qkv(q, k, v)
    feature_map = fm.with_projection(feature_map, favor_projection)
    check_feature_map(feature_map, causal)
    check_form(form, LINEAR_FORMS)
    check_implementation(implementation, form)
    if implementation == "pallas" and not causal:
        raise ValueError(
            "implementation='pallas' is a kernel of causal linear attention; non-causal linear "
            "attention is two matmuls: leave implementation at 'xla'"
        )
    if not causal and form != "chunked":
        raise ValueError(
            f"form={form!r} applies to causal attention only; with causal=False "
            "leave form at its default"
        )
    check_positive_int("chunk_size", chunk_size)
    block_bytes = default_block_sizes().block_bytes if block_bytes is None else block_bytes
    check_positive_int("block_bytes", block_bytes)
    batch, q_len, heads, _ = q.shape
    kv_len = k.shape[1]
    if causal and q_len != kv_len:
        raise ValueError(
            f"causal linear attention needs q_length == kv_length, got {q_len}, {kv_len}"
        )
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_ or mask.shape != (batch, kv_len):
            raise ValueError(
                f"linear_attention takes a boolean key-padding mask [batch, kv_length] = "
                f"{(batch, kv_len)}, got {mask.dtype} {mask.shape}"
            )
    if initial_state is not None and not causal:
        raise ValueError("initial_state is only defined for causal linear attention")
    if segment_ids is not None and not causal:
        raise ValueError(
            "segment_ids applies to causal linear attention only (state resets); "
            "for non-causal packed rows run each sequence separately"
        )
    seg = check_segment_ids(segment_ids, batch, kv_len)
    k, v = repeat_kv(k, heads), repeat_kv(v, heads)
    if causal:
        f, dv = fm.feature_dim(feature_map, q.shape[-1]), v.shape[-1]
        zero = linear_attention_init_state(batch, heads, f, dv)
        init = zero if initial_state is None else initial_state
        if init.s.shape != zero.s.shape or init.z.shape != zero.z.shape:
            raise ValueError(
                f"initial_state shapes {init.s.shape}, {init.z.shape} do not match "
                f"{zero.s.shape}, {zero.z.shape} (batch, heads, features, value_dim)"
            )
        init = LinearAttentionState(init.s.astype(jnp.float32), init.z.astype(jnp.float32))
        if implementation == "pallas":
            # elu / relu are applied inside the kernel (only q and k kept for the backward)
            phi = (
                fm.resolve(feature_map) if mask is None and feature_map in ("elu", "relu") else None
            )
            fq, fk = (q, k) if phi else features(q, k, feature_map, mask)
            return _packed(fq, fk, v, init, seg, "pallas", chunk_size, phi).astype(q.dtype)
        if seg is not None:
            fq, fk = features(q, k, feature_map, mask)
            return _packed(fq, fk, v.astype(jnp.float32), init, seg, form, chunk_size).astype(
                q.dtype
            )
        if form == "chunked" and not callable(feature_map):
            # Named maps are applied inside the kernel's blocks (one pass over q and k).
            kmask = None if mask is None else mask.astype(jnp.float32)
            phi = fm.resolve(feature_map)
            out = chunk.chunked(q, k, v, kmask, init.s, init.z, phi, chunk_size, block_bytes)
            return out.astype(q.dtype)
    fq, fk = features(q, k, feature_map, mask)
    v32 = v.astype(jnp.float32)
    if not causal:
        kv = jnp.einsum("blhf,blhv->bhfv", fk, v32)
        num = jnp.einsum("blhf,bhfv->blhv", fq, kv)
        den = jnp.einsum("blhf,bhf->blh", fq, jnp.sum(fk, axis=1))
        out = divide(num, den[..., None])
    elif form == "cumsum":
        out = naive.cumsum(fq, fk, v32, init.s, init.z)
    elif form == "scan":
        out = recurrent.scan(fq, fk, v32, init)
    else:  # a callable map (it may close over traced arrays): features computed here
        out = chunk.chunked(
            fq, fk, v, None, init.s, init.z, chunk.as_float32, chunk_size, block_bytes
        )
    return out.astype(q.dtype)


def _packed(fq, fk, v, init: LinearAttentionState, seg, form: str, chunk_size: int, phi=None):
    """Causal linear attention with resets at segment starts (seg [B, L] or, for the Pallas
    kernel, None), on features fq, fk [B, L, H, F]: numerator and denominator are one
    gated-linear-attention pass with zero log-gates over [v, 1] from the state [s, z] (scale 1:
    the features are used as they are). form: chunked, scan, cumsum or "pallas" (which may
    take q, k and a per-element map `phi` to apply in the kernel)."""
    s0 = jnp.concatenate([init.s, init.z[..., None]], axis=-1)
    if form == "pallas":  # the kernel appends the ones and divides per chunk
        return pallas_gla.normalized(fq, fk, v, seg, s0, chunk=chunk_size, phi=phi)
    ones = jnp.ones((*v.shape[:-1], 1), jnp.float32)
    vz = jnp.concatenate([v, ones], axis=-1)
    g = jnp.zeros((*fq.shape[:-1], 1), jnp.float32)
    if form == "chunked":
        out, _ = gated.chunk.chunked(fq, fk, vz, g, seg, s0, scale=1.0, chunk=chunk_size)
    elif form == "scan":
        keep = 1.0 - segment_starts(seg).astype(jnp.float32)
        out, _ = gated.recurrent.scan(fq, fk, vz, g, keep, s0, block=chunk_size)
    else:
        keep = 1.0 - segment_starts(seg).astype(jnp.float32)
        return naive.cumsum(fq, fk, v, init.s, init.z, keep=keep)
    return divide(out[..., :-1], out[..., -1:])


def linear_attention_init_state(
    batch: int, heads: int, feature_dim: int, value_dim: int, dtype=jnp.float32
) -> LinearAttentionState:
    """Zero recurrent state: s [batch, heads, features, value_dim], z [batch, heads, features].

    `feature_dim` is `research.ops.feature_maps.feature_dim(feature_map, head_dim)` (for example
    head_dim + 1 for "taylor", M for "favor" with `favor_projection=W` of shape [M, head_dim]).
    Keep `dtype` fp32 for long decodes: the sums only grow.
    """
    for name, value in (
        ("batch", batch),
        ("heads", heads),
        ("feature_dim", feature_dim),
        ("value_dim", value_dim),
    ):
        check_positive_int(name, value)
    return LinearAttentionState(
        jnp.zeros((batch, heads, feature_dim, value_dim), dtype),
        jnp.zeros((batch, heads, feature_dim), dtype),
    )


def linear_attention_step(
    state: LinearAttentionState,
    q_t: Float[Array, "B H D"],
    k_t: Float[Array, "B H D"],
    v_t: Float[Array, "B H Dv"],
    *,
    feature_map="elu",
    favor_projection: Float[Array, "M D"] | None = None,
    mask_t: Bool[Array, " B"] | None = None,
) -> tuple[LinearAttentionState, Float[Array, "B H Dv"]]:
    """One decoding step of causal linear attention in O(1) time and memory per token.

    S_t = S_{t-1} + phi(k_t) v_t^T, z_t = z_{t-1} + phi(k_t), out_t = phi(q_t) S_t / phi(q_t).z_t.
    Shapes: q_t, k_t [B, H, D], v_t [B, H, Dv], state from `linear_attention_init_state`;
    `mask_t` [B] bool: False leaves that row's state unchanged (a padding token).
    feature_map, favor_projection: as in `linear_attention` (not "softmax": it cannot be causal).
    Returns (new_state, out_t [B, H, Dv] in the dtype of q_t).
    """
    feature_map = fm.with_projection(feature_map, favor_projection)
    check_feature_map(feature_map, causal=True)
    check_step_ranks(q_t=q_t, k_t=k_t, v_t=v_t)
    if q_t.shape != k_t.shape or v_t.shape[:2] != q_t.shape[:2]:
        raise ValueError(f"step shapes differ: q_t {q_t.shape}, k_t {k_t.shape}, v_t {v_t.shape}")
    phi = fm.resolve(feature_map)
    fq, fk = phi(q_t).astype(jnp.float32), phi(k_t).astype(jnp.float32)
    expected = (*q_t.shape[:2], fq.shape[-1], v_t.shape[-1])
    if state.s.shape != expected:
        raise ValueError(f"state.s has shape {state.s.shape}, expected {expected} for these inputs")
    if mask_t is not None:
        fk = jnp.where(jnp.asarray(mask_t)[:, None, None], fk, 0.0)
    new_state, out = recurrent.decode_step(state, fq, fk, v_t.astype(jnp.float32))
    new_state = LinearAttentionState(
        new_state.s.astype(state.s.dtype), new_state.z.astype(state.z.dtype)
    )
    return new_state, out.astype(q_t.dtype)


def linear_attention_state(
    k: Float[Array, "B L H D"],
    v: Float[Array, "B L H Dv"],
    *,
    feature_map="elu",
    favor_projection: Float[Array, "M D"] | None = None,
    mask: Bool[Array, "B L"] | None = None,
) -> LinearAttentionState:
    """Recurrent state after a whole prefix: s = sum_j phi(k_j) v_j^T, z = sum_j phi(k_j).

    k [B, L, H, D], v [B, L, H, Dv], mask [B, L] (False = padding, not summed). Stepping
    `linear_attention_step` from this state continues the causal form exactly (prefill).
    feature_map, favor_projection: as in `linear_attention` (not "softmax": it cannot be causal).
    """
    feature_map = fm.with_projection(feature_map, favor_projection)
    check_feature_map(feature_map, causal=True)
    fk = fm.resolve(feature_map)(k).astype(jnp.float32)
    if mask is not None:
        fk = jnp.where(jnp.asarray(mask)[:, :, None, None], fk, 0.0)
    return recurrent.prefix_state(fk, v.astype(jnp.float32))


__all__ = [
    "LINEAR_FORMS",
    "LinearAttentionState",
    "check_feature_map",
    "features",
    "linear_attention",
    "linear_attention_init_state",
    "linear_attention_state",
    "linear_attention_step",
]
