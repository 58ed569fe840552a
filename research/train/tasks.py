"""Tasks: which model a config trains and its loss_fn(model, batch, *, key, step)."""

import dataclasses

import jax.numpy as jnp

from research import ops
from research.models import Bert, DecoderLM, EncoderDecoder


def lm_loss(model, batch: dict, *, key=None, step=None):
    """Next-token LM. batch: inputs, targets [B, L] int, weights [B, L] float (0 = padding),
    optional segment_ids [B, L]. Metrics: correct (weighted count of argmax hits)."""
    logits = model(batch["inputs"], segment_ids=batch.get("segment_ids"))
    loss_sum, weight_sum = ops.cross_entropy(logits, batch["targets"], mask=batch["weights"])
    hits = (jnp.argmax(logits, axis=-1) == batch["targets"]) * batch["weights"]
    return loss_sum, weight_sum, {"correct": jnp.sum(hits)}


# MQAR batches carry weight 1 only at query positions, so the LM loss is the recall loss and
# its accuracy is MQAR accuracy (Zoology, Arora et al. 2023).
TASKS = ("lm", "mqar", "seq2seq")


def model_class(c):
    if c.task == "seq2seq":
        return EncoderDecoder if c.seq2seq.layout == "encdec" else Bert
    return DecoderLM


def adapt_model_config(c, mcfg):
    """Task-specific model fields: UniLM needs two segments and the MLM head."""
    if c.task == "seq2seq" and c.seq2seq.layout == "unilm":
        return dataclasses.replace(mcfg, num_segments=2, mlm_head=True)
    return mcfg


def make_loss(c, *, vocab=None):
    """The loss_fn of config `c` (seq2seq needs the data's vocabulary: ids of pad/bos/eos)."""
    if c.task in ("lm", "mqar"):
        return lm_loss
    from research.train import seq2seq

    return seq2seq.make_loss(c, vocab.size, vocab.bos, vocab.eos, vocab.pad, c.model.d_model)
