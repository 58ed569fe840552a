"""Teacher-forced forward passes for both layouts, and scoring a decoded sequence under the model.

encdec: `EncoderDecoder(src, inputs)`; unilm: one row [source, separator, target] through `Bert`
with the UniLM mask (Dong et al. 2019). Batches come from `research.data.seq2seq.seq2seq_example`.
"""

import jax.numpy as jnp

from research import ops
from research.ops import exposure_bias as eb


def forward(model, batch, inputs, delta=None, layout="encdec", pad=0):
    """Teacher-forced logits [B, T, V] for `inputs` (the gold or perturbed input tokens)."""
    if layout == "encdec":
        return model(
            batch["src"],
            inputs,
            src_mask=batch["src_mask"],
            tgt_mask=batch["weights"] > 0,
            embedding_delta=delta,
        )
    valid = (batch["weights"] > 0) | (batch["segment_ids"] == 0) & (inputs != pad)
    return model(
        inputs, segment_ids=batch["segment_ids"], mask=valid, unilm=True, embedding_delta=delta
    ).logits


def cross_entropy(model, batch, inputs, delta, layout, label_smoothing=0.0):
    """(loss_sum, weight_sum, {"correct"}) of the targets given `inputs`."""
    logits = forward(model, batch, inputs, delta, layout)
    s, w = ops.cross_entropy(
        logits, batch["targets"], mask=batch["weights"], label_smoothing=label_smoothing
    )
    hits = (jnp.argmax(logits, -1) == batch["targets"]) * batch["weights"]
    return s, w, {"correct": jnp.sum(hits)}


def as_teacher_forced(batch, tokens, layout, bos, eos, pad):
    """A batch whose targets are `tokens` [B, T] (cut after EOS), to score log p(tokens)."""
    b, t = tokens.shape
    # Up to and including the first EOS; the decoder writes pad only after it (a pad sampled
    # before EOS is a real, scored token).
    alive = jnp.cumsum(tokens == eos, axis=1) - (tokens == eos) == 0
    mask = alive.astype(jnp.float32)
    if layout == "encdec":
        inputs = jnp.concatenate([jnp.full((b, 1), bos, tokens.dtype), tokens[:, :-1]], axis=1)
        inputs = jnp.where(
            jnp.pad(mask[:, :-1], ((0, 0), (1, 0)), constant_values=1) > 0, inputs, pad
        )
        return {**batch, "inputs": inputs, "targets": tokens, "weights": mask}, inputs
    # unilm: [prompt, tokens] in one row; predictions for tokens start at the separator.
    p = batch["prompt_length"]
    width = batch["inputs"].shape[1]
    pos = jnp.arange(width)[None, :]
    rel = pos - p[:, None]  # index into tokens of the input at pos (for pos >= p)
    tok_in = jnp.take_along_axis(tokens, jnp.clip(rel, 0, t - 1), axis=1)
    in_mask = jnp.take_along_axis(mask, jnp.clip(rel, 0, t - 1), axis=1) > 0
    inputs = jnp.where(
        pos < p[:, None], batch["inputs"], jnp.where((rel < t) & in_mask, tok_in, pad)
    )
    rel_t = pos - p[:, None] + 1  # target at pos is tokens[pos - p + 1]
    tgt = jnp.take_along_axis(tokens, jnp.clip(rel_t, 0, t - 1), axis=1)
    w = jnp.take_along_axis(mask, jnp.clip(rel_t, 0, t - 1), axis=1)
    w = jnp.where((rel_t >= 0) & (rel_t < t), w, 0.0)
    seg = (pos >= p[:, None]).astype(jnp.int32)
    out = {
        **batch,
        "inputs": inputs,
        "targets": jnp.where(w > 0, tgt, pad),
        "weights": w,
        "segment_ids": seg,
    }
    return out, inputs


def sequence_log_prob(model, batch, tokens, layout, bos, eos, pad):
    """log p(tokens | source) [B] under teacher forcing, tokens [B, T] cut after EOS."""
    tf, inputs = as_teacher_forced(batch, tokens, layout, bos, eos, pad)
    logits = forward(model, tf, inputs, None, layout)
    return eb.sequence_log_prob(logits, tf["targets"], tf["weights"])


def references(batch, eos, pad):
    """Gold target ids [B, T] without EOS (the reward's reference)."""
    t = jnp.where(batch["weights"] > 0, batch["targets"], pad)
    return without_eos(t, eos, pad)


def without_eos(tokens, eos, pad):
    """tokens with EOS as padding: a decode as the reward scores it against `references` (an
    output that stopped carried one token no reference has, so a perfect one scored below 1)."""
    return jnp.where(tokens == eos, pad, tokens)
