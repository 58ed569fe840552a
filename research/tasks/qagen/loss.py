"""The qagen loss on `research.data.qa_rows` rows: the cross-entropy of the segment-1 tokens."""

import jax.numpy as jnp

from research import ops


def make_qagen_loss(max_targets: int):
    """loss_fn on qagen rows: cross-entropy of the segment-1 tokens; the MLM head runs only at
    the `max_targets` (= answer_len + question_len + 2) positions that predict them."""

    def loss(model, batch: dict, *, key=None, step=None):
        w = batch["weights"]
        at = jnp.argsort(-w, axis=-1, stable=True)[:, :max_targets]
        weights = jnp.take_along_axis(w, at, axis=1)
        targets = jnp.take_along_axis(batch["targets"], at, axis=1)
        logits = model(
            batch["inputs"],
            segment_ids=batch["segment_ids"],
            mask=batch["mask"],
            unilm=True,
            predict_at=at,
        ).logits
        loss_sum, weight_sum = ops.cross_entropy(logits, targets, mask=weights)
        hits = (jnp.argmax(logits, axis=-1) == targets) * weights
        return loss_sum, weight_sum, {"correct": jnp.sum(hits)}

    return loss
