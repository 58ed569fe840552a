"""Softmax attention: dense reference and blockwise online softmax with a custom VJP.

Shapes: q [B, Lq, H, D], k [B, Lk, Hkv, D], v [B, Lk, Hkv, Dv] -> [B, Lq, H, Dv]; internally
[B, H, L, D]. Blockwise: Rabe & Staats 2021, "Self-attention does not need O(n^2) memory"; the
FlashAttention-2 recurrence and backward (Dao 2023).
"""

# jaxtyping shape strings ("B L H D") are not forward references.

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from research.ops.attention.common import (
    check_qkv,
    default_block_sizes,
    normalise_bias,
    normalise_mask,
    pad_axis,
    repeat_kv,
)
from research.ops.attention.segments import check_segment_ids, same_segment
from research.ops.checks import check_bool, check_positive_int

PORTABLE_SOFTMAX_IMPLEMENTATIONS = ("xla", "blockwise")  # every backend
# From this length the dense form's [B, H, L, L] scores are refused (configs) or avoided.
DENSE_SOFTMAX_MAX_LEN = 8192
SOFTMAX_IMPLEMENTATIONS = (*PORTABLE_SOFTMAX_IMPLEMENTATIONS, "cudnn", "tpu_flash")
_KERNEL_BACKEND = {"cudnn": ("gpu", "a GPU (cuDNN)"), "tpu_flash": ("tpu", "a TPU (Pallas/Mosaic)")}


def check_backend(implementation: str, backend: str | None = None) -> None:
    """Raise when `implementation` has no kernel on `backend` (default: JAX's default)."""
    backend = backend or jax.default_backend()
    want, what = _KERNEL_BACKEND.get(implementation, (backend, ""))
    if backend != want:
        raise ValueError(
            f"softmax implementation {implementation!r} needs {what} but the backend is "
            f"{backend!r}; use 'blockwise' (portable, O(L) memory) or 'xla'"
        )


def softmax_attention(
    q: Float[Array, "B Lq H D"],
    k: Float[Array, "B Lk Hkv D"],
    v: Float[Array, "B Lk Hkv Dv"],
    *,
    causal: bool = False,
    mask: Bool[Array, "B Lk"] | Bool[Array, "#B #H #Lq #Lk"] | None = None,
    bias: Float[Array, "*#B #H #Lq #Lk"] | None = None,
    scale: float | None = None,
    implementation: str = "xla",
    block_q: int | None = None,
    block_k: int | None = None,
    segment_ids: Int[Array, "B L"] | None = None,
) -> Float[Array, "B Lq H Dv"]:
    """Scaled dot-product attention: out = softmax(scale q k^T + bias, masked) v.

    Shapes: q [B, Lq, H, D], k [B, Lk, Hkv, D], v [B, Lk, Hkv, Dv] -> [B, Lq, H, Dv].
    `scale` defaults to 1/sqrt(D). Logits and softmax are computed in fp32.

    causal: query i sees keys j <= i, top-left aligned also when Lq != Lk (as in
      `jax.nn.dot_product_attention(is_causal=True)`): with Lq < Lk the last Lk - Lq keys are
      seen by no query, with Lq > Lk queries i >= Lk see every key. To decode Lq new queries
      after Lk - Lq cached keys (bottom-right alignment), pass `mask` instead.

    implementation:
      "xla": dense reference; materialises the [B, H, Lq, Lk] logits.
      "blockwise": online softmax over key blocks (Rabe & Staats 2021, "Self-attention does not
        need O(n^2) memory"; the FlashAttention-2 recurrence, Dao 2023) with a custom VJP that
        recomputes probabilities per block, so forward and backward use O(L * block) memory.
        Key blocks entirely above the causal diagonal are skipped, not masked.
      "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's fused flash
        attention on NVIDIA GPUs (fp16/bf16; other backends raise). Same arguments, and the
        same top-left causal alignment, as the other two.
      "tpu_flash": JAX's Pallas TPU flash attention (`jax.experimental.pallas.ops.tpu.
        flash_attention`), TPU only; causal and key-padding masks, no bias, lengths multiples
        of its 128-token blocks. A Mosaic kernel is not partitioned by XLA: on a mesh call it
        per device inside `jax.shard_map` (the models do: `research.models.partitioning`).
    block_q, block_k: blockwise tile sizes in tokens; None takes the backend's default
      (`common.default_block_sizes`). The dense form ignores them.
    segment_ids: [B, L] int, non-decreasing along L (packed sequences, needs Lq == Lk): query i
      sees key j only if they share an id (block-diagonal; with causal, block-diagonal causal).
      "xla" and "blockwise" apply it per block (no [L, L] mask is built by "blockwise");
      "tpu_flash" passes it to the kernel's SegmentIds; "cudnn" raises (JAX's cuDNN call takes
      no segment ids).
    """
    check_bool("causal", causal)
    check_qkv(q, k, v)
    if implementation not in SOFTMAX_IMPLEMENTATIONS:
        raise ValueError(
            f"unknown implementation {implementation!r}; "
            f"allowed: {', '.join(SOFTMAX_IMPLEMENTATIONS)}"
        )
    if implementation == "cudnn" and segment_ids is not None:
        raise ValueError(
            "implementation='cudnn' takes no segment_ids (jax.nn."
            "dot_product_attention has none); use 'blockwise' (O(L) memory), "
            "'xla', 'tpu_flash' on TPU, or mask=research.ops.masks."
            "packed_mask(...)"
        )
    if implementation == "cudnn":  # (tpu_flash is traced on a CPU host when planning for TPU)
        check_backend(implementation)
    defaults = default_block_sizes()
    block_q = defaults.block_q if block_q is None else block_q
    block_k = defaults.block_k if block_k is None else block_k
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)
    batch, q_len, heads, head_dim = q.shape
    kv_len = k.shape[1]
    if segment_ids is not None:
        if q_len != kv_len:
            raise ValueError(
                f"segment_ids [batch, length] needs q_length == kv_length, got "
                f"{q_len}, {kv_len}; pass a mask for cross attention"
            )
    seg = check_segment_ids(segment_ids, batch, q_len)
    mask4 = normalise_mask(mask, batch, heads, q_len, kv_len)
    bias4 = normalise_bias(bias, batch, heads, q_len, kv_len)
    scale = float(head_dim**-0.5 if scale is None else scale)
    if implementation == "cudnn":
        return _jax_attention(q, k, v, bias4, mask4, causal, scale, "cudnn")
    if implementation == "tpu_flash":
        return _tpu_flash(q, k, v, bias, mask, causal, scale, seg)
    k, v = repeat_kv(k, heads), repeat_kv(v, heads)
    # Internal layout [B, H, L, D]: the per-head matmuls are then plain batched GEMMs.
    qt, kt, vt = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    if implementation == "xla":
        if seg is not None:
            mask4 = same_segment(seg) if mask4 is None else mask4 & same_segment(seg)
        out = _dense_attention(qt, kt, vt, bias4, mask4, causal=causal, scale=scale)
    else:
        bq, bk = min(block_q, q_len), min(block_k, kv_len)
        out = _blockwise_attention(qt, kt, vt, bias4, mask4, seg, causal, scale, bq, bk)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)


def _jax_attention(q, k, v, bias, mask, causal: bool, scale: float, implementation: str):
    """JAX's own attention on our [B, L, H, D] layout (JAX's too; grouped k/v heads native)."""
    if mask is not None:  # cuDNN takes the mask as a bias, whose lengths must be Lq x Lk
        mask = jnp.broadcast_to(mask, (*mask.shape[:2], q.shape[1], k.shape[1]))
    out = jax.nn.dot_product_attention(
        q, k, v, bias, mask, scale=scale, is_causal=causal, implementation=implementation
    )
    return out.astype(q.dtype)


def _tpu_flash(q, k, v, bias, mask, causal: bool, scale: float, seg=None):
    """The Pallas TPU kernel on [B, H, L, D]; a key-padding mask becomes segment ids (queries 1,
    valid keys 1, padding 0: a query sees only keys of its segment). `seg` [B, L] (packed
    sequences) is shifted to ids >= 1 so padding keeps 0."""
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    if bias is not None or (mask is not None and jnp.ndim(mask) != 2):
        raise ValueError(
            "implementation='tpu_flash' takes causal and key-padding [batch, "
            "kv_length] masks only, no bias; use 'blockwise' for others"
        )
    heads = q.shape[2]
    qt, kt, vt = (jnp.swapaxes(x, 1, 2) for x in (q, repeat_kv(k, heads), repeat_kv(v, heads)))
    ids = None
    if mask is not None or seg is not None:
        q_ids = jnp.ones(q.shape[:2], jnp.int32) if seg is None else seg - jnp.min(seg) + 1
        kv_ids = q_ids if mask is None else jnp.where(jnp.asarray(mask, bool), q_ids, 0)
        ids = fa.SegmentIds(q=q_ids, kv=kv_ids)
    out = fa.flash_attention(qt, kt, vt, segment_ids=ids, causal=causal, sm_scale=scale)
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

    def scores(self, qi, kj, bias, mask, seg, i, j):
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
        if seg is not None:  # packed sequences: [B, L_pad] ids, same id = same sequence
            seg_q = lax.dynamic_slice_in_dim(seg, i * self.bq, self.bq, axis=1)
            seg_k = lax.dynamic_slice_in_dim(seg, j * self.bk, self.bk, axis=1)
            valid = valid & (seg_q[:, None, :, None] == seg_k[:, None, None, :])
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


def _pad_inputs(geo: _Blocks, q, k, v, bias, mask, seg=None):
    lq, lk = geo.nq * geo.bq, geo.nk * geo.bk
    if seg is not None:  # (padded keys are masked by index, padded queries dropped)
        seg = pad_axis(seg, 1, max(lq, lk))
    q = pad_axis(q, 2, lq)
    k, v = pad_axis(k, 2, lk), pad_axis(v, 2, lk)
    if bias is not None:
        bias = pad_axis(bias, 2, lq) if bias.shape[2] > 1 else bias
        bias = pad_axis(bias, 3, lk) if bias.shape[3] > 1 else bias
    if mask is not None:
        mask = pad_axis(mask, 2, lq, False) if mask.shape[2] > 1 else mask
        mask = pad_axis(mask, 3, lk, False) if mask.shape[3] > 1 else mask
    return q, k, v, bias, mask, seg


def _blockwise_forward(geo: _Blocks, q, k, v, bias, mask, seg):
    """Padded inputs -> (out [B, H, Lq_pad, Dv] fp32, logsumexp [B, H, Lq_pad] fp32)."""
    b, h, _, _ = q.shape
    dv = v.shape[-1]

    def one_q_block(i):
        qi = lax.dynamic_slice_in_dim(q, i * geo.bq, geo.bq, axis=2)

        def body(j, carry):
            kj = lax.dynamic_slice_in_dim(k, j * geo.bk, geo.bk, axis=2)
            vj = lax.dynamic_slice_in_dim(v, j * geo.bk, geo.bk, axis=2)
            s, _ = geo.scores(qi, kj, bias, mask, seg, i, j)
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


def _blockwise_backward(geo: _Blocks, q, k, v, bias, mask, seg, out, lse, dout):
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
            s, valid = geo.scores(qi, kj, bias, mask, seg, i, j)
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _blockwise_attention(q, k, v, bias, mask, seg, causal, scale, bq, bk):
    return _blockwise_fwd(q, k, v, bias, mask, seg, causal, scale, bq, bk)[0]


def _geometry(q, k, causal, scale, bq, bk) -> _Blocks:
    q_len, kv_len = q.shape[2], k.shape[2]
    return _Blocks(q_len, kv_len, bq, bk, -(-q_len // bq), -(-kv_len // bk), causal, scale)


def _blockwise_fwd(q, k, v, bias, mask, seg, causal, scale, bq, bk):
    geo = _geometry(q, k, causal, scale, bq, bk)
    qp, kp, vp, biasp, maskp, segp = _pad_inputs(geo, q, k, v, bias, mask, seg)
    out, lse = _blockwise_forward(geo, qp, kp, vp, biasp, maskp, segp)
    out = out[:, :, : geo.q_len]
    return out, (q, k, v, bias, mask, seg, out, lse)


def _blockwise_bwd(causal, scale, bq, bk, res, dout):
    q, k, v, bias, mask, seg, out, lse = res
    geo = _geometry(q, k, causal, scale, bq, bk)
    qp, kp, vp, biasp, maskp, segp = _pad_inputs(geo, q, k, v, bias, mask, seg)
    lq = geo.nq * geo.bq
    outp = pad_axis(out, 2, lq)
    doutp = pad_axis(dout.astype(jnp.float32), 2, lq)
    dq, dk, dv, dbias = _blockwise_backward(geo, qp, kp, vp, biasp, maskp, segp, outp, lse, doutp)
    dq = dq[:, :, : geo.q_len].astype(q.dtype)
    dk = dk[:, :, : geo.kv_len].astype(k.dtype)
    dv = dv[:, :, : geo.kv_len].astype(v.dtype)
    if dbias is not None:
        dbias = dbias[:, :, : bias.shape[2], : bias.shape[3]].astype(bias.dtype)
    return dq, dk, dv, dbias, None, None


_blockwise_attention.defvjp(_blockwise_fwd, _blockwise_bwd)
