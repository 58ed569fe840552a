"""PET: classification as a cloze question (Schick & Schütze 2020, "Exploiting Cloze Questions for
Few Shot Text Classification and Natural Language Inference", arXiv:2001.07676).

A pattern turns the input into a text with S [MASK] slots (research.data.patterns); a verbalizer
maps each label y to S tokens v(y)_1..v(y)_S, one per slot. A masked LM then scores a label by the
log-probabilities of its tokens at the slots:

  score(y | x) = sum_s log softmax(mlm_logits[mask_positions[s]])[v(y)_s]

The paper's classification loss, cross-entropy over labels of softmax_y score(y | x), is
`research.ops.cross_entropy(label_scores(...), labels)`: the log-normaliser of each slot is the
same for every label, so normalising over labels cancels it. `pet_loss` is the MLM loss at the
slots instead: the label's verbalizer tokens are the targets, normalised over the vocabulary.
"""

# jaxtyping shape strings ("B L V") are not forward references.

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def _check_integer(name: str, x) -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{name} must have an integer dtype (indices), got {dtype}")


def _check_shapes(mlm_logits, mask_positions, verbalizer_ids) -> None:
    """Static checks on ranks, dtypes and sizes, before anything is traced."""
    logits_shape, pos_shape, ids_shape = map(
        jnp.shape, (mlm_logits, mask_positions, verbalizer_ids)
    )
    if len(logits_shape) != 3:
        raise ValueError(f"mlm_logits must be [batch, length, vocab], got shape {logits_shape}")
    if len(pos_shape) != 2:
        raise ValueError(f"mask_positions must be [batch, slots], got shape {pos_shape}")
    if len(ids_shape) != 2:
        raise ValueError(f"verbalizer_ids must be [num_labels, slots], got shape {ids_shape}")
    _check_integer("mask_positions", mask_positions)
    _check_integer("verbalizer_ids", verbalizer_ids)
    if pos_shape[0] != logits_shape[0]:
        raise ValueError(
            f"mask_positions batch {pos_shape[0]} must equal mlm_logits batch {logits_shape[0]}"
        )
    if ids_shape[1] != pos_shape[1]:
        raise ValueError(
            f"verbalizer_ids has {ids_shape[1]} tokens per label but mask_positions has "
            f"{pos_shape[1]} slots; each label needs one token per slot"
        )


def label_scores(
    mlm_logits: Float[Array, "B L V"],
    mask_positions: Int[Array, "B S"],
    verbalizer_ids: Int[Array, "Y S"],
) -> Float[Array, "B Y"]:
    """PET label scores (Schick & Schütze 2020): summed MLM log-probabilities of each label's
    verbalizer tokens at the [MASK] slots.

      score[b, y] = sum_s log_softmax(mlm_logits[b, mask_positions[b, s]])[verbalizer_ids[y, s]]

    mlm_logits [B, L, V] (any float dtype; computed in fp32), mask_positions [B, S] the slot
    positions of each row, verbalizer_ids [Y, S] one token per label and slot. Returns fp32
    [B, Y]. Indices are not range-checked (they may be traced): an out-of-range one gives NaN,
    a negative one counts from the end as in NumPy.
    """
    _check_shapes(mlm_logits, mask_positions, verbalizer_ids)
    positions = jnp.asarray(mask_positions, jnp.int32)
    ids = jnp.asarray(verbalizer_ids, jnp.int32)
    # Normalise only the S slot rows, not all L positions: [B, S, V].
    slots = jnp.take_along_axis(jnp.asarray(mlm_logits), positions[:, :, None], axis=1)
    log_p = jax.nn.log_softmax(slots.astype(jnp.float32), axis=-1)
    # log_p[b, s, ids[y, s]] -> [B, S, Y], then sum over the slots.
    targets = jnp.broadcast_to(ids.T[None], (log_p.shape[0], *ids.T.shape))
    return jnp.sum(jnp.take_along_axis(log_p, targets, axis=-1), axis=1)


def pet_loss(
    mlm_logits: Float[Array, "B L V"],
    mask_positions: Int[Array, "B S"],
    verbalizer_ids: Int[Array, "Y S"],
    labels: Int[Array, " B"],
    weights: Float[Array, " B"] | None = None,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """MLM loss at the slots with the label's verbalizer tokens as targets (PET, Schick & Schütze
    2020), as (loss_sum, weight_sum) like `research.ops.losses`.

      loss_sum = -sum_b w_b sum_s log p(verbalizer_ids[labels[b], s] at mask_positions[b, s])
               = -sum_b w_b score[b, labels[b]],   weight_sum = sum_b w_b

    Shapes as in `label_scores`; labels [B] int in [0, Y) (not range-checked here: check them on
    the host with research.data.patterns.check_labels), weights [B] (default all ones). The mean
    per example is loss_sum / weight_sum after summing both over devices. Two fp32 scalars.
    """
    _check_shapes(mlm_logits, mask_positions, verbalizer_ids)
    _check_integer("labels", labels)
    b = jnp.shape(mlm_logits)[0]
    if jnp.shape(labels) != (b,):
        raise ValueError(f"labels must be [batch={b}], got shape {jnp.shape(labels)}")
    if weights is not None and jnp.shape(weights) != (b,):
        raise ValueError(f"weights must be [batch={b}], got shape {jnp.shape(weights)}")
    scores = label_scores(mlm_logits, mask_positions, verbalizer_ids)
    labels = jnp.asarray(labels, jnp.int32)
    nll = -jnp.take_along_axis(scores, labels[:, None], axis=1)[:, 0]
    w = jnp.ones_like(nll) if weights is None else jnp.asarray(weights, jnp.float32)
    return jnp.sum(nll * w), jnp.sum(w)
