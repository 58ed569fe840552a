"""Attention as pure functions: softmax (dense and blockwise), linear (kernel) and Linformer.

Shapes follow `jax.nn.dot_product_attention`: q `[batch, q_length, heads, head_dim]`,
k `[batch, kv_length, kv_heads, head_dim]`, v `[batch, kv_length, kv_heads, value_dim]`, with
`heads % kv_heads == 0` (grouped-query attention repeats each k/v head). Outputs are
`[batch, q_length, heads, value_dim]` in the dtype of q.

Masks are boolean, True = attend: a key-padding mask `[batch, kv_length]` or a full mask
broadcastable to `[batch, heads, q_length, kv_length]`. A query that may attend to no key
outputs zeros (and gets zero gradient) in every implementation. `causal=True` lets query i see
keys j <= i (top-left aligned, as in `jax.nn.dot_product_attention`).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.ops import feature_maps as fm

SOFTMAX_IMPLEMENTATIONS = ("xla", "blockwise")
LINEAR_FORMS = ("chunked", "scan", "cumsum")


# ----------------------------------------------------------------------------------------------
# Validation (runs on static shapes, so errors come before anything is traced or compiled)
# ----------------------------------------------------------------------------------------------
def _check_qkv(q, k, v) -> None:
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


def _normalise_mask(mask, batch: int, heads: int, q_len: int, kv_len: int):
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


def _normalise_bias(bias, batch: int, heads: int, q_len: int, kv_len: int):
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


def _repeat_kv(x: jax.Array, heads: int) -> jax.Array:
    groups = heads // x.shape[2]
    return x if groups == 1 else jnp.repeat(x, groups, axis=2)


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Softmax attention
# ----------------------------------------------------------------------------------------------
def softmax_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
    implementation: str = "xla",
    block_q: int = 512,
    block_k: int = 512,
) -> jax.Array:
    """Scaled dot-product attention: out = softmax(scale q k^T + bias, masked) v.

    Shapes: q [B, Lq, H, D], k [B, Lk, Hkv, D], v [B, Lk, Hkv, Dv] -> [B, Lq, H, Dv].
    `scale` defaults to 1/sqrt(D). Logits and softmax are computed in fp32.

    implementation:
      "xla": dense reference; materialises the [B, H, Lq, Lk] logits.
      "blockwise": online softmax over key blocks (Rabe & Staats 2021, "Self-attention does not
        need O(n^2) memory"; the FlashAttention-2 recurrence, Dao 2023) with a custom VJP that
        recomputes probabilities per block, so forward and backward use O(L * block) memory.
        Key blocks entirely above the causal diagonal are skipped, not masked.
    """
    _check_qkv(q, k, v)
    if implementation not in SOFTMAX_IMPLEMENTATIONS:
        raise ValueError(
            f"unknown implementation {implementation!r}; "
            f"allowed: {', '.join(SOFTMAX_IMPLEMENTATIONS)}"
        )
    _check_positive_int("block_q", block_q)
    _check_positive_int("block_k", block_k)
    batch, q_len, heads, head_dim = q.shape
    kv_len = k.shape[1]
    mask4 = _normalise_mask(mask, batch, heads, q_len, kv_len)
    bias4 = _normalise_bias(bias, batch, heads, q_len, kv_len)
    scale = float(head_dim**-0.5 if scale is None else scale)
    k, v = _repeat_kv(k, heads), _repeat_kv(v, heads)
    # Internal layout [B, H, L, D]: the per-head matmuls are then plain batched GEMMs.
    qt, kt, vt = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    if implementation == "xla":
        out = _dense_attention(qt, kt, vt, bias4, mask4, causal=causal, scale=scale)
    else:
        bq, bk = min(block_q, q_len), min(block_k, kv_len)
        out = _blockwise_attention(qt, kt, vt, bias4, mask4, causal, scale, bq, bk)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)


def _dense_attention(q, k, v, bias, mask, *, causal: bool, scale: float):
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        s = s + bias.astype(jnp.float32)
    valid = jnp.ones((1, 1, 1, 1), bool)
    if causal:
        valid = valid & jnp.tril(jnp.ones((q.shape[2], k.shape[2]), bool))
    if mask is not None:
        valid = valid & mask
    s = jnp.where(valid, s, -jnp.inf)
    m = lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom > 0, denom, 1.0)
    return jnp.einsum("bhqk,bhkd->bhqd", p, v.astype(jnp.float32))


def _pad_axis(x, axis: int, new_size: int, value=0):
    pad = new_size - x.shape[axis]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def _block(x, axis: int, index, size: int):
    """Block `index` of `x` along `axis`, or `x` itself where that axis is broadcast (size 1)."""
    if x.shape[axis] == 1:
        return x
    return lax.dynamic_slice_in_dim(x, index * size, size, axis=axis)


class _Blocks(NamedTuple):
    """Static geometry of the blockwise computation."""

    q_len: int
    kv_len: int
    bq: int
    bk: int
    nq: int
    nk: int
    causal: bool
    scale: float

    def scores(self, qi, kj, bias, mask, i, j):
        """fp32 logits of block (i, j), -inf where not attended, and the validity mask."""
        s = jnp.einsum("bhqd,bhkd->bhqk", qi, kj, preferred_element_type=jnp.float32)
        s = s * self.scale
        if bias is not None:
            s = s + _block(_block(bias, 2, i, self.bq), 3, j, self.bk).astype(jnp.float32)
        q_idx = i * self.bq + jnp.arange(self.bq)
        k_idx = j * self.bk + jnp.arange(self.bk)
        valid = (k_idx < self.kv_len)[None, :]
        if self.causal:
            valid = valid & (q_idx[:, None] >= k_idx[None, :])
        if mask is not None:
            valid = valid & _block(_block(mask, 2, i, self.bq), 3, j, self.bk)
        return jnp.where(valid, s, -jnp.inf), valid

    def kv_blocks_for(self, i):
        """Number of leading key blocks query block i needs (all of them unless causal)."""
        if not self.causal:
            return self.nk
        last_row = jnp.minimum((i + 1) * self.bq, self.q_len) - 1
        return jnp.minimum(last_row // self.bk + 1, self.nk)

    def first_q_block_for(self, j):
        """First query block that can see key block j (0 unless causal)."""
        return (j * self.bk) // self.bq if self.causal else 0


def _pad_inputs(geo: _Blocks, q, k, v, bias, mask):
    lq, lk = geo.nq * geo.bq, geo.nk * geo.bk
    q = _pad_axis(q, 2, lq)
    k, v = _pad_axis(k, 2, lk), _pad_axis(v, 2, lk)
    if bias is not None:
        bias = _pad_axis(bias, 2, lq) if bias.shape[2] > 1 else bias
        bias = _pad_axis(bias, 3, lk) if bias.shape[3] > 1 else bias
    if mask is not None:
        mask = _pad_axis(mask, 2, lq, False) if mask.shape[2] > 1 else mask
        mask = _pad_axis(mask, 3, lk, False) if mask.shape[3] > 1 else mask
    return q, k, v, bias, mask


def _blockwise_forward(geo: _Blocks, q, k, v, bias, mask):
    """Padded inputs -> (out [B, H, Lq_pad, Dv] fp32, logsumexp [B, H, Lq_pad] fp32)."""
    b, h, _, _ = q.shape
    dv = v.shape[-1]

    def one_q_block(i):
        qi = lax.dynamic_slice_in_dim(q, i * geo.bq, geo.bq, axis=2)

        def body(j, carry):
            kj = lax.dynamic_slice_in_dim(k, j * geo.bk, geo.bk, axis=2)
            vj = lax.dynamic_slice_in_dim(v, j * geo.bk, geo.bk, axis=2)
            s, _ = geo.scores(qi, kj, bias, mask, i, j)
            return online_softmax_update(carry, s, vj)

        init = (
            jnp.full((b, h, geo.bq), -jnp.inf, jnp.float32),
            jnp.zeros((b, h, geo.bq), jnp.float32),
            jnp.zeros((b, h, geo.bq, dv), jnp.float32),
        )
        m, l, acc = lax.fori_loop(0, geo.kv_blocks_for(i), body, init)
        out = acc / jnp.where(l > 0, l, 1.0)[..., None]
        lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), -jnp.inf)
        return out, lse

    out, lse = lax.map(one_q_block, jnp.arange(geo.nq))  # [Nq, B, H, bq, ...]
    out = jnp.moveaxis(out, 0, 2).reshape(b, h, geo.nq * geo.bq, dv)
    lse = jnp.moveaxis(lse, 0, 2).reshape(b, h, geo.nq * geo.bq)
    return out, lse


def online_softmax_update(carry, s, v):
    """Merges one block into a running softmax (Milakov & Gimelshein 2018; FlashAttention).

    carry (m, l, acc): running max [..., q], sum [..., q], weighted values [..., q, d], starting
    at (-inf, 0, 0); s [..., q, k] fp32 logits with -inf where masked; v [..., k, d].
    The output is acc / l (0 where l = 0: nothing visible yet).
    """
    m, l, acc = carry
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p = jnp.exp(s - m_safe[..., None])
    corr = jnp.exp(m - m_safe)
    acc = acc * corr[..., None] + jnp.einsum("...qk,...kd->...qd", p, v.astype(jnp.float32))
    return m_new, l * corr + jnp.sum(p, axis=-1), acc


def _reduce_to(x, shape):
    """Sums x over the axes where `shape` has size 1 (the broadcast axes of a bias)."""
    axes = tuple(
        a for a, (n, m) in enumerate(zip(shape, x.shape, strict=True)) if n == 1 and m != 1
    )
    return jnp.sum(x, axis=axes, keepdims=True) if axes else x


def _blockwise_backward(geo: _Blocks, q, k, v, bias, mask, out, lse, dout):
    """FlashAttention-2 backward on padded inputs: outer loop over key blocks, inner over q."""
    delta = jnp.sum(dout * out, axis=-1)  # [B, H, Lq_pad]
    lse_safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
    dq0 = jnp.zeros(q.shape, jnp.float32)
    dbias0 = None if bias is None else jnp.zeros(bias.shape, jnp.float32)

    def one_kv_block(carry, j):
        dq, dbias = carry
        kj = lax.dynamic_slice_in_dim(k, j * geo.bk, geo.bk, axis=2)
        vj = lax.dynamic_slice_in_dim(v, j * geo.bk, geo.bk, axis=2)

        def body(i, inner):
            dq, dbias, dk, dv = inner
            qi = lax.dynamic_slice_in_dim(q, i * geo.bq, geo.bq, axis=2)
            doi = lax.dynamic_slice_in_dim(dout, i * geo.bq, geo.bq, axis=2)
            s, valid = geo.scores(qi, kj, bias, mask, i, j)
            lse_i = lax.dynamic_slice_in_dim(lse_safe, i * geo.bq, geo.bq, axis=2)
            p = jnp.where(valid, jnp.exp(s - lse_i[..., None]), 0.0)
            dv = dv + jnp.einsum("bhqk,bhqd->bhkd", p, doi)
            dp = jnp.einsum("bhqd,bhkd->bhqk", doi, vj.astype(jnp.float32))
            delta_i = lax.dynamic_slice_in_dim(delta, i * geo.bq, geo.bq, axis=2)
            ds = p * (dp - delta_i[..., None])
            dk = dk + geo.scale * jnp.einsum("bhqk,bhqd->bhkd", ds, qi.astype(jnp.float32))
            dqi = geo.scale * jnp.einsum("bhqk,bhkd->bhqd", ds, kj.astype(jnp.float32))
            dq = lax.dynamic_update_slice_in_dim(
                dq, lax.dynamic_slice_in_dim(dq, i * geo.bq, geo.bq, axis=2) + dqi, i * geo.bq, 2
            )
            if dbias is not None:
                blk = _reduce_to(ds, bias.shape)
                starts = [0, 0, 0, 0]
                if bias.shape[2] > 1:
                    starts[2] = i * geo.bq
                if bias.shape[3] > 1:
                    starts[3] = j * geo.bk
                dbias = lax.dynamic_update_slice(
                    dbias, lax.dynamic_slice(dbias, starts, blk.shape) + blk, starts
                )
            return dq, dbias, dk, dv

        dk0 = jnp.zeros(kj.shape, jnp.float32)
        dv0 = jnp.zeros(vj.shape, jnp.float32)
        dq, dbias, dk, dv = lax.fori_loop(
            geo.first_q_block_for(j), geo.nq, body, (dq, dbias, dk0, dv0)
        )
        return (dq, dbias), (dk, dv)

    (dq, dbias), (dk, dv) = lax.scan(one_kv_block, (dq0, dbias0), jnp.arange(geo.nk))
    b, h = k.shape[:2]
    dk = jnp.moveaxis(dk, 0, 2).reshape(b, h, geo.nk * geo.bk, k.shape[-1])
    dv = jnp.moveaxis(dv, 0, 2).reshape(b, h, geo.nk * geo.bk, v.shape[-1])
    return dq, dk, dv, dbias


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _blockwise_attention(q, k, v, bias, mask, causal, scale, bq, bk):
    return _blockwise_fwd(q, k, v, bias, mask, causal, scale, bq, bk)[0]


def _geometry(q, k, causal, scale, bq, bk) -> _Blocks:
    q_len, kv_len = q.shape[2], k.shape[2]
    return _Blocks(q_len, kv_len, bq, bk, -(-q_len // bq), -(-kv_len // bk), causal, scale)


def _blockwise_fwd(q, k, v, bias, mask, causal, scale, bq, bk):
    geo = _geometry(q, k, causal, scale, bq, bk)
    qp, kp, vp, biasp, maskp = _pad_inputs(geo, q, k, v, bias, mask)
    out, lse = _blockwise_forward(geo, qp, kp, vp, biasp, maskp)
    out = out[:, :, : geo.q_len]
    return out, (q, k, v, bias, mask, out, lse)


def _blockwise_bwd(causal, scale, bq, bk, res, dout):
    q, k, v, bias, mask, out, lse = res
    geo = _geometry(q, k, causal, scale, bq, bk)
    qp, kp, vp, biasp, maskp = _pad_inputs(geo, q, k, v, bias, mask)
    lq = geo.nq * geo.bq
    outp = _pad_axis(out, 2, lq)
    doutp = _pad_axis(dout.astype(jnp.float32), 2, lq)
    dq, dk, dv, dbias = _blockwise_backward(geo, qp, kp, vp, biasp, maskp, outp, lse, doutp)
    dq = dq[:, :, : geo.q_len].astype(q.dtype)
    dk = dk[:, :, : geo.kv_len].astype(k.dtype)
    dv = dv[:, :, : geo.kv_len].astype(v.dtype)
    if dbias is not None:
        dbias = dbias[:, :, : bias.shape[2], : bias.shape[3]].astype(bias.dtype)
    return dq, dk, dv, dbias, None


_blockwise_attention.defvjp(_blockwise_fwd, _blockwise_bwd)


# ----------------------------------------------------------------------------------------------
# Linear attention
# ----------------------------------------------------------------------------------------------
class LinearAttentionState(NamedTuple):
    """Recurrent state of causal linear attention.

    s: [batch, heads, feature_dim, value_dim] fp32, sum_j phi(k_j) v_j^T.
    z: [batch, heads, feature_dim] fp32, sum_j phi(k_j).
    """

    s: jax.Array
    z: jax.Array


def _check_feature_map(feature_map, causal: bool) -> None:
    if callable(feature_map):
        return
    if feature_map not in fm.FEATURE_MAP_NAMES:
        raise ValueError(
            f"unknown feature_map {feature_map!r}; allowed: {', '.join(fm.FEATURE_MAP_NAMES)} "
            "or a callable [..., head_dim] -> [..., features]"
        )
    if causal and feature_map == "softmax":
        raise ValueError(
            'feature_map="softmax" (Efficient Attention) normalises keys over all positions, so '
            "it cannot be causal; use elu, relu, taylor or favor for causal attention"
        )


def _divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, and 0 where den == 0 (no key shares support with the query's features)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _features(q, k, feature_map, key_mask):
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
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    feature_map="elu",
    causal: bool = False,
    mask: jax.Array | None = None,
    form: str = "chunked",
    chunk_size: int = 64,
    initial_state: LinearAttentionState | None = None,
) -> jax.Array:
    """Kernelised attention: out_i = phi(q_i) sum_j phi(k_j) v_j^T / (phi(q_i) . sum_j phi(k_j)).

    Sums run over j <= i when causal (Katharopoulos et al. 2020). Shapes: q [B, L, H, D],
    k [B, L, Hkv, D], v [B, L, Hkv, Dv] -> [B, L, H, Dv]; `mask` is a key-padding mask [B, L]
    (True = real token). A query whose features share no support with any key outputs 0.

    feature_map: "elu" (elu+1), "relu", "taylor" (phi(x) = [1, x/|x|], sim = 1 + q^.k^),
      "softmax" (Efficient Attention, Shen et al. 2021: softmax over features for q, over
      positions for k; non-causal only), or a callable such as `feature_maps.favor(W)`.
    form (causal only; non-causal is always the O(L d^2) two-matmul form):
      "chunked": chunkwise-parallel. Inside each chunk of `chunk_size` tokens a masked quadratic
        product; across chunks a prefix of per-chunk d_k x d_v states. Chunks are processed a
        cache-sized block at a time with a hand-written VJP (see `_linear_chunked`): O(L (C + d)
        d) time, O(L d) memory for values and gradients, no [L, d, d] tensor.
      "scan": the token recurrence S_i = S_{i-1} + phi(k_i) v_i^T (`linear_attention_step`).
      "cumsum": reference; materialises the [B, L, H, F, Dv] prefix sums.
    initial_state (causal only): sums over earlier tokens (for example
      `linear_attention_state` of a prefix, or the prefix from other devices in context
      parallelism), added to every position's running sums: S_i = S_0 + sum_{j<=i} phi(k_j) v_j^T.
    All sums are accumulated in fp32; the output has the dtype of q.
    """
    _check_qkv(q, k, v)
    _check_feature_map(feature_map, causal)
    if form not in LINEAR_FORMS:
        raise ValueError(f"unknown form {form!r}; allowed: {', '.join(LINEAR_FORMS)}")
    _check_positive_int("chunk_size", chunk_size)
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
    k, v = _repeat_kv(k, heads), _repeat_kv(v, heads)
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
        if form == "chunked" and not callable(feature_map):
            # Named maps are applied inside the kernel's blocks (one pass over q and k).
            kmask = None if mask is None else mask.astype(jnp.float32)
            phi = fm.resolve(feature_map)
            out = _linear_chunked(q, k, v, kmask, init.s, init.z, phi, chunk_size)
            return out.astype(q.dtype)
    fq, fk = _features(q, k, feature_map, mask)
    v32 = v.astype(jnp.float32)
    if not causal:
        kv = jnp.einsum("blhf,blhv->bhfv", fk, v32)
        num = jnp.einsum("blhf,bhfv->blhv", fq, kv)
        den = jnp.einsum("blhf,bhf->blh", fq, jnp.sum(fk, axis=1))
        out = _divide(num, den[..., None])
    elif form == "cumsum":
        s = jnp.cumsum(jnp.einsum("blhf,blhv->blhfv", fk, v32), axis=1) + init.s[:, None]
        z = jnp.cumsum(fk, axis=1) + init.z[:, None]
        num = jnp.einsum("blhf,blhfv->blhv", fq, s)
        out = _divide(num, jnp.einsum("blhf,blhf->blh", fq, z)[..., None])
    elif form == "scan":
        out = _linear_scan(fq, fk, v32, init)
    else:  # a callable map (it may close over traced arrays): features computed here
        out = _linear_chunked(fq, fk, v, None, init.s, init.z, _as_float32, chunk_size)
    return out.astype(q.dtype)


# Causal chunked form: a blocked kernel with a hand-written VJP.
#
# Tokens are cut into chunks of C, and chunks into blocks of nc chunks whose working set fits
# in cache (on the 2-core CPU here, passes over arrays that spill to DRAM cost more than the
# matmuls). A `fori_loop` walks the blocks carrying the d_k x d_v state; inside a block every
# chunk is handled at once by batched matmuls:
#   A_c = tril(Q_c K_c^T), dS_c = K_c^T V_c, S_c = S_block + sum_{c' < c} dS_c' (a log-depth
#   prefix sum over the block's chunks), num_c = A_c V_c + Q_c S_c.
# A named feature map is applied inside the block, so q, k, v are read from memory once. Autodiff
# through this loop would store every block's intermediates; the backward pass below instead
# recomputes them block by block in reverse, carrying R = sum_{later} Q^T dnum, so memory is
# O(L d) for any length. Sums are fp32.
_BLOCK_BYTES = 2**20  # bytes of one [B, H, block, F] fp32 array; 1 MiB measured fastest here
_BACKWARD_SPLIT = 2  # the backward holds ~2x the live arrays per block, so it walks half-blocks


def _as_float32(x):  # the kernel's "feature map" for features computed by the caller
    return x.astype(jnp.float32)


def _chunk_blocks(length: int, chunk: int, row_bytes: int, value_dim: int) -> tuple[int, int]:
    """(chunks per block, number of blocks) for `length` tokens, preferring a block size that
    divides the chunk count so no padding is needed. Blocks hold at least 8 * value_dim tokens,
    so the d x d fp32 states saved for the backward (one per backward block, which is half a
    forward block) take at most 1/4 of q's fp32 size."""
    n_chunks = -(-length // chunk)
    want = max(_BLOCK_BYTES // (row_bytes * chunk), -(-8 * value_dim // chunk))
    want = max(1, min(n_chunks, want))
    divisor = max(d for d in range(1, want + 1) if n_chunks % d == 0)
    nc = divisor if 2 * divisor >= want else want
    return nc, -(-n_chunks // nc)


def _chunk_geometry(q, s0, chunk: int) -> tuple[int, int, int, int]:
    """The block layout both passes share: (chunks per forward block, forward blocks, chunks per
    backward block, padded length) for q [B, L, H, D] and the state s0 [B, H, F, Dv]."""
    b, length, h, d = q.shape
    f, dv = s0.shape[-2:]
    nc, nb = _chunk_blocks(length, chunk, 4 * b * h * max(f, dv, d), dv)
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


def _chunked_forward(q, k, v, kmask, s0, z0, phi, chunk):
    b, length, h, _ = q.shape
    dv = s0.shape[-1]
    nc, nb, ncb, padded = _chunk_geometry(q, s0, chunk)
    q, k, v = (_pad_axis(x, 1, padded) for x in (q, k, v))
    if kmask is not None:
        kmask = _pad_axis(kmask, 1, padded)

    def body(i, carry):
        s, z, out, den_all, s_starts, z_starts = carry
        start = i * nc * chunk
        fq, fk, vb, _, _ = _block_inputs(q, k, v, kmask, start, nc, chunk, phi)
        sp, zp, ds, dz = _block_states(fk, vb, s, z)
        a = _causal_scores(fq, fk)
        num = jnp.einsum("bhnij,bhnjv->bhniv", a, vb) + jnp.einsum("bhnif,bhnfv->bhniv", fq, sp)
        den = jnp.sum(a, axis=-1) + jnp.einsum("bhnif,bhnf->bhni", fq, zp)
        out = _store(out, _divide(num, den[..., None]), start)
        den_all = lax.dynamic_update_slice_in_dim(den_all, den.reshape(b, h, -1), start, axis=2)
        # States at the start of every backward block.
        at = i * (nc // ncb)
        s_starts = lax.dynamic_update_slice_in_dim(s_starts, _every(sp, ncb), at, axis=0)
        z_starts = lax.dynamic_update_slice_in_dim(z_starts, _every(zp, ncb), at, axis=0)
        return s + jnp.sum(ds, axis=2), z + jnp.sum(dz, axis=2), out, den_all, s_starts, z_starts

    ins = (q, k, v, s0, z0)
    # Each block's outputs are final when written, so they are stored in the input dtype.
    n_starts = nb * (nc // ncb)
    init = (s0, z0, _full((b, padded, h, dv), *ins, dtype=q.dtype, fill=1),
            _full((b, h, padded), *ins),
            _full((n_starts, *s0.shape), *ins), _full((n_starts, *z0.shape), *ins))  # fmt: skip
    _, _, out, den, s_starts, z_starts = lax.fori_loop(0, nb, body, init)
    return out[:, :length], (den[:, :, :length], s_starts, z_starts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _linear_chunked(q, k, v, kmask, s0, z0, phi, chunk):
    """Causal linear attention, chunked. q, k [B, L, H, D] (raw; `phi` maps them to features
    inside each block), v [B, L, H, Dv], kmask [B, L] float (0 = padding) or None, s0, z0 the
    initial state. Returns out [B, L, H, Dv] in the dtype of q."""
    return _chunked_forward(q, k, v, kmask, s0, z0, phi, chunk)[0]


def _linear_chunked_fwd(q, k, v, kmask, s0, z0, phi, chunk):
    out, (den, s_starts, z_starts) = _chunked_forward(q, k, v, kmask, s0, z0, phi, chunk)
    return out, (q, k, v, kmask, s0, z0, out, den, s_starts, z_starts)


def _linear_chunked_bwd(phi, chunk, res, g):
    """With dnum = g / den and dden = -(g . out) / den per query, and per chunk
    dA = tril(dnum V^T + dden 1^T), S / R the states before / after the chunk:
      dQ = dA K + dnum S^T + dden z^T,  dK = dA^T Q + V R^T + r,  dV = A^T dnum + K R,
    R, r accumulated over later chunks (and blocks, walked in reverse). R, r after the whole
    sequence are the gradients of the initial state."""
    q, k, v, kmask, s0, z0, out, den, s_starts, z_starts = res
    length = q.shape[1]
    _, _, nc, padded = _chunk_geometry(q, s0, chunk)
    nb = padded // (nc * chunk)
    inv = _divide(1.0, den)
    q, k, v, g, out = (_pad_axis(x, 1, padded) for x in (q, k, v, g, out))
    inv = _pad_axis(inv, 2, padded)  # [B, H, L]
    if kmask is not None:
        kmask = _pad_axis(kmask, 1, padded)
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
        dfq = (jnp.einsum("bhnij,bhnjf->bhnif", da, fk) + jnp.einsum("bhniv,bhnfv->bhnif", dnum, sp)
               + dden[..., None] * zp[:, :, :, None])  # fmt: skip
        dfk = (jnp.einsum("bhnij,bhnif->bhnjf", da, fq) + jnp.einsum("bhnjv,bhnfv->bhnjf", vb, rl)
               + rzl[:, :, :, None])  # fmt: skip
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


_linear_chunked.defvjp(_linear_chunked_fwd, _linear_chunked_bwd)


def _recurrent_update(state: LinearAttentionState, fq_t, fk_t, v_t):
    """One causal step on features: fq_t, fk_t [B, H, F] fp32, v_t [B, H, Dv] fp32."""
    s = state.s + jnp.einsum("bhf,bhv->bhfv", fk_t, v_t)
    z = state.z + fk_t
    num = jnp.einsum("bhf,bhfv->bhv", fq_t, s)
    den = jnp.einsum("bhf,bhf->bh", fq_t, z)
    return LinearAttentionState(s, z), _divide(num, den[..., None])


def _linear_scan(fq, fk, v, state: LinearAttentionState):
    """Token recurrence with a hand-written VJP (see `_scan_bwd`): O(d^2) memory for gradients."""
    return _scan(fq, fk, v, state.s, state.z)


def _scan_steps(fq, fk, v, s0, z0, g=None):
    """Forward recurrence over tokens. With cotangents g it also returns, per token,
    dq_t = S_t dnum_t + z_t dden_t, dnum_t = g_t / den_t and dden_t = -(g_t . out_t) / den_t."""

    def step(carry, xs):
        s, z = carry
        fq_t, fk_t, v_t = xs[:3]
        s = s + jnp.einsum("bhf,bhv->bhfv", fk_t, v_t)
        z = z + fk_t
        num = jnp.einsum("bhf,bhfv->bhv", fq_t, s)
        den = jnp.einsum("bhf,bhf->bh", fq_t, z)
        inv = _divide(1.0, den)[..., None]
        out = num * inv
        if g is None:
            return (s, z), out
        dnum = xs[3] * inv
        dden = -jnp.sum(xs[3] * out, axis=-1, keepdims=True) * inv
        dq = jnp.einsum("bhfv,bhv->bhf", s, dnum) + z * dden
        return (s, z), (dq, dnum, dden)

    xs = tuple(jnp.swapaxes(x, 0, 1) for x in (fq, fk, v) + (() if g is None else (g,)))
    return lax.scan(step, (s0, z0), xs)[1]


@jax.custom_vjp
def _scan(fq, fk, v, s0, z0):
    return jnp.swapaxes(_scan_steps(fq, fk, v, s0, z0), 0, 1)


def _scan_fwd(fq, fk, v, s0, z0):
    return _scan(fq, fk, v, s0, z0), (fq, fk, v, s0, z0)


def _scan_bwd(res, g):
    """Reverse-scan VJP (the Performer trick, with the forward states recomputed, not
    subtracted): dk_t = R_t v_t + r_t, dv_t = R_t^T phi(k_t), with R_t = sum_{u>=t} phi(q_u)
    dnum_u^T and r_t = sum_{u>=t} phi(q_u) dden_u carried backwards; R_0, r_0 are the
    gradients of the initial state."""
    fq, fk, v, s0, z0 = res
    dq, dnum, dden = _scan_steps(fq, fk, v, s0, z0, g)  # time-major [L, B, H, .]

    def back(carry, xs):
        r_s, r_z = carry
        fq_t, fk_t, v_t, dnum_t, dden_t = xs
        r_s = r_s + jnp.einsum("bhf,bhv->bhfv", fq_t, dnum_t)
        r_z = r_z + fq_t * dden_t
        dk = jnp.einsum("bhfv,bhv->bhf", r_s, v_t) + r_z
        dv = jnp.einsum("bhfv,bhf->bhv", r_s, fk_t)
        return (r_s, r_z), (dk, dv)

    xs = tuple(jnp.swapaxes(x, 0, 1) for x in (fq, fk, v)) + (dnum, dden)
    (ds0, dz0), (dk, dv) = lax.scan(back, (jnp.zeros_like(s0), jnp.zeros_like(z0)), xs,
                                    reverse=True)  # fmt: skip
    t = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    return t(dq), t(dk), t(dv), ds0, dz0


_scan.defvjp(_scan_fwd, _scan_bwd)


def linear_attention_init_state(
    batch: int, heads: int, feature_dim: int, value_dim: int, dtype=jnp.float32
) -> LinearAttentionState:
    """Zero recurrent state: s [batch, heads, features, value_dim], z [batch, heads, features].

    `feature_dim` is `research.ops.feature_maps.feature_dim(feature_map, head_dim)` (for example
    head_dim + 1 for "taylor"). Keep `dtype` fp32 for long decodes: the sums only grow.
    """
    for name, value in (("batch", batch), ("heads", heads), ("feature_dim", feature_dim),
                        ("value_dim", value_dim)):  # fmt: skip
        _check_positive_int(name, value)
    return LinearAttentionState(
        jnp.zeros((batch, heads, feature_dim, value_dim), dtype),
        jnp.zeros((batch, heads, feature_dim), dtype),
    )


def linear_attention_step(
    state: LinearAttentionState,
    q_t: jax.Array,
    k_t: jax.Array,
    v_t: jax.Array,
    *,
    feature_map="elu",
    mask_t: jax.Array | None = None,
) -> tuple[LinearAttentionState, jax.Array]:
    """One decoding step of causal linear attention in O(1) time and memory per token.

    S_t = S_{t-1} + phi(k_t) v_t^T, z_t = z_{t-1} + phi(k_t), out_t = phi(q_t) S_t / phi(q_t).z_t.
    Shapes: q_t, k_t [B, H, D], v_t [B, H, Dv], state from `linear_attention_init_state`;
    `mask_t` [B] bool: False leaves that row's state unchanged (a padding token).
    Returns (new_state, out_t [B, H, Dv] in the dtype of q_t).
    """
    _check_feature_map(feature_map, causal=True)
    for name, x in (("q_t", q_t), ("k_t", k_t), ("v_t", v_t)):
        if jnp.ndim(x) != 3:
            raise ValueError(
                f"{name} must have rank 3 [batch, heads, head_dim], got {jnp.shape(x)}"
            )
    if q_t.shape != k_t.shape or v_t.shape[:2] != q_t.shape[:2]:
        raise ValueError(f"step shapes differ: q_t {q_t.shape}, k_t {k_t.shape}, v_t {v_t.shape}")
    phi = fm.resolve(feature_map)
    fq, fk = phi(q_t).astype(jnp.float32), phi(k_t).astype(jnp.float32)
    expected = (*q_t.shape[:2], fq.shape[-1], v_t.shape[-1])
    if state.s.shape != expected:
        raise ValueError(f"state.s has shape {state.s.shape}, expected {expected} for these inputs")
    if mask_t is not None:
        fk = jnp.where(jnp.asarray(mask_t)[:, None, None], fk, 0.0)
    new_state, out = _recurrent_update(state, fq, fk, v_t.astype(jnp.float32))
    new_state = LinearAttentionState(
        new_state.s.astype(state.s.dtype), new_state.z.astype(state.z.dtype)
    )
    return new_state, out.astype(q_t.dtype)


# ----------------------------------------------------------------------------------------------
# Linformer
# ----------------------------------------------------------------------------------------------
def linformer_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    e: jax.Array,
    f: jax.Array,
    *,
    causal: bool = False,
    mask: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """Linformer (Wang et al. 2020): softmax(scale q (E k)^T) (F v), K and V projected along L.

    Shapes: q [B, Lq, H, D], k [B, n, Hkv, D], v [B, n, Hkv, Dv], e and f [m, n] -> [B, Lq, H, Dv].
    `mask` [B, n] is a key-padding mask: padded keys and values are zeroed before projecting.
    """
    if causal:
        raise ValueError(
            "linformer_attention cannot be causal: E and F mix all n positions into each of the "
            "m projected keys, so every output would see future tokens"
        )
    _check_qkv(q, k, v)
    n = k.shape[1]
    for name, p in (("e", e), ("f", f)):
        if jnp.ndim(p) != 2 or jnp.shape(p)[1] != n:
            raise ValueError(f"{name} must be [m, kv_length={n}], got shape {jnp.shape(p)}")
    if jnp.shape(e)[0] != jnp.shape(f)[0]:
        raise ValueError(
            f"e and f must project to the same m, got {jnp.shape(e)} and {jnp.shape(f)}"
        )
    if mask is not None:
        _normalise_mask(mask, k.shape[0], q.shape[2], q.shape[1], n)
        if jnp.ndim(mask) != 2:
            raise ValueError(
                f"linformer_attention takes a key-padding mask [batch, n], got {jnp.shape(mask)}"
            )
        keep = jnp.asarray(mask)[:, :, None, None]
        k, v = jnp.where(keep, k, 0), jnp.where(keep, v, 0)
    k_proj = jnp.einsum("mn,bnhd->bmhd", e, k)
    v_proj = jnp.einsum("mn,bnhd->bmhd", f, v)
    return softmax_attention(q, k_proj, v_proj, scale=scale)


def linear_attention_state(
    k: jax.Array, v: jax.Array, *, feature_map="elu", mask: jax.Array | None = None
) -> LinearAttentionState:
    """Recurrent state after a whole prefix: s = sum_j phi(k_j) v_j^T, z = sum_j phi(k_j).

    k [B, L, H, D], v [B, L, H, Dv], mask [B, L] (False = padding, not summed). Stepping
    `linear_attention_step` from this state continues the causal form exactly (prefill).
    """
    _check_feature_map(feature_map, causal=True)
    fk = fm.resolve(feature_map)(k).astype(jnp.float32)
    if mask is not None:
        fk = jnp.where(jnp.asarray(mask)[:, :, None, None], fk, 0.0)
    s = jnp.einsum("blhf,blhv->bhfv", fk, v.astype(jnp.float32))
    return LinearAttentionState(s, jnp.sum(fk, axis=1))
