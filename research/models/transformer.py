"""The three model families: DecoderLM (GPT-style), Bert (MLM; UniLM seq2seq mode), EncoderDecoder.

All take int tokens [B, L] and return fp32 logits [..., vocab]. Decoding goes through
`prefill(...) -> (next-token logits [B, V], cache)` and
`decode_step(token [B], cache) -> (logits [B, V], cache)`; see `research.ops.decoding`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from research import ops
from research.models import stack
from research.models.config import ModelConfig
from research.models.layers import (
    ACTIVATION_FNS,
    Embeddings,
    axes,
    dense,
    layer_norm,
    vocab_logits,
)


def _check_inputs(cfg: ModelConfig, tokens, segment_ids=None, mask=None, name="tokens"):
    if jnp.ndim(tokens) != 2 or not jnp.issubdtype(jnp.asarray(tokens).dtype, jnp.integer):
        raise ValueError(f"{name} must be int [batch, length], got {jnp.shape(tokens)}")
    length = tokens.shape[1]
    bounded = cfg.positions in ("learned", "sinusoidal") or cfg.attention == "linformer"
    if bounded and length > cfg.max_length:
        raise ValueError(f"{name} length {length} exceeds max_length={cfg.max_length}")
    if segment_ids is not None:
        if jnp.shape(segment_ids) != tokens.shape:
            raise ValueError(f"segment_ids shape {jnp.shape(segment_ids)} != {name} {tokens.shape}")
        if not cfg.num_segments:
            raise ValueError("segment_ids given but the model has num_segments=0")
    if mask is not None and (jnp.shape(mask) != tokens.shape or jnp.asarray(mask).dtype != bool):
        raise ValueError(
            f"mask must be bool {tokens.shape} (True = real token), got {jnp.shape(mask)}"
        )


def _positions(tokens, document_ids=None):
    """Positions [B, L]: 0, 1, ... along each row, restarting at each packed document."""
    index = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    if document_ids is None:
        return index
    if jnp.shape(document_ids) != tokens.shape or not jnp.issubdtype(
        jnp.asarray(document_ids).dtype, jnp.integer
    ):
        raise ValueError(
            f"document_ids must be int {tokens.shape} like tokens, got "
            f"{jnp.asarray(document_ids).dtype} {jnp.shape(document_ids)}"
        )
    starts = jnp.concatenate(
        [jnp.ones_like(document_ids[:, :1], bool), document_ids[:, 1:] != document_ids[:, :-1]],
        axis=1,
    )
    return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


def _empty_cache(layers, batch: int, max_length: int):
    return {
        "index": jnp.zeros((batch,), jnp.int32),
        "valid": jnp.zeros((batch, max_length), bool),
        "layers": stack.init_cache(layers, batch, max_length),
    }


def _check_cache_length(cfg: ModelConfig, max_length: int, prompt_length: int):
    if max_length < prompt_length + 1:
        raise ValueError(
            f"max_length {max_length} leaves no room after a prompt of {prompt_length}"
        )
    if cfg.positions in ("learned", "sinusoidal") and max_length > cfg.max_length:
        raise ValueError(f"decode max_length {max_length} exceeds the model's {cfg.max_length}")


class _Stack(nnx.Module):
    """Shared prefill/decode plumbing over `self.layers`; subclasses define `_logits`."""

    def init_cache(self, batch: int, max_length: int):
        return _empty_cache(self.layers, batch, max_length)

    def _prefill_prompt(self, tokens, lengths, segment_ids, max_length, unilm=False):
        """Prompt tokens [B, P], right-padded to `lengths` [B], attend with a key-padding mask
        (causal layers stay causal, bidirectional ones see the whole prompt), or with the UniLM
        mask of `segment_ids` when `unilm` (segment-1 prompt tokens causal)."""
        _check_inputs(self.cfg, tokens, segment_ids)
        _check_cache_length(self.cfg, max_length, tokens.shape[1])
        b, p = tokens.shape
        lengths = jnp.full((b,), p) if lengths is None else jnp.asarray(lengths)
        valid = jnp.arange(p)[None, :] < lengths[:, None]
        positions = _positions(tokens)
        x = self.embed(tokens, positions, segment_ids)
        cache = self.init_cache(b, max_length)
        mask = valid
        if unilm:
            if segment_ids is None:
                raise ValueError("unilm=True needs segment_ids (0 = source, 1 = target)")
            mask = ops.unilm_mask(segment_ids, valid)
        return self._prefill_layers(x, cache, mask=mask, valid=valid, positions=positions)

    def _prefill_layers(self, x, cache, *, mask, valid, positions):
        def prefill(layer, h, lc):
            h, new = layer.prefill(h, lc, mask=mask, valid=valid, positions=positions)
            return h, {**lc, **new}

        x, new_layers = stack.run_cached(self.layers, prefill, x, cache["layers"])
        lengths = jnp.sum(valid, axis=1).astype(jnp.int32)
        p = valid.shape[1]
        cache = {
            "index": lengths,
            "valid": cache["valid"].at[:, :p].set(valid),
            "layers": new_layers,
        }
        # The head only at each prompt's last token ([B, P, V] logits would be wasted).
        last = self._logits(x[jnp.arange(x.shape[0]), lengths - 1][:, None])[:, 0]
        return last, cache

    def _decode_layers(self, token, cache, segment):
        index = cache["index"]
        valid = cache["valid"].at[jnp.arange(token.shape[0]), index].set(True)
        seg = None if segment is None else jnp.broadcast_to(segment, token.shape)[:, None]
        x = self.embed(token[:, None], index[:, None], seg)
        x, new_layers = stack.run_cached(
            self.layers,
            lambda layer, h, lc: layer.decode(h, lc, index=index, valid=valid),
            x,
            cache["layers"],
        )
        logits = self._logits(x)[:, 0]
        return logits, {"index": index + 1, "valid": valid, "layers": new_layers}


class DecoderLM(_Stack):
    """GPT-style causal LM (Radford et al. 2019) with optional speaker segments (DialoGPT)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embeddings(cfg, rngs=rngs)
        self.layers = stack.make_layers(cfg, cfg.num_layers, causal=True, rngs=rngs)
        self.final_norm = layer_norm(cfg, rngs) if cfg.norm == "pre" else None
        self.lm_head = (
            None
            if cfg.tie_embeddings
            else dense(cfg, cfg.d_model, cfg.vocab_size, "embed", "vocab", rngs, False)
        )

    def hidden_states(self, tokens, *, segment_ids=None, mask=None, document_ids=None):
        """[B, L, d_model] after the last layer (and final norm for pre-LN)."""
        _check_inputs(self.cfg, tokens, segment_ids, mask)
        positions = _positions(tokens, document_ids)
        x = self.embed(tokens, positions, segment_ids)
        kw = {} if document_ids is None else {"document_ids": document_ids}
        x = stack.run_layers(self.cfg, self.layers, x, mask=mask, positions=positions, **kw)
        return x if self.final_norm is None else self.final_norm(x)

    def __call__(self, tokens, *, segment_ids=None, mask=None, document_ids=None):
        """tokens [B, L] -> logits [B, L, V]; mask [B, L] marks real tokens (padding is ignored);
        document_ids [B, L] int, non-decreasing: packed documents, each attending only to itself
        with positions restarting at its first token (every attention kind)."""
        h = self.hidden_states(
            tokens, segment_ids=segment_ids, mask=mask, document_ids=document_ids
        )
        return self._head(h)

    def _head(self, h):
        if self.lm_head is None:
            return self.embed.logits(h)
        return vocab_logits(self.lm_head(h).astype(jnp.float32))

    def _logits(self, x):
        return self._head(x if self.final_norm is None else self.final_norm(x))

    def prefill(self, tokens, *, lengths=None, segment_ids=None, max_length: int):
        """Runs prompts [B, P] (right-padded; `lengths` [B]) in parallel and fills the cache.

        Returns the logits for the token after each prompt [B, V] and the cache.
        """
        return self._prefill_prompt(tokens, lengths, segment_ids, max_length)

    def decode_step(self, token, cache, *, segment=None):
        """token [B] at position cache["index"] -> (logits [B, V], cache). segment: int or [B]."""
        return self._decode_layers(token, cache, segment)


class BertOutput(NamedTuple):
    hidden_states: jax.Array  # [B, L, d_model], the last layer
    logits: jax.Array | None  # [B, L, V] masked-LM logits (None without an MLM head)
    pooled: jax.Array | None  # [B, d_model] tanh(W h_[CLS]) (None without a pooler)
    class_logits: jax.Array | None = None  # [B, num_labels] fp32 (None without num_labels)


class Bert(_Stack):
    """BERT (Devlin et al. 2019): bidirectional encoder, segment embeddings, tied MLM head.

    `unilm=True` applies the UniLM seq2seq mask from segment ids (Dong et al. 2019): segment 0
    bidirectional, segment 1 causal and seeing all of segment 0 (`research.ops.unilm_mask`).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embeddings(cfg, rngs=rngs)
        self.layers = stack.make_layers(cfg, cfg.num_layers, causal=False, rngs=rngs)
        self.final_norm = layer_norm(cfg, rngs) if cfg.norm == "pre" else None
        head = cfg.mlm_head
        d = cfg.d_model
        self.mlm_transform = dense(cfg, d, d, "embed", "embed", rngs, True) if head else None
        self.mlm_norm = layer_norm(cfg, rngs) if head else None
        bias = nnx.Param(jnp.zeros((cfg.vocab_size,)), **axes("vocab"))
        self.mlm_bias = bias if head else None
        self.pooler = dense(cfg, d, d, "embed", "embed", rngs, True) if cfg.pooler else None
        # Classification (Devlin et al. 2019, section 4.1): softmax(W dropout(pooled) + b).
        labels = cfg.num_labels
        self.classifier = dense(cfg, d, labels, "embed", None, rngs, True) if labels else None
        self.classifier_dropout = nnx.Dropout(cfg.dropout, rngs=rngs) if labels else None

    def __call__(
        self,
        tokens,
        *,
        segment_ids=None,
        mask=None,
        unilm: bool = False,
        embedding_delta=None,
        predict_at=None,
    ) -> BertOutput:
        """tokens [B, L]; segment_ids [B, L]; mask [B, L] marks real tokens; embedding_delta
        [V, d_model] (table) or [B, L, d_model] (per position) perturbs the input token
        embeddings (see `Embeddings`). predict_at [B, K]
        int: MLM logits only at these positions, [B, K, V] (BERT's masked_lm_positions: the
        head's d_model x V matmul then costs K/L of the full one)."""
        x, attn_mask, positions = self.embed_inputs(
            tokens, segment_ids, mask, unilm, embedding_delta
        )
        x = stack.run_layers(self.cfg, self.layers, x, mask=attn_mask, positions=positions)
        return self.outputs(x, predict_at)

    def embed_inputs(self, tokens, segment_ids=None, mask=None, unilm=False, embedding_delta=None):
        """-> (embedded tokens [B, L, D], the layers' attention mask, positions [B, L])."""
        _check_inputs(self.cfg, tokens, segment_ids, mask)
        attn_mask = mask
        if unilm:
            if segment_ids is None:
                raise ValueError("unilm=True needs segment_ids (0 = source, 1 = target)")
            attn_mask = ops.unilm_mask(segment_ids, mask)
        positions = _positions(tokens)
        return self.embed(tokens, positions, segment_ids, embedding_delta), attn_mask, positions

    def outputs(self, x, predict_at=None) -> BertOutput:
        """The last layer's output [B, L, D] -> final norm, MLM logits, pooled [CLS], classes."""
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = None
        if self.mlm_transform is not None:
            at = x if predict_at is None else jnp.take_along_axis(x, predict_at[..., None], axis=1)
            logits = self.mlm_logits(at)
        pooled = jnp.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        class_logits = None
        if self.classifier is not None:
            class_logits = self.classifier(self.classifier_dropout(pooled)).astype(jnp.float32)
        return BertOutput(x, logits, pooled, class_logits)

    def mlm_logits(self, h):
        """Masked-LM head: LN(act(W h)) E^T + b -> fp32 [..., V] (tied to the token embedding)."""
        t = self.mlm_norm(
            ACTIVATION_FNS.get(self.cfg.activation, ACTIVATION_FNS["gelu"])(self.mlm_transform(h))
        )
        return self.embed.logits(t) + self.mlm_bias.get_value()

    def _logits(self, x):
        return self.mlm_logits(x if self.final_norm is None else self.final_norm(x))

    def prefill(
        self, tokens, *, lengths=None, segment_ids=None, unilm: bool = False, max_length: int
    ):
        """UniLM: encodes the source tokens [B, P] (segment 0, bidirectional) into the cache.

        With `unilm=True` the prompt may already hold target tokens: `segment_ids` [B, P] marks
        them 1 and they attend causally, as in training (`research.ops.unilm_mask`); question
        generation prefills [CLS] passage [SEP] answer [SEP] this way.
        Returns the MLM-head logits at each prompt's last token (predicting the next target
        token) and the cache; continue with `decode_step(..., segment=1)`.
        """
        if not self.cfg.mlm_head:
            raise ValueError("decoding with Bert needs mlm_head=True")
        return self._prefill_prompt(tokens, lengths, segment_ids, max_length, unilm)

    def decode_step(self, token, cache, *, segment=1):
        return self._decode_layers(token, cache, segment)


class EncoderDecoder(_Stack):
    """The classic seq2seq Transformer (Vaswani et al. 2017) with a shared, tied embedding."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if not cfg.tie_embeddings:  # it built no head of its own, silently
            raise ValueError(
                "tie_embeddings=False: an EncoderDecoder ties its output to the embedding"
            )
        self.cfg = cfg
        self.embed = Embeddings(cfg, rngs=rngs)
        self.encoder = stack.make_layers(cfg, cfg.num_layers, causal=False, rngs=rngs)
        self.layers = stack.make_layers(cfg, cfg.decoder_layers, causal=True, cross=True, rngs=rngs)
        pre = cfg.norm == "pre"
        self.encoder_norm = layer_norm(cfg, rngs) if pre else None
        self.final_norm = layer_norm(cfg, rngs) if pre else None

    def encode(self, src, *, src_mask=None, embedding_delta=None):
        """src [B, S] -> memory [B, S, d_model]."""
        _check_inputs(self.cfg, src, None, src_mask, name="src")
        positions = _positions(src)
        x = self.embed(src, positions, delta=embedding_delta)
        x = stack.run_layers(self.cfg, self.encoder, x, mask=src_mask, positions=positions)
        return x if self.encoder_norm is None else self.encoder_norm(x)

    def decode(self, memory, tgt, *, src_mask=None, tgt_mask=None, embedding_delta=None):
        """Teacher-forced decoder: tgt [B, T] (shifted right) -> logits [B, T, V]."""
        _check_inputs(self.cfg, tgt, None, tgt_mask, name="tgt")
        positions = _positions(tgt)
        x = self.embed(tgt, positions, delta=embedding_delta)
        x = stack.run_layers(
            self.cfg,
            self.layers,
            x,
            mask=tgt_mask,
            positions=positions,
            context=memory,
            context_mask=src_mask,
        )
        return self._logits(x)

    def __call__(self, src, tgt, *, src_mask=None, tgt_mask=None, embedding_delta=None):
        """embedding_delta perturbs the input embeddings (see `Embeddings`): one table delta
        [V, d_model] for source and target, or a pair (source [B, S, d_model], target
        [B, T, d_model]) added per position."""
        src_delta = tgt_delta = embedding_delta
        if isinstance(embedding_delta, tuple | list):
            src_delta, tgt_delta = embedding_delta
        memory = self.encode(src, src_mask=src_mask, embedding_delta=src_delta)
        return self.decode(
            memory, tgt, src_mask=src_mask, tgt_mask=tgt_mask, embedding_delta=tgt_delta
        )

    def _logits(self, x):
        return self.embed.logits(x if self.final_norm is None else self.final_norm(x))

    def prefill(self, src, *, src_mask=None, bos_id: int, max_length: int):
        """Encodes src, caches the cross-attention keys/values, and feeds BOS.

        Returns the logits for the first target token [B, V] and the cache.
        """
        _check_cache_length(self.cfg, max_length, 1)
        memory = self.encode(src, src_mask=src_mask)
        b = src.shape[0]
        cache = _empty_cache(self.layers, b, max_length)
        cross = stack.map_layers(
            self.layers, lambda layer: layer.cross_attn.cross_cache(memory, src_mask)
        )
        if stack.is_scanned(self.layers):
            cache["layers"]["cross"] = cross
        else:
            for lc, c in zip(cache["layers"], cross, strict=True):
                lc["cross"] = c
        return self.decode_step(jnp.full((b,), bos_id, jnp.int32), cache)

    def decode_step(self, token, cache):
        return self._decode_layers(token, cache, None)
