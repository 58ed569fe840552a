"""Task losses: loss_fn(model, batch) -> (loss_sum, weight_sum, {metric: sum})."""

import jax.numpy as jnp

from research import ops
from research.models import DecoderLM


def lm_loss(model, batch: dict):
    """Next-token LM. batch: inputs, targets [B, L] int, weights [B, L] float (0 = padding),
    optional segment_ids [B, L]. Metrics: correct (weighted count of argmax hits)."""
    logits = model(batch["inputs"], segment_ids=batch.get("segment_ids"))
    loss_sum, weight_sum = ops.cross_entropy(logits, batch["targets"], mask=batch["weights"])
    hits = (jnp.argmax(logits, axis=-1) == batch["targets"]) * batch["weights"]
    return loss_sum, weight_sum, {"correct": jnp.sum(hits)}


# MQAR batches carry weight 1 only at query positions, so the LM loss is the recall loss and
# its accuracy is MQAR accuracy (Zoology, Arora et al. 2023).
TASKS = {"lm": lm_loss, "mqar": lm_loss}
# The model class each task trains.
TASK_MODELS = {"lm": DecoderLM, "mqar": DecoderLM}
