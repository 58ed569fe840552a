"""Packed sequences: two documents packed with segment_ids give each exactly its output alone,
for softmax (dense and blockwise), linear (every causal form) and gated linear attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import ops
from research.ops.attention import segments
from research.ops.attention import softmax as softmax_module

LENGTHS = (13, 1, 18)  # a one-token document in the middle; chunk boundaries fall inside


def _docs(dk=4, dv=3, heads=2, kv_heads=2, seed=0):
    rng = np.random.default_rng(seed)
    total = sum(LENGTHS)
    q = rng.standard_normal((2, total, heads, dk)).astype(np.float32)
    k = rng.standard_normal((2, total, kv_heads, dk)).astype(np.float32)
    v = rng.standard_normal((2, total, kv_heads, dv)).astype(np.float32)
    g = -rng.uniform(0, 2, (2, total, heads, dk)).astype(np.float32)
    ids = np.repeat(np.arange(len(LENGTHS), dtype=np.int32), LENGTHS)
    seg = np.stack([ids, ids + 7])  # any non-decreasing ids
    return q, k, v, g, seg


def _alone(fn, *arrays):
    """fn on each document separately, the outputs concatenated back along length."""
    bounds = np.cumsum((0,) + LENGTHS)
    outs = [fn(*(x[:, a:b] for x in arrays)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return jnp.concatenate(outs, axis=1)


def _packed_equals_alone(fn, q, k, v, seg, *extra):
    packed = jax.jit(lambda *xs: fn(*xs, segment_ids=seg))(q, k, v, *extra)
    alone = jax.jit(lambda *xs: _alone(fn, *xs))(q, k, v, *extra)
    np.testing.assert_allclose(packed, alone, atol=2e-5, rtol=2e-5)
    # Gradients do not cross documents either.
    gp = jax.jit(jax.grad(lambda q: jnp.sum(jnp.sin(fn(q, k, v, *extra, segment_ids=seg)))))(q)
    ga = jax.jit(jax.grad(lambda q: jnp.sum(jnp.sin(_alone(fn, q, k, v, *extra)))))(q)
    np.testing.assert_allclose(gp, ga, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("implementation", ["xla", "blockwise"])
@pytest.mark.parametrize("causal", [True, False])
def test_softmax_packed_equals_separate(implementation, causal):
    q, k, v, _, seg = _docs(kv_heads=1)

    def fn(q, k, v, segment_ids=None):
        return ops.softmax_attention(
            q,
            k,
            v,
            causal=causal,
            implementation=implementation,
            segment_ids=segment_ids,
            block_q=4,
            block_k=8,
        )

    _packed_equals_alone(fn, q, k, v, seg)


@pytest.mark.parametrize("form", ["chunked", "scan", "cumsum"])
@pytest.mark.parametrize("feature_map", ["elu", "taylor"])
def test_linear_packed_equals_separate(form, feature_map):
    q, k, v, _, seg = _docs()

    def fn(q, k, v, segment_ids=None):
        return ops.linear_attention(
            q,
            k,
            v,
            causal=True,
            feature_map=feature_map,
            form=form,
            chunk_size=8,
            segment_ids=segment_ids,
        )

    _packed_equals_alone(fn, q, k, v, seg)


@pytest.mark.parametrize("form,chunk_size", [("chunked", 64), ("chunked", 4), ("scan", 8)])
def test_gated_packed_equals_separate(form, chunk_size):
    q, k, v, g, seg = _docs(kv_heads=1)

    def fn(q, k, v, g, segment_ids=None):
        return ops.gated_linear_attention(
            q, k, v, g, form=form, chunk_size=chunk_size, segment_ids=segment_ids
        )

    _packed_equals_alone(fn, q, k, v, seg, g)


def test_linear_first_segment_starts_from_the_initial_state():
    q, k, v, _, seg = _docs()
    state = ops.linear_attention_state(k[:, :5], v[:, :5])
    kw = dict(causal=True, chunk_size=4)
    for form in ("chunked", "scan", "cumsum"):
        packed = ops.linear_attention(
            q, k, v, initial_state=state, segment_ids=seg, form=form, **kw
        )
        first = ops.linear_attention(q[:, :13], k[:, :13], v[:, :13], initial_state=state, **kw)
        rest = ops.linear_attention(q[:, 13:], k[:, 13:], v[:, 13:], segment_ids=seg[:, 13:], **kw)
        np.testing.assert_allclose(packed, np.concatenate([first, rest], 1), atol=2e-5)


def test_segment_helpers():
    ids = np.array([[0, 0, 1, 1, 1, 4], [2, 3, 3, 3, 3, 3]])
    starts = segments.segment_starts(ids).tolist()
    assert starts == [[0, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0]]
    same = segments.same_segment(ids)
    assert same.shape == (2, 1, 6, 6) and bool(same[0, 0, 2, 4]) and not bool(same[0, 0, 1, 2])
    assert segments.check_segment_ids(None, 2, 6) is None
    assert segments.check_segment_ids(ids, 2, 6).dtype == jnp.int32
    jax.jit(lambda s: segments.check_segment_ids(s, 2, 6))(ids)  # traced: shape checks only


@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.int8, np.int32, np.int64])
def test_segment_ids_order_check_holds_in_every_integer_dtype(dtype):
    """A decrease is caught in unsigned ids (a difference would wrap to a large step) and a
    wide rise is allowed in int8 and int32 (a difference would overflow to a negative step)."""
    with pytest.raises(ValueError, match="row 0 goes from 1 to 0 at position 2"):
        segments.check_segment_ids(np.array([[1, 1, 0, 0]], dtype), 1, 4)
    low = max(np.iinfo(dtype).min, np.iinfo(np.int32).min)
    rising = np.array([[low, low, 100, 100]], dtype)
    assert segments.check_segment_ids(rising, 1, 4).tolist() == [[low, low, 100, 100]]


def test_segment_ids_beyond_int32_are_refused_not_wrapped():
    """Ids are used as int32: 2**31 would wrap to -2**31, a decrease inside the program."""
    ids = np.array([[2**31 - 1, 2**31]], np.int64)
    with pytest.raises(ValueError, match=r"must fit int32 \[-2147483648, 2147483647\], got "):
        segments.check_segment_ids(ids, 1, 2)


BAD = [
    (
        lambda q, k, v, s: ops.softmax_attention(q, k, v, segment_ids=s[:, ::-1]),
        "segment_ids must be non-decreasing along length; row 0 goes from 2 to 1 at position 18",
    ),
    (
        lambda q, k, v, s: ops.softmax_attention(q, k, v, segment_ids=s[:1]),
        r"segment_ids must be an integer array \[batch, length\] = \(2, 32\), got int32 \(1, 32\)",
    ),
    (
        lambda q, k, v, s: ops.softmax_attention(q, k[:, :5], v[:, :5], segment_ids=s),
        "segment_ids .* needs q_length == kv_length, got 32, 5",
    ),
    (
        lambda q, k, v, s: ops.softmax_attention(q, k, v, implementation="cudnn", segment_ids=s),
        "implementation='cudnn' takes no segment_ids .* use 'blockwise'",
    ),
    (
        lambda q, k, v, s: ops.linear_attention(q, k, v, segment_ids=s),
        "segment_ids applies to causal linear attention only",
    ),
    (
        lambda q, k, v, s: ops.linear_attention(q, k, v, causal=True, segment_ids=s.astype(float)),
        "segment_ids must be an integer array",
    ),
]


@pytest.mark.parametrize("call,message", BAD)
def test_bad_segment_ids_raise_one_line_value_error(call, message):
    q, k, v, _, seg = _docs()
    with pytest.raises(ValueError, match=message) as err:
        call(q, k, v, seg)
    assert "\n" not in str(err.value)


def test_tpu_flash_gets_segment_ids_as_kernel_segment_ids(monkeypatch):
    """The Pallas kernel has SegmentIds: packed ids go there (shifted to >= 1), and padded
    keys of a key-padding mask get 0, which no query has."""
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    seen = {}

    def fake(q, k, v, segment_ids=None, causal=False, sm_scale=1.0):
        seen["ids"] = segment_ids
        return q

    monkeypatch.setattr(fa, "flash_attention", fake)
    q, k, v, _, seg = _docs(dv=4)
    mask = np.ones(seg.shape, bool)
    mask[:, -2:] = False
    softmax_module.softmax_attention(
        q, k, v, implementation="tpu_flash", segment_ids=seg, mask=mask
    )
    ids = seen["ids"]
    np.testing.assert_array_equal(ids.q, seg - seg.min() + 1)
    np.testing.assert_array_equal(ids.kv, np.where(mask, seg - seg.min() + 1, 0))
