"""What a model costs, whatever it was trained on: its parameters, the bytes of its decode state and
its decode latency per token (the comparison and recall experiments report them per kind), and
the MLP widths that give several kinds equal parameters."""

import jax
import numpy as np
from flax import nnx

from research.models import DecoderLM
from research.report import decode_program, median_time


def decode_state_bytes(model: DecoderLM, length: int) -> int:
    """Bytes of `model`'s decode state for batch 1 with room for `length` tokens, as its prefill
    builds it: a softmax layer's KV cache grows with `length`; a recurrent layer's state (and a
    convolution's last inputs) does not."""
    _, cache = model.prefill(np.ones((1, length - 1), np.int32), max_length=length)
    return int(sum(x.nbytes for x in jax.tree.leaves(cache["layers"])))


def parameter_count(model) -> int:
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def seconds_per_token(model: DecoderLM, context: int, steps: int) -> float:
    """Wall seconds per greedy token of `model` (batch 1) after a random prompt of `context`
    tokens: the prompt is prefilled once and only the `steps` decode steps that follow are timed
    (median of 3), so softmax pays for reading its KV cache, a recurrent kind for its state."""
    decode, args = decode_program(model, context, steps)
    return median_time(decode, *args, repeats=3) / steps


def equal_param_mlp_widths(count, kinds, width: int) -> dict[str, int]:
    """{kind: d_ff}: the MLP hidden width that brings each kind's parameter count, count(kind,
    d_ff), nearest the largest count at the default d_ff = 4 x width. A wider MLP adds parameters
    and leaves the decode state as it is, so kinds whose attention has fewer parameters are
    compared at equal parameters, not only equal width. d_ff moves in whole units, so each count
    ends within half a unit's parameters of the largest (count must be linear in d_ff, as an
    MLP's weights and biases are)."""
    base = 4 * width
    at = {k: count(k, base) for k in kinds}
    target = max(at.values())
    return {k: base + round((target - n) / (count(k, base + 1) - n)) for k, n in at.items()}
