"""Multi-head attention as Flax NNX modules: one class per `cfg.attention`, chosen once.

`research.models.layers.make_attention(cfg, causal=..., cross=..., rngs=...)` builds a
`SoftmaxAttention`, `LinearAttention` or `LinformerAttention` from here, or one of the gated /
delta-rule kinds of `research.models.recurrent_attention`. The base `Attention` owns what they
share: the projections q/k/v/o, rotary positions, the short causal key convolution (with its decode
history) and the cross-attention cache; each subclass supplies `attend` and its decode cache.

Also here, because attention is the lowest model layer: `axes` (logical-axes metadata), `dense`
(a projection carrying it), `FavorProjection` and `causal_conv`; `research.models.layers`
re-exports them.

Decoding caches are plain pytrees (see `research.models.layers`). A softmax self-attention layer
holds {"k", "v"}: [B, T, Hkv, D], a linear one a `LinearAttentionState`; cross-attention holds the
encoder's {"k", "v", "mask"}. With `short_conv` = K > 0 a self-attention layer holds {"attn":
that cache, "conv": [B, K-1, d_model] the last K-1 inputs}. Linformer has no decode cache.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from research import ops
from research.models.config import ModelConfig
from research.models.partitioning import (
    BATCH,
    EMBED,
    HEADS,
    KV,
    LENGTH,
    per_device,
    platform,
    tag,
)
from research.models.variables import Constant
from research.ops import feature_maps as fm
from research.ops.checks import check_causal_allowed


def axes(*names):
    """Metadata naming the logical axes of a parameter."""
    return {"logical_axes": names}


class FavorProjection(Constant):
    """Fixed FAVOR+ random projection: a variable that is neither trained nor decayed."""


def dense(cfg: ModelConfig, n_in: int, n_out: int, in_axis, out_axis, rngs, bias=None):
    """nnx.Linear n_in -> n_out with N(0, 0.02) kernels and logical axes (bias: cfg.use_bias)."""
    use_bias = cfg.use_bias if bias is None else bias
    return nnx.Linear(
        n_in,
        n_out,
        use_bias=use_bias,
        dtype=jnp.dtype(cfg.dtype),
        rngs=rngs,
        kernel_init=nnx.initializers.normal(0.02),
        kernel_metadata=axes(in_axis, out_axis),
        bias_metadata=axes(out_axis),
    )


def causal_conv(x, w, history=None, document_ids=None):
    """Depthwise causal convolution over time: y_t = sum_s w[s] * x_{t-s}.

    x [B, L, d], w [K, d], history [B, K-1, d]: the K-1 inputs before x (zeros if None);
    document_ids [B, L] (packed documents): x_{t-s} counts only if it is in t's document.
    -> y [B, L, d] in x's dtype, the taps summed in fp32 (as fla's causal_conv1d: a bf16 model
    rounds the sum once, not each partial sum)."""
    k, length = w.shape[0], x.shape[1]
    full = _after_history(x, history, k).astype(jnp.float32)
    w = w.astype(x.dtype).astype(jnp.float32)  # the weight as the model's dtype holds it
    if document_ids is None:
        y = sum(w[s] * full[:, k - 1 - s : k - 1 - s + length] for s in range(k))
        return y.astype(x.dtype)
    doc = jnp.pad(document_ids, ((0, 0), (k - 1, 0)), constant_values=-1)
    y = sum(
        w[s]
        * jnp.where(
            (doc[:, k - 1 - s : k - 1 - s + length] == document_ids)[..., None],
            full[:, k - 1 - s : k - 1 - s + length],
            0,
        )
        for s in range(k)
    )
    return y.astype(x.dtype)


def _after_history(x, history, k: int):
    """[history; x] along time: x [B, L, d] preceded by its K-1 earlier inputs (zeros if None)."""
    if history is None:
        history = jnp.zeros((x.shape[0], k - 1, x.shape[2]), x.dtype)
    return jnp.concatenate([history.astype(x.dtype), x], axis=1)


def _conv_history(x, lengths, k: int):
    """The K-1 inputs before position lengths[b] of each row of x [B, L, d] (zeros before 0)."""
    full = _after_history(x, None, k)
    return jax.vmap(lambda f, n: jax.lax.dynamic_slice_in_dim(f, n, k - 1, 0))(full, lengths)


class Attention(nnx.Module):
    """Multi-head self- or cross-attention; subclasses pick the `research.ops` function.

    x [B, L, d_model] -> [B, L, d_model]. Self-attention may be causal; cross-attention attends
    to `context` [B, S, d_model] and is never causal.

    Subclasses define `attend(q, k, v, mask, causal)` and, to decode, `empty_state(batch,
    max_length)`, `prefill_state(k, v, state, valid)` and `decode_attend(q, k, v, state, index,
    valid) -> (o, state)` on heads [B, L, H, D]; the base wraps them with the key convolution.
    """

    def __init__(self, cfg: ModelConfig, *, causal: bool, cross: bool = False, rngs: nnx.Rngs):
        if causal:
            check_causal_allowed(attention=cfg.attention, feature_map=cfg.feature_map)
        self.cfg, self.causal, self.cross = cfg, causal, cross
        d, h, hk, dh = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_dim
        self.q = dense(cfg, d, h * dh, "embed", "heads", rngs)
        self.k = dense(cfg, d, hk * dh, "embed", "kv", rngs)
        self.v = dense(cfg, d, hk * dh, "embed", "kv", rngs)
        self.o = dense(cfg, h * dh, d, "heads", "embed", rngs)
        self._init_kind(rngs)  # before key_conv: the parameter RNG stream keeps its order
        self.short_conv = 0 if cross else cfg.short_conv
        if self.short_conv:
            # Identity at lag 0 plus small random lags: training starts near the plain model.
            w = 0.02 * jax.random.normal(rngs.params(), (self.short_conv, d))
            self.key_conv = nnx.Param(w.at[0].add(1.0), **axes(None, "embed"))

    def _init_kind(self, rngs: nnx.Rngs) -> None:
        """Kind-specific variables (Linformer's E and F, the FAVOR+ projection)."""

    # -- per kind: each subclass defines attend, empty_state, prefill_state, decode_attend ----

    # -- helpers ---------------------------------------------------------------------------
    def _heads(self, x, proj, n, name):
        """[B, L, d] -> [B, L, n, head_dim], tagged `name` for remat, heads sharded."""
        y = proj(x).reshape(*x.shape[:2], n, self.cfg.head_dim)
        return tag(y, name, BATCH, LENGTH, HEADS if name == "query_proj" else KV, None)

    def _qkv(self, x, context, positions, history=None, document_ids=None):
        cfg = self.cfg
        src = x if context is None else context
        q = self._heads(x, self.q, cfg.num_heads, "query_proj")
        ksrc = src
        if self.short_conv:
            ksrc = causal_conv(src, self.key_conv.get_value(), history, document_ids)
        k = self._heads(ksrc, self.k, cfg.kv_heads, "key_proj")
        v = self._heads(src, self.v, cfg.kv_heads, "value_proj")
        if cfg.positions == "rotary" and not self.cross:
            q = ops.apply_rotary(q, positions, base=cfg.rope_base)
            k = ops.apply_rotary(k, positions, base=cfg.rope_base)
        return q, k, v

    def _out(self, o):
        o = tag(o, "context", BATCH, LENGTH, HEADS, None)
        return tag(self.o(o.reshape(*o.shape[:2], -1)), "out_proj", BATCH, LENGTH, EMBED)

    def _repeat_kv(self, k, v):
        """Grouped-query k, v [B, L, Hkv, D] -> [B, L, H, D]."""
        rep = self.cfg.num_heads // self.cfg.kv_heads
        return jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)

    # -- full sequence -------------------------------------------------------------------------
    def __call__(self, x, *, mask=None, positions=None, context=None, document_ids=None):
        """mask: key-padding [B, S] or full [B, 1|H, L, S] (True = attend); document_ids [B, L]
        int, non-decreasing: packed documents, none attending to another (self-attention)."""
        q, k, v = self._qkv(x, context, positions, document_ids=document_ids)
        return self._out(self.attend(q, k, v, mask, self.causal, document_ids))

    # -- decoding ------------------------------------------------------------------------------
    def init_cache(self, batch: int, max_length: int):
        cache = self.empty_state(batch, max_length)
        if not self.short_conv:
            return cache
        shape = (batch, self.short_conv - 1, self.cfg.d_model)
        return {"attn": cache, "conv": jnp.zeros(shape, jnp.dtype(self.cfg.dtype))}

    def prefill(self, x, layer_cache, *, mask, valid, positions):
        """Full forward over a prompt x [B, P, d] that also fills this layer's cache.

        `mask` is what the full forward uses; `valid` [B, P] marks real prompt tokens.
        """
        inner = layer_cache["attn"] if self.short_conv else layer_cache
        q, k, v = self._qkv(x, None, positions)
        out = self._out(self.attend(q, k, v, mask, self.causal))
        cache = self.prefill_state(k, v, inner, valid)
        if not self.short_conv:
            return out, cache
        lengths = jnp.sum(valid, axis=1).astype(jnp.int32)
        return out, {"attn": cache, "conv": _conv_history(x, lengths, self.short_conv)}

    def decode(self, x_t, layer_cache, *, index, valid):
        """One token x_t [B, 1, d] at positions `index` [B]; `valid` [B, T] includes this token."""
        history = layer_cache["conv"] if self.short_conv else None
        inner = layer_cache["attn"] if self.short_conv else layer_cache
        q, k, v = self._qkv(x_t, None, index[:, None], history)
        o, cache = self.decode_attend(q, k, v, inner, index, valid)
        if not self.short_conv:
            return self._out(o), cache
        window = _after_history(x_t.astype(history.dtype), history, self.short_conv)
        return self._out(o), {"attn": cache, "conv": window[:, 1:]}

    def cross_cache(self, context, context_mask):
        """Encoder keys/values computed once per decode: {"k", "v": [B, S, Hkv, D], "mask"}."""
        k = self._heads(context, self.k, self.cfg.kv_heads, "key_proj")
        v = self._heads(context, self.v, self.cfg.kv_heads, "value_proj")
        mask = jnp.ones(context.shape[:2], bool) if context_mask is None else context_mask
        return {"k": k, "v": v, "mask": mask}

    def decode_cross(self, x_t, cross_cache):
        q = self._heads(x_t, self.q, self.cfg.num_heads, "query_proj")
        o = self.attend(q, cross_cache["k"], cross_cache["v"], cross_cache["mask"], False)
        return self._out(o)


class SoftmaxAttention(Attention):
    """Scaled dot-product attention; decodes from a key/value cache [B, T, Hkv, D]."""

    def attend(self, q, k, v, mask, causal, document_ids=None):
        impl = self.cfg.softmax_implementation
        if impl == "tpu_flash" and (
            q.shape[1] % 128
            or k.shape[1] % 128
            or (mask is not None and mask.ndim != 2)
            or platform() != "tpu"
        ):
            # The kernel's blocks are 128 tokens and it takes key-padding masks and segment ids
            # only; off TPU, and for prefill, cross-attention decoding or UniLM masks, the same
            # math blockwise.
            impl = "blockwise"

        def fn(q, k, v, mask=None, document_ids=None):
            return ops.softmax_attention(
                q, k, v, causal=causal, mask=mask, implementation=impl, segment_ids=document_ids
            )

        if impl != "tpu_flash":
            return fn(q, k, v, mask, document_ids)
        # A Mosaic kernel is not partitioned by XLA: one call per device, batch and heads split.
        # Grouped k/v are repeated first, so each device's k/v heads are its query heads' own.
        # Packed documents reach the kernel as its segment ids (None arguments stay None).
        k, v = self._repeat_kv(k, v)
        names = ((BATCH, LENGTH, HEADS, None),) * 3
        return per_device(fn, *names, (BATCH, None), (BATCH, LENGTH))(q, k, v, mask, document_ids)

    def empty_state(self, batch, max_length):
        # in the model's dtype: k and v are computed in it, so fp32 storage kept no more
        # precision and doubled a bf16 model's cache
        shape = (batch, max_length, self.cfg.kv_heads, self.cfg.head_dim)
        dtype = jnp.dtype(self.cfg.dtype)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

    def prefill_state(self, k, v, state, valid):
        p = k.shape[1]
        return {name: state[name].at[:, :p].set(t) for name, t in (("k", k), ("v", v))}

    def decode_attend(self, q, k, v, state, index, valid):
        rows = jnp.arange(q.shape[0])
        cache = {
            name: state[name].at[rows, index].set(t[:, 0].astype(state[name].dtype))
            for name, t in (("k", k), ("v", v))
        }
        o = ops.softmax_attention(
            q, cache["k"].astype(q.dtype), cache["v"].astype(q.dtype), mask=valid
        )
        # A step past the cache (index >= its length) cannot store its key: it would attend
        # without the current token, silently. NaN marks it instead (the sampler never gets
        # there: it sizes the cache for its prompt and tokens).
        inside = jnp.asarray(index < state["k"].shape[1]).reshape(-1, *(1,) * (o.ndim - 1))
        return jnp.where(inside, o, jnp.nan), cache


def _key_padding_only(cfg: ModelConfig, mask):
    if mask is not None and mask.ndim != 2:
        raise ValueError(
            f"attention={cfg.attention!r} takes only key-padding masks [batch, length]; a full "
            f"mask of shape {mask.shape} (UniLM, packing) needs attention='softmax'"
        )


class LinearAttention(Attention):
    """Kernelised linear attention (`cfg.feature_map`); decodes from a fixed-size state."""

    def _init_kind(self, rngs):
        if self.cfg.feature_map == "favor":
            w = fm.favor_projection(rngs.params(), self.cfg.favor_features, self.cfg.head_dim)
            self.favor = FavorProjection(w, **axes(None, None))

    def feature_map(self):
        cfg = self.cfg
        return fm.favor(self.favor.get_value()) if cfg.feature_map == "favor" else cfg.feature_map

    def attend(self, q, k, v, mask, causal, document_ids=None):
        cfg = self.cfg
        _key_padding_only(cfg, mask)
        impl = cfg.linear_implementation if causal else "xla"

        def fn(q, k, v, mask=None, document_ids=None):
            return ops.linear_attention(
                q,
                k,
                v,
                feature_map=self.feature_map(),
                causal=causal,
                mask=mask,
                form=cfg.linear_form if causal else "chunked",
                chunk_size=cfg.chunk_size,
                segment_ids=document_ids,
                implementation=impl,
            )

        if impl != "pallas" or platform() != "tpu":
            return fn(q, k, v, mask, document_ids)
        # The Mosaic kernel per device (as tpu_flash): batch and heads split, whole sequences.
        k, v = self._repeat_kv(k, v)
        names = ((BATCH, None, HEADS, None),) * 3
        return per_device(fn, *names, (BATCH, None), (BATCH, None))(q, k, v, mask, document_ids)

    def empty_state(self, batch, max_length):
        cfg = self.cfg
        fdim = fm.feature_dim(self.feature_map(), cfg.head_dim)
        return ops.linear_attention_init_state(batch, cfg.num_heads, fdim, cfg.head_dim)

    def prefill_state(self, k, v, state, valid):
        k, v = self._repeat_kv(k, v)
        return ops.linear_attention_state(k, v, feature_map=self.feature_map(), mask=valid)

    def decode_attend(self, q, k, v, state, index, valid):
        k, v = self._repeat_kv(k, v)
        state, o = ops.linear_attention_step(
            state, q[:, 0], k[:, 0], v[:, 0], feature_map=self.feature_map()
        )
        return o[:, None], state


class LinformerAttention(Attention):
    """Linformer (Wang et al. 2020): keys and values projected along length by E, F [k, N].

    Bidirectional only, so it has no incremental decoding.
    """

    def _init_kind(self, rngs):
        cfg = self.cfg
        init = nnx.initializers.normal(cfg.max_length**-0.5)
        shape = (cfg.linformer_k, cfg.max_length)
        self.e = nnx.Param(init(rngs.params(), shape), **axes(None, None))
        self.f = nnx.Param(init(rngs.params(), shape), **axes(None, None))

    def attend(self, q, k, v, mask, causal, document_ids=None):
        _key_padding_only(self.cfg, mask)
        if document_ids is not None:
            raise ValueError("attention='linformer' cannot separate packed documents")
        n = k.shape[1]
        e, f = self.e.get_value()[:, :n], self.f.get_value()[:, :n]
        return ops.linformer_attention(q, k, v, e, f, mask=mask)

    def empty_state(self, batch, max_length):
        raise ValueError(
            "attention='linformer' has no incremental decoding (E and F mix all positions); "
            "decode with attention='softmax' or 'linear'"
        )


ATTENTION_CLASSES = {  # the 2020 kinds; research.models.layers.make_attention adds the rest
    "softmax": SoftmaxAttention,
    "linear": LinearAttention,
    "linformer": LinformerAttention,
}
