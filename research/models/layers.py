"""Transformer building blocks as Flax NNX modules. They only compose `research.ops`.

Every parameter carries `logical_axes` metadata (vocab, embed, heads, kv, mlp, or None), which
the training system maps to mesh axes through one table of rules.

Decoding caches are plain pytrees, so they pass through `jax.jit` and `lax.while_loop`:
  {"index": [B] int32 next position, "valid": [B, T] bool written (real) positions,
   "layers": [per-layer dict]}; a softmax self-attention layer holds {"k", "v"}: [B, T, Hkv, D],
  a linear one a `LinearAttentionState`; cross-attention holds the encoder's {"k", "v", "mask"}.
  With `short_conv` = K > 0 a self-attention layer holds {"attn": that cache, "conv": [B, K-1,
  d_model] the last K-1 inputs}.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from research import ops
from research.models.config import ModelConfig
from research.ops import feature_maps as fm


def axes(*names):
    """Metadata naming the logical axes of a parameter."""
    return {"logical_axes": names}


class FavorProjection(nnx.Variable):
    """Fixed FAVOR+ random projection: a variable that is neither trained nor decayed."""


def _linear(cfg: ModelConfig, n_in: int, n_out: int, in_axis, out_axis, rngs, bias=None):
    use_bias = cfg.use_bias if bias is None else bias
    return nnx.Linear(
        n_in, n_out, use_bias=use_bias, dtype=jnp.dtype(cfg.dtype), rngs=rngs,
        kernel_init=nnx.initializers.normal(0.02),
        kernel_metadata=axes(in_axis, out_axis), bias_metadata=axes(out_axis),
    )  # fmt: skip


def layer_norm(cfg: ModelConfig, rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        cfg.d_model, epsilon=cfg.layer_norm_eps, dtype=jnp.dtype(cfg.dtype), rngs=rngs,
        scale_metadata=axes("embed"), bias_metadata=axes("embed"),
    )  # fmt: skip


ACTIVATION_FNS = {
    "gelu": functools.partial(ops.gelu, approximate="none"),
    "gelu_tanh": functools.partial(ops.gelu, approximate="tanh"),
    "gelu_sigmoid": functools.partial(ops.gelu, approximate="sigmoid"),
    "relu": jax.nn.relu,
}


def causal_conv(x, w, history=None):
    """Depthwise causal convolution over time: y_t = sum_s w[s] * x_{t-s}.

    x [B, L, d], w [K, d], history [B, K-1, d]: the K-1 inputs before x (zeros if None). -> y [B,
    L, d] in x's dtype."""
    k = w.shape[0]
    full = _after_history(x, history, k)
    w = w.astype(x.dtype)
    return sum(w[s] * full[:, k - 1 - s : k - 1 - s + x.shape[1]] for s in range(k))


def _after_history(x, history, k: int):
    """[history; x] along time: x [B, L, d] preceded by its K-1 earlier inputs (zeros if None)."""
    if history is None:
        history = jnp.zeros((x.shape[0], k - 1, x.shape[2]), x.dtype)
    return jnp.concatenate([history.astype(x.dtype), x], axis=1)


def _conv_history(x, lengths, k: int):
    """The K-1 inputs before position lengths[b] of each row of x [B, L, d] (zeros before 0)."""
    full = _after_history(x, None, k)
    return jax.vmap(lambda f, n: jax.lax.dynamic_slice_in_dim(f, n, k - 1, 0))(full, lengths)


class MultiHeadAttention(nnx.Module):
    """Multi-head self- or cross-attention; `cfg.attention` selects the `research.ops` function.

    x [B, L, d_model] -> [B, L, d_model]. Self-attention may be causal; cross-attention attends
    to `context` [B, S, d_model] and is never causal.
    """

    def __init__(self, cfg: ModelConfig, *, causal: bool, cross: bool = False, rngs: nnx.Rngs):
        if causal and cfg.attention == "linformer":
            raise ValueError(
                "attention='linformer' cannot be causal (E and F mix all positions); "
                "use it only in bidirectional encoders"
            )
        if causal and cfg.attention == "linear" and cfg.feature_map == "softmax":
            raise ValueError(
                "feature_map='softmax' (Efficient Attention) cannot be causal; choose elu, relu, "
                "taylor or favor for decoders"
            )
        self.cfg, self.causal, self.cross = cfg, causal, cross
        d, h, hk, dh = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_dim
        self.q = _linear(cfg, d, h * dh, "embed", "heads", rngs)
        self.k = _linear(cfg, d, hk * dh, "embed", "kv", rngs)
        self.v = _linear(cfg, d, hk * dh, "embed", "kv", rngs)
        self.o = _linear(cfg, h * dh, d, "heads", "embed", rngs)
        if cfg.attention == "linformer":
            init = nnx.initializers.normal(cfg.max_length**-0.5)
            shape = (cfg.linformer_k, cfg.max_length)
            self.e = nnx.Param(init(rngs.params(), shape), **axes(None, None))
            self.f = nnx.Param(init(rngs.params(), shape), **axes(None, None))
        if cfg.attention == "linear" and cfg.feature_map == "favor":
            w = fm.favor_projection(rngs.params(), cfg.favor_features, dh)
            self.favor = FavorProjection(w, **axes(None, None))
        self.short_conv = 0 if cross else cfg.short_conv
        if self.short_conv:
            # Identity at lag 0 plus small random lags: training starts near the plain model.
            w = 0.02 * jax.random.normal(rngs.params(), (self.short_conv, d))
            self.key_conv = nnx.Param(w.at[0].add(1.0), **axes(None, "embed"))

    # -- helpers ---------------------------------------------------------------------------
    def _heads(self, x, proj, n):
        return proj(x).reshape(*x.shape[:2], n, self.cfg.head_dim)

    def _qkv(self, x, context, positions, history=None):
        cfg = self.cfg
        src = x if context is None else context
        q = self._heads(x, self.q, cfg.num_heads)
        ksrc = causal_conv(src, self.key_conv.get_value(), history) if self.short_conv else src
        k, v = self._heads(ksrc, self.k, cfg.kv_heads), self._heads(src, self.v, cfg.kv_heads)
        if cfg.positions == "rotary" and not self.cross:
            q = ops.apply_rotary(q, positions, base=cfg.rope_base)
            k = ops.apply_rotary(k, positions, base=cfg.rope_base)
        return q, k, v

    def feature_map(self):
        cfg = self.cfg
        return fm.favor(self.favor.get_value()) if cfg.feature_map == "favor" else cfg.feature_map

    def _attend(self, q, k, v, mask, causal):
        cfg = self.cfg
        if cfg.attention == "softmax":
            return ops.softmax_attention(
                q, k, v, causal=causal, mask=mask, implementation=cfg.softmax_implementation
            )
        if mask is not None and mask.ndim != 2:
            raise ValueError(
                f"attention={cfg.attention!r} takes only key-padding masks [batch, length]; a full "
                f"mask of shape {mask.shape} (UniLM, packing) needs attention='softmax'"
            )
        if cfg.attention == "linear":
            return ops.linear_attention(
                q, k, v, feature_map=self.feature_map(), causal=causal, mask=mask,
                form=cfg.linear_form, chunk_size=cfg.chunk_size,
            )  # fmt: skip
        n = k.shape[1]
        e, f = self.e.get_value()[:, :n], self.f.get_value()[:, :n]
        return ops.linformer_attention(q, k, v, e, f, mask=mask)

    def _out(self, o):
        return self.o(o.reshape(*o.shape[:2], -1))

    # -- full sequence -------------------------------------------------------------------------
    def __call__(self, x, *, mask=None, positions=None, context=None):
        """mask: key-padding [B, S] or full [B, 1|H, L, S] (True = attend)."""
        q, k, v = self._qkv(x, context, positions)
        return self._out(self._attend(q, k, v, mask, self.causal))

    # -- decoding ------------------------------------------------------------------------------
    def init_cache(self, batch: int, max_length: int):
        cfg = self.cfg
        if cfg.attention == "linear":
            fdim = fm.feature_dim(self.feature_map(), cfg.head_dim)
            cache = ops.linear_attention_init_state(batch, cfg.num_heads, fdim, cfg.head_dim)
        else:
            shape = (batch, max_length, cfg.kv_heads, cfg.head_dim)
            cache = {"k": jnp.zeros(shape, jnp.float32), "v": jnp.zeros(shape, jnp.float32)}
        if not self.short_conv:
            return cache
        history = jnp.zeros((batch, self.short_conv - 1, cfg.d_model), jnp.dtype(cfg.dtype))
        return {"attn": cache, "conv": history}

    def prefill(self, x, layer_cache, *, mask, valid, positions):
        """Full forward over a prompt x [B, P, d] that also fills this layer's cache.

        `mask` is what the full forward uses; `valid` [B, P] marks real prompt tokens.
        """
        inner = layer_cache["attn"] if self.short_conv else layer_cache
        out, cache = self._prefill(x, inner, mask, valid, positions)
        if not self.short_conv:
            return out, cache
        lengths = jnp.sum(valid, axis=1).astype(jnp.int32)
        return out, {"attn": cache, "conv": _conv_history(x, lengths, self.short_conv)}

    def _prefill(self, x, layer_cache, mask, valid, positions):
        q, k, v = self._qkv(x, None, positions)
        out = self._out(self._attend(q, k, v, mask, self.causal))
        if self.cfg.attention == "linear":
            rep = self.cfg.num_heads // self.cfg.kv_heads
            k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
            return out, ops.linear_attention_state(k, v, feature_map=self.feature_map(), mask=valid)
        p = x.shape[1]
        cache = {name: layer_cache[name].at[:, :p].set(t) for name, t in (("k", k), ("v", v))}
        return out, cache

    def decode(self, x_t, layer_cache, *, index, valid):
        """One token x_t [B, 1, d] at positions `index` [B]; `valid` [B, T] includes this token."""
        if not self.short_conv:
            return self._decode(x_t, layer_cache, None, index, valid)
        history = layer_cache["conv"]
        out, cache = self._decode(x_t, layer_cache["attn"], history, index, valid)
        window = _after_history(x_t.astype(history.dtype), history, self.short_conv)
        return out, {"attn": cache, "conv": window[:, 1:]}

    def _decode(self, x_t, layer_cache, history, index, valid):
        cfg = self.cfg
        q, k, v = self._qkv(x_t, None, index[:, None], history)
        if cfg.attention == "linear":
            rep = cfg.num_heads // cfg.kv_heads
            k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
            state, o = ops.linear_attention_step(
                layer_cache, q[:, 0], k[:, 0], v[:, 0], feature_map=self.feature_map()
            )
            return self._out(o[:, None]), state
        rows = jnp.arange(x_t.shape[0])
        cache = {
            "k": layer_cache["k"].at[rows, index].set(k[:, 0].astype(jnp.float32)),
            "v": layer_cache["v"].at[rows, index].set(v[:, 0].astype(jnp.float32)),
        }
        o = ops.softmax_attention(q, cache["k"].astype(q.dtype), cache["v"].astype(q.dtype),
                                  mask=valid)  # fmt: skip
        return self._out(o), cache

    def cross_cache(self, context, context_mask):
        """Encoder keys/values computed once per decode: {"k", "v": [B, S, Hkv, D], "mask"}."""
        k = self._heads(context, self.k, self.cfg.kv_heads)
        v = self._heads(context, self.v, self.cfg.kv_heads)
        mask = jnp.ones(context.shape[:2], bool) if context_mask is None else context_mask
        return {"k": k, "v": v, "mask": mask}

    def decode_cross(self, x_t, cross_cache):
        q = self._heads(x_t, self.q, self.cfg.num_heads)
        o = self._attend(q, cross_cache["k"], cross_cache["v"], cross_cache["mask"], False)
        return self._out(o)


class FeedForward(nnx.Module):
    """Position-wise feed-forward: W_o act(W_i x), or W_o (silu(W_g x) * W_i x) for swiglu."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.activation = cfg.activation
        self.wi = _linear(cfg, cfg.d_model, cfg.d_ff, "embed", "mlp", rngs)
        if cfg.activation == "swiglu":
            self.wg = _linear(cfg, cfg.d_model, cfg.d_ff, "embed", "mlp", rngs)
        self.wo = _linear(cfg, cfg.d_ff, cfg.d_model, "mlp", "embed", rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, x):
        h = self.wi(x)
        if self.activation == "swiglu":
            h = jax.nn.silu(self.wg(x)) * h
        else:
            h = ACTIVATION_FNS[self.activation](h)
        return self.wo(self.dropout(h))


class Block(nnx.Module):
    """Transformer layer: self-attention, optional cross-attention, feed-forward.

    pre-LN: x + f(LN(x)) (GPT-2); post-LN: LN(x + f(x)) (BERT, the original Transformer).
    """

    def __init__(self, cfg: ModelConfig, *, causal: bool, cross: bool = False, rngs: nnx.Rngs):
        self.pre = cfg.norm == "pre"
        self.attn = MultiHeadAttention(cfg, causal=causal, rngs=rngs)
        self.attn_norm = layer_norm(cfg, rngs)
        self.cross_attn = (
            MultiHeadAttention(cfg, causal=False, cross=True, rngs=rngs) if cross else None
        )
        self.cross_norm = layer_norm(cfg, rngs) if cross else None
        self.ffn = FeedForward(cfg, rngs=rngs)
        self.ffn_norm = layer_norm(cfg, rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def _residual(self, x, fn, norm):
        if self.pre:
            return x + self.dropout(fn(norm(x)))
        return norm(x + self.dropout(fn(x)))

    def __call__(self, x, *, mask=None, positions=None, context=None, context_mask=None):
        x = self._residual(
            x, lambda h: self.attn(h, mask=mask, positions=positions), self.attn_norm
        )
        if self.cross_attn is not None:
            fn = lambda h: self.cross_attn(h, mask=context_mask, context=context)  # noqa: E731
            x = self._residual(x, fn, self.cross_norm)
        return self._residual(x, self.ffn, self.ffn_norm)

    def prefill(self, x, layer_cache, *, mask, valid, positions):
        new = {}

        def attn(h):
            out, new["self"] = self.attn.prefill(
                h, layer_cache["self"], mask=mask, valid=valid, positions=positions
            )
            return out

        x = self._residual(x, attn, self.attn_norm)
        return self._residual(x, self.ffn, self.ffn_norm), new

    def decode(self, x_t, layer_cache, *, index, valid):
        new = dict(layer_cache)

        def attn(h):
            out, new["self"] = self.attn.decode(h, layer_cache["self"], index=index, valid=valid)
            return out

        x_t = self._residual(x_t, attn, self.attn_norm)
        if self.cross_attn is not None:
            fn = lambda h: self.cross_attn.decode_cross(h, layer_cache["cross"])  # noqa: E731
            x_t = self._residual(x_t, fn, self.cross_norm)
        return self._residual(x_t, self.ffn, self.ffn_norm), new


class Embeddings(nnx.Module):
    """Token + position (learned or sinusoidal) + segment embeddings; LN after them if post-LN.

    tokens [B, L] int, positions [B, L] int, segment_ids [B, L] int -> [B, L, d_model].
    Rotary positions are applied inside attention instead.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        init = nnx.initializers.normal(0.02)
        dtype = jnp.dtype(cfg.dtype)
        self.token = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, embedding_init=init,
                               embedding_metadata=axes("vocab", "embed"), rngs=rngs)  # fmt: skip

        def table(n):
            return nnx.Embed(n, cfg.d_model, dtype=dtype, embedding_init=init,
                             embedding_metadata=axes(None, "embed"), rngs=rngs)  # fmt: skip

        self.position = table(cfg.max_length) if cfg.positions == "learned" else None
        self.segment = table(cfg.num_segments) if cfg.num_segments else None
        self.norm = layer_norm(cfg, rngs) if cfg.norm == "post" else None
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, tokens, positions, segment_ids=None, delta=None):
        """delta [V, d_model]: added to the token table for this lookup only (embedding
        perturbations: research.ops.exposure_bias); the tied output projection is unchanged."""
        cfg = self.cfg
        x = self.token(tokens)
        if delta is not None:
            x = x + delta[tokens].astype(x.dtype)
        if cfg.positions == "learned":
            x = x + self.position(positions)
        elif cfg.positions == "sinusoidal":
            table = ops.sinusoidal_positions(cfg.max_length, cfg.d_model)
            x = x + table[positions].astype(x.dtype)
        if self.segment is not None:
            seg = jnp.zeros_like(tokens) if segment_ids is None else segment_ids
            x = x + self.segment(seg)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)

    def logits(self, h):
        """Tied output projection h [B, L, d] -> fp32 logits [B, L, V]."""
        return self.token.attend(h).astype(jnp.float32)
