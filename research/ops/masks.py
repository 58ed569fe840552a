"""Boolean attention masks, True = attend, shaped to broadcast against [batch, heads, q, kv].

Combine them with `&`; pass the result as `mask=` to `research.ops.attention.softmax_attention`.
"""

import jax
import jax.numpy as jnp

from research.ops.checks import check_positive_int


def _check_ids(name: str, ids) -> jax.Array:
    ids = jnp.asarray(ids)
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(
            f"{name} must be an integer array [batch, length], got {ids.dtype} {ids.shape}"
        )
    return ids


def padding_mask(tokens: jax.Array, *, pad_id: int = 0) -> jax.Array:
    """Key-padding mask [batch, length]: True where tokens != pad_id."""
    return _check_ids("tokens", tokens) != pad_id


def causal_mask(q_length: int, kv_length: int | None = None) -> jax.Array:
    """[1, 1, q_length, kv_length]: query i sees keys j <= i (top-left aligned)."""
    kv_length = q_length if kv_length is None else kv_length
    check_positive_int("q_length", q_length)
    check_positive_int("kv_length", kv_length)
    return jnp.tril(jnp.ones((q_length, kv_length), bool))[None, None]


def unilm_mask(segment_ids: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """UniLM seq2seq / prefix-LM mask [batch, 1, L, L] from segment ids (Dong et al. 2019).

    Segment 0 (source) is bidirectional within itself; segment 1 (target) is causal over itself
    and sees all of segment 0; segment 0 never sees segment 1:
      visible(i, j) = seg_j == 0  or  (seg_i == 1 and seg_j == 1 and j <= i).
    `valid` [batch, L] (True = real token) additionally hides padded keys.
    """
    seg = _check_ids("segment_ids", segment_ids)
    length = seg.shape[1]
    qs, ks = seg[:, :, None], seg[:, None, :]
    tril = jnp.tril(jnp.ones((length, length), bool))
    mask = (ks == 0) | ((qs == 1) & (ks == 1) & tril)
    if valid is not None:
        mask = mask & jnp.asarray(valid, bool)[:, None, :]
    return mask[:, None]


def packed_mask(sequence_ids: jax.Array, *, causal: bool = False) -> jax.Array:
    """Block-diagonal mask [batch, 1, L, L] for packed rows: tokens see only their own sequence.

    `sequence_ids` [batch, L] numbers the sequences packed into each row 1, 2, ...; 0 is padding
    and is seen by no one. With causal=True each block is also lower-triangular.
    """
    ids = _check_ids("sequence_ids", sequence_ids)
    mask = (ids[:, :, None] == ids[:, None, :]) & (ids[:, None, :] != 0)
    if causal:
        length = ids.shape[1]
        mask = mask & jnp.tril(jnp.ones((length, length), bool))
    return mask[:, None]
