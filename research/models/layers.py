"""Transformer building blocks as Flax NNX modules. They only compose `research.ops`.

Every parameter carries `logical_axes` metadata (vocab, embed, heads, kv, mlp, or None), which
the training system maps to mesh axes through one table of rules.

Decoding caches are plain pytrees, so they pass through `jax.jit` and `lax.while_loop`:
  {"index": [B] int32 next position, "valid": [B, T] bool written (real) positions,
   "layers": [per-layer dict]}; each layer holds {"self": its self-attention's cache} and, in an
  encoder-decoder, {"cross": the encoder's keys/values}; `research.models.attention` describes
  them. With scanned layers (`scan_layers`) "layers" is one such dict whose leaves are
  [B, n_layers, ...] (`research.models.stack`).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from research import ops
from research.models.attention import (
    ATTENTION_CLASSES,
    FavorProjection,
    axes,
    causal_conv,
    dense,
)
from research.models.config import ModelConfig
from research.models.partitioning import (
    BATCH,
    EMBED,
    LENGTH,
    MLP,
    REMAT_POLICIES,
    VOCAB,
    constrain,
    tag,
)
from research.models.recurrent_attention import RECURRENT_CLASSES

__all__ = [
    "ACTIVATION_FNS",
    "Block",
    "Embeddings",
    "FavorProjection",
    "FeedForward",
    "axes",
    "call_layer",
    "causal_conv",
    "dense",
    "layer_norm",
    "make_attention",
    "vocab_logits",
]


def make_attention(cfg: ModelConfig, *, causal: bool, cross: bool = False, rngs: nnx.Rngs):
    """The attention module for `cfg.attention`; ValueError for a kind that cannot be causal
    (linformer) or can only be (the gated / delta kinds)."""
    cls = {**ATTENTION_CLASSES, **RECURRENT_CLASSES}[cfg.attention]
    return cls(cfg, causal=causal, cross=cross, rngs=rngs)


def layer_norm(cfg: ModelConfig, rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        cfg.d_model,
        epsilon=cfg.layer_norm_eps,
        dtype=jnp.dtype(cfg.dtype),
        rngs=rngs,
        scale_metadata=axes("embed"),
        bias_metadata=axes("embed"),
    )


ACTIVATION_FNS = {
    "gelu": functools.partial(ops.gelu, approximate="none"),
    "gelu_tanh": functools.partial(ops.gelu, approximate="tanh"),
    "gelu_sigmoid": functools.partial(ops.gelu, approximate="sigmoid"),
    "relu": jax.nn.relu,
}


class FeedForward(nnx.Module):
    """Position-wise feed-forward: W_o act(W_i x), or W_o (silu(W_g x) * W_i x) for swiglu."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.activation = cfg.activation
        self.wi = dense(cfg, cfg.d_model, cfg.d_ff, "embed", "mlp", rngs)
        if cfg.activation == "swiglu":
            self.wg = dense(cfg, cfg.d_model, cfg.d_ff, "embed", "mlp", rngs)
        self.wo = dense(cfg, cfg.d_ff, cfg.d_model, "mlp", "embed", rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, x):
        h = tag(self.wi(x), "mlpwi", BATCH, LENGTH, MLP)
        if self.activation == "swiglu":
            h = jax.nn.silu(tag(self.wg(x), "mlpwi", BATCH, LENGTH, MLP)) * h
        else:
            h = ACTIVATION_FNS[self.activation](h)
        return tag(self.wo(self.dropout(h)), "mlpwo", BATCH, LENGTH, EMBED)


class Block(nnx.Module):
    """Transformer layer: self-attention, optional cross-attention, feed-forward.

    pre-LN: x + f(LN(x)) (GPT-2); post-LN: LN(x + f(x)) (BERT, the original Transformer).
    """

    def __init__(self, cfg: ModelConfig, *, causal: bool, cross: bool = False, rngs: nnx.Rngs):
        self.pre = cfg.norm == "pre"
        self.attn = make_attention(cfg, causal=causal, rngs=rngs)
        self.attn_norm = layer_norm(cfg, rngs)
        self.cross_attn = (
            make_attention(cfg, causal=False, cross=True, rngs=rngs) if cross else None
        )
        self.cross_norm = layer_norm(cfg, rngs) if cross else None
        self.ffn = FeedForward(cfg, rngs=rngs)
        self.ffn_norm = layer_norm(cfg, rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def _residual(self, x, fn, norm):
        if self.pre:
            x = x + self.dropout(fn(norm(x)))
        else:
            x = norm(x + self.dropout(fn(x)))
        return constrain(x, BATCH, LENGTH, EMBED)  # the residual stream

    def __call__(
        self, x, *, mask=None, positions=None, context=None, context_mask=None, document_ids=None
    ):
        def attn(h):
            return self.attn(h, mask=mask, positions=positions, document_ids=document_ids)

        x = self._residual(x, attn, self.attn_norm)
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
        self.token = nnx.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=dtype,
            embedding_init=init,
            embedding_metadata=axes("vocab", "embed"),
            rngs=rngs,
        )

        def table(n):
            return nnx.Embed(
                n,
                cfg.d_model,
                dtype=dtype,
                embedding_init=init,
                embedding_metadata=axes(None, "embed"),
                rngs=rngs,
            )

        self.position = table(cfg.max_length) if cfg.positions == "learned" else None
        self.segment = table(cfg.num_segments) if cfg.num_segments else None
        self.norm = layer_norm(cfg, rngs) if cfg.norm == "post" else None
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, tokens, positions, segment_ids=None, delta=None):
        """delta perturbs the token embeddings (research.ops.exposure_bias): [V, d_model] is
        added to the token table for this lookup only (the tied output projection is
        unchanged); [B, L, d_model] is added after the lookup, one row per position."""
        cfg = self.cfg
        x = self.token(tokens)
        if delta is not None:
            per_position = delta.ndim == 3
            x = x + (delta if per_position else delta[tokens]).astype(x.dtype)
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
        return constrain(self.dropout(x), BATCH, LENGTH, EMBED)

    def logits(self, h):
        """Tied output projection h [B, L, d] -> fp32 logits [B, L, V]."""
        return vocab_logits(self.token.attend(h).astype(jnp.float32))


def vocab_logits(logits):
    """Logits [B, L, V] with the vocabulary dim sharded (other ranks pass through)."""
    return constrain(logits, BATCH, LENGTH, VOCAB) if logits.ndim == 3 else logits


def call_layer(cfg: ModelConfig, layer, x, **kwargs):
    """layer(x, **kwargs), rematerialised in the backward pass by `cfg.remat`'s policy."""
    if cfg.remat == "none":
        return layer(x, **kwargs)
    policy = REMAT_POLICIES[cfg.remat]
    return nnx.remat(lambda m, h, kw: m(h, **kw), policy=policy)(layer, x, kwargs)
