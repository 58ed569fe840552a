"""What every attention family checks alike: bad inputs (one clear ValueError, before
compilation), the causal flag, and the default block sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.ops import attention as att
from research.ops.attention import common
from tests.ops.attention.cases import q4


def test_cpu_default_block_sizes_are_the_tuned_values():
    assert common.default_block_sizes("cpu") == (512, 512, 2**20)
    assert common.default_block_sizes("unknown") == common.default_block_sizes("cpu")


# ---------------------------------------------------------------- bad input
ones = np.ones
lin, soft, linformer = att.linear_attention, att.softmax_attention, att.linformer_attention
BAD_INPUTS = {
    "feature map": (lambda: lin(q4, q4, q4, feature_map="cosine"), "unknown feature_map 'cosine'"),
    "form": (lambda: lin(q4, q4, q4, form="fft"), "unknown form 'fft'"),
    "chunk 0": (lambda: lin(q4, q4, q4, chunk_size=0), "chunk_size must be a positive int, got 0"),
    "chunk -3": (lambda: lin(q4, q4, q4, chunk_size=-3), "got -3"),
    "causal softmax map": (
        lambda: lin(q4, q4, q4, feature_map="softmax", causal=True),
        "cannot be causal",
    ),
    "implementation": (
        lambda: soft(q4, q4, q4, implementation="flash"),
        "unknown implementation 'flash'",
    ),
    "causal linformer": (
        lambda: linformer(q4, q4, q4, ones((2, 8)), ones((2, 8)), causal=True),
        "cannot be causal",
    ),
    "rank": (lambda: soft(q4[0], q4, q4), r"q must have rank 4 .* got shape \(8, 2, 4\)"),
    "head_dim": (lambda: soft(q4, q4[..., :3], q4), "head_dim differ"),
    "heads": (lambda: soft(np.zeros((1, 8, 3, 4)), q4, q4), r"multiple of k/v heads \(2\)"),
    "kv heads": (lambda: lin(q4, q4, q4[:, :, :1]), "head counts differ"),
    "padding mask": (
        lambda: soft(q4, q4, q4, mask=ones((1, 7), bool)),
        r"\[batch, kv_length\] = \(1, 8\), got \(1, 7\)",
    ),
    "full mask": (lambda: soft(q4, q4, q4, mask=ones((1, 1, 3, 8), bool)), "not broadcastable"),
    "float mask": (lambda: soft(q4, q4, q4, mask=ones((1, 8), np.float32)), "must be boolean"),
    "linear full mask": (lambda: lin(q4, q4, q4, mask=ones((1, 1, 8, 8), bool)), "key-padding"),
    "bias": (lambda: soft(q4, q4, q4, bias=ones((3, 8))), "bias of shape"),
    "linformer e": (lambda: linformer(q4, q4, q4, ones((2, 5)), ones((2, 5))), r"kv_length=8"),
    "state": (
        lambda: att.linear_attention_step(
            att.linear_attention_init_state(1, 2, 3, 4), q4[:, 0], q4[:, 0], q4[:, 0]
        ),
        "state.s has shape",
    ),
}


CAUSAL_CALLS = {
    "softmax": lambda c: soft(q4, q4, q4, causal=c),
    "blockwise": lambda c: soft(q4, q4, q4, causal=c, implementation="blockwise"),
    "linear": lambda c: lin(q4, q4, q4, causal=c),
    "linformer": lambda c: linformer(q4, q4, q4, ones((2, 8)), ones((2, 8)), causal=c),
}


@pytest.mark.parametrize("attention", CAUSAL_CALLS)
@pytest.mark.parametrize("bad", ["yes", "False", 1, 0, None, np.array([True])])
def test_causal_must_be_a_bool(attention, bad):
    """A truthy string such as "False" used to switch causal masking on silently."""
    with pytest.raises(ValueError, match=r"^causal must be a bool, got "):
        CAUSAL_CALLS[attention](bad)


@pytest.mark.parametrize("attention", CAUSAL_CALLS)
def test_causal_accepts_python_and_numpy_bools(attention):
    for good in (False, np.False_) + (() if attention == "linformer" else (True, np.True_)):
        CAUSAL_CALLS[attention](good)


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_clear_error(case):
    call, match = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_input_is_rejected_before_compilation():
    """Errors come from static shapes, so they surface while tracing, before XLA compiles."""
    fn = jax.jit(lambda q: att.linear_attention(q, q, q, chunk_size=0))
    with pytest.raises(ValueError, match="chunk_size"):
        fn.lower(q4)


def test_a_causal_only_form_with_causal_false_is_refused():
    q = jnp.ones((1, 8, 2, 4))
    for form in ("scan", "cumsum"):
        with pytest.raises(ValueError, match=f"form='{form}' applies to causal attention only"):
            att.linear_attention(q, q, q, causal=False, form=form)
    att.linear_attention(q, q, q, causal=False)  # the default form is fine
