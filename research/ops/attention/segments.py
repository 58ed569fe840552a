"""Packed sequences: `segment_ids` checks and the per-token reset indicators every causal
recurrent form shares (linear, gated, delta), plus the recurrent-state shape check.

`segment_ids` is an integer array [batch, length], non-decreasing along length; tokens with the
same id form one segment (one document). A causal recurrence restarts its state from zero at
the first token of every segment after the first (the first segment starts from
`initial_state`); softmax attention sees only keys of the query's own segment.

The checks run on static shapes; the "non-decreasing" check also runs on concrete (non-traced)
values, so both fail before anything compiles.
"""

# jaxtyping shape strings ("B L H D") are not forward references.

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int


def check_segment_ids(segment_ids, batch: int, length: int) -> Int[Array, "B L"] | None:
    """`segment_ids` as an int32 array [batch, length] (None stays None), else ValueError.

    Rejects a non-integer dtype, a shape other than (batch, length), and (when the values are
    concrete, i.e. not traced) ids that decrease along the length axis or do not fit int32.
    """
    if segment_ids is None:
        return None
    shape, dtype = jnp.shape(segment_ids), jnp.result_type(segment_ids)
    if not jnp.issubdtype(dtype, jnp.integer) or shape != (batch, length):
        raise ValueError(
            f"segment_ids must be an integer array [batch, length] = {(batch, length)}, "
            f"got {dtype} {shape}"
        )
    if not isinstance(segment_ids, jax.core.Tracer):
        ids = np.asarray(segment_ids)
        # Neighbours compared, not np.diff: a difference wraps for unsigned ids (and overflows
        # for narrow signed ones), hiding a decrease or inventing one.
        down = ids[:, 1:] < ids[:, :-1]
        if down.any():
            b, t = np.argwhere(down)[0]
            raise ValueError(
                f"segment_ids must be non-decreasing along length; row {b} goes from "
                f"{ids[b, t]} to {ids[b, t + 1]} at position {t + 1}"
            )
        bounds = np.iinfo(np.int32)
        if ids.size and (ids.min() < bounds.min or ids.max() > bounds.max):
            raise ValueError(
                f"segment_ids must fit int32 [{bounds.min}, {bounds.max}], got values from "
                f"{ids.min()} to {ids.max()}"
            )
    return jnp.asarray(segment_ids, jnp.int32)


def segment_starts(segment_ids: Int[Array, "B L"]) -> Bool[Array, "B L"]:
    """True at every token that starts a new segment after position 0 (where a recurrence
    resets its state to zero); False at position 0, whose state is the initial state."""
    ids = jnp.asarray(segment_ids)
    first = jnp.zeros((ids.shape[0], 1), bool)
    return jnp.concatenate([first, ids[:, 1:] != ids[:, :-1]], axis=1)


def same_segment(segment_ids: Int[Array, "B L"]) -> Bool[Array, "B 1 L L"]:
    """Block-diagonal mask [batch, 1, L, L]: query i may see key j only in its own segment."""
    ids = jnp.asarray(segment_ids)
    return (ids[:, :, None] == ids[:, None, :])[:, None]


def check_state(name: str, state, expected: tuple[int, ...]) -> None:
    """Raises ValueError unless `state` (an array, or None) has shape `expected`; the message
    names the axes [batch, heads, key_dim, value_dim] of the recurrent state."""
    if state is not None and tuple(jnp.shape(state)) != tuple(expected):
        raise ValueError(
            f"{name} must be [batch, heads, key_dim, value_dim] = {tuple(expected)}, "
            f"got {tuple(jnp.shape(state))}"
        )


def check_step_state(state, expected: tuple[int, ...]) -> None:
    """A decode step's `state`: required (not None) and shaped `expected`, else ValueError."""
    if state is None:
        raise ValueError(
            f"state must be an array [batch, heads, key_dim, value_dim] = {tuple(expected)}, "
            "got None (zeros start a sequence)"
        )
    check_state("state", state, expected)


def check_reset(reset_t, batch: int):
    """A decode step's `reset_t`: None, or a bool array [batch]; returned as a jnp array."""
    if reset_t is None:
        return None
    reset_t = jnp.asarray(reset_t)
    if reset_t.dtype != jnp.bool_ or reset_t.shape != (batch,):
        raise ValueError(
            f"reset_t must be a bool array [batch] = {(batch,)}, got {reset_t.dtype} "
            f"{reset_t.shape}"
        )
    return reset_t


__all__ = [
    "check_reset",
    "check_segment_ids",
    "check_state",
    "check_step_state",
    "same_segment",
    "segment_starts",
]
