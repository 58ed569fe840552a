"""Sequence sharded over 8 fake devices gives the single-device causal result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from research.ops import attention as att
from research.ops import feature_maps as fm
from research.ops.attention import context_parallel as cp
from research.ops.attention import cost

SEQ = P(None, "seq")


def _mesh():
    return Mesh(np.asarray(jax.devices()), ("seq",))


def _qkv(length=64, heads=2, kv_heads=2, d=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, length, heads, d)).astype(np.float32)
    k = rng.standard_normal((2, length, kv_heads, d)).astype(np.float32)
    v = rng.standard_normal((2, length, kv_heads, d)).astype(np.float32)
    return q, k, v


def _sharded(fn):
    return jax.jit(jax.shard_map(fn, mesh=_mesh(), in_specs=(SEQ, SEQ, SEQ), out_specs=SEQ))


@pytest.mark.parametrize("feature_map", ["elu", "taylor"])
@pytest.mark.parametrize("form", ["chunked", "scan"])
def test_linear_context_parallel_equals_single_device(feature_map, form):
    assert len(jax.devices()) == 8
    q, k, v = _qkv()

    def local(q, k, v):
        return cp.linear_attention_cp(
            q, k, v, axis_name="seq", axis_size=8, feature_map=feature_map, form=form, chunk_size=4
        )

    fn = _sharded(local)
    want = att.linear_attention(q, k, v, feature_map=feature_map, causal=True)
    np.testing.assert_allclose(fn(q, k, v), want, atol=1e-5)
    # Gradients flow through the cross-device prefix too.
    g = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) ** 2), (0, 1, 2))(q, k, v)
    ref = jax.grad(
        lambda q, k, v: jnp.sum(
            att.linear_attention(q, k, v, feature_map=feature_map, causal=True) ** 2
        ),
        (0, 1, 2),
    )(q, k, v)
    for a, b in zip(g, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_linear_context_parallel_takes_favor_by_name():
    q, k, v = _qkv(length=32)
    w = fm.favor_projection(jax.random.PRNGKey(0), 16, 8)
    named = dict(feature_map="favor", favor_projection=w, chunk_size=4)
    fn = _sharded(lambda q, k, v: cp.linear_attention_cp(q, k, v, axis_name="seq", **named))
    want = att.linear_attention(q, k, v, feature_map=fm.favor(w), causal=True)
    np.testing.assert_allclose(fn(q, k, v), want, atol=1e-5)
    with pytest.raises(ValueError, match="feature_map='favor' needs favor_projection="):
        _sharded(
            lambda q, k, v: cp.linear_attention_cp(q, k, v, axis_name="seq", feature_map="favor")
        )(q, k, v)


def test_ring_attention_causal_must_be_a_bool():
    q, k, v = _qkv(length=16)
    fn = _sharded(lambda q, k, v: cp.ring_attention(q, k, v, axis_name="seq", causal="no"))
    with pytest.raises(ValueError, match="causal must be a bool, got 'no'"):
        fn(q, k, v)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads, kv_heads", [(2, 2), (2, 1), (4, 2)])  # (4, 2): groups of two
def test_ring_attention_equals_dense(heads, kv_heads, causal):
    q, k, v = _qkv(heads=heads, kv_heads=kv_heads)
    ring = dict(axis_name="seq", axis_size=8, causal=causal)
    fn = _sharded(lambda q, k, v: cp.ring_attention(q, k, v, **ring))
    want = att.softmax_attention(q, k, v, causal=causal)
    np.testing.assert_allclose(fn(q, k, v), want, atol=1e-5)
    g = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) ** 2), (0, 1, 2))(q, k, v)
    ref = jax.grad(
        lambda q, k, v: jnp.sum(att.softmax_attention(q, k, v, causal=causal) ** 2), (0, 1, 2)
    )(q, k, v)
    for a, b in zip(g, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_ring_attention_bf16_gradients_are_the_fp32_ones_rounded_once():
    """dK and dV add up in fp32 as they travel the ring; autodiff of the forward ring added them
    in bf16 at every hop (dV 3.6x and dK 1.8x a single rounding's error on 8 devices)."""
    rng = np.random.default_rng(0)
    q, k, v, w = (jnp.asarray(rng.standard_normal((1, 512, 2, 32)), jnp.bfloat16) for _ in "qkvw")
    ring = dict(axis_name="seq", causal=False)
    fn = _sharded(lambda q, k, v: cp.ring_attention(q, k, v, **ring))
    f32 = lambda x: np.asarray(x.astype(jnp.float32))  # noqa: E731
    got = jax.grad(lambda *x: jnp.sum(fn(*x).astype(jnp.float32) * w), (0, 1, 2))(q, k, v)
    want = jax.grad(
        lambda *x: jnp.sum(att.softmax_attention(*x, causal=False) * f32(w)), (0, 1, 2)
    )(f32(q), f32(k), f32(v))
    for a, b in zip(got, want, strict=True):
        rounding = np.max(np.abs(f32(jnp.asarray(b).astype(jnp.bfloat16)) - b))
        assert np.max(np.abs(f32(a) - b)) <= 1.5 * rounding


def test_ring_attention_backward_memory_does_not_grow_with_the_ring():
    """Its backward keeps this device's blocks only: the same per-device work on 8 devices
    compiles to no more temporary memory than on 2 (autodiff of the forward ring saved every
    step's K/V blocks and accumulators: +3.2 MB, 24 blocks, from 2 to 8 devices here)."""

    def temp_bytes(devices, n=256):
        mesh = Mesh(np.asarray(jax.devices()[:devices]), ("seq",))
        body = lambda q, k, v: cp.ring_attention(q, k, v, axis_name="seq")  # noqa: E731
        fn = jax.shard_map(body, mesh=mesh, in_specs=(SEQ,) * 3, out_specs=SEQ)
        grad = jax.jit(jax.grad(lambda *x: jnp.sum(fn(*x)), (0, 1, 2)))
        x = jax.ShapeDtypeStruct((1, n * devices, 2, 64), jnp.float32)
        return grad.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

    block = 256 * 2 * 64 * 4  # one device's K (or V, or output accumulator) in bytes
    assert temp_bytes(8) - temp_bytes(2) < 3 * block


def test_initial_state_continues_a_prefix():
    q, k, v = _qkv(length=30)
    full = att.linear_attention(q, k, v, causal=True, chunk_size=4)
    prefix = att.linear_attention_state(k[:, :12], v[:, :12])
    for form in att.LINEAR_FORMS:
        rest = att.linear_attention(
            q[:, 12:],
            k[:, 12:],
            v[:, 12:],
            causal=True,
            form=form,
            chunk_size=4,
            initial_state=prefix,
        )
        np.testing.assert_allclose(rest, full[:, 12:], atol=1e-5)
    with pytest.raises(ValueError, match="only defined for causal"):
        att.linear_attention(q, k, v, initial_state=prefix)


def test_bytes_communicated():
    kw = dict(
        batch=1,
        length=1 << 20,
        heads=4,
        kv_heads=4,
        head_dim=64,
        value_dim=64,
        feature_dim=64,
        devices=8,
    )
    assert cost.bytes_communicated("linear", **kw) == 4 * 3 * 4 * (64 * 64 + 64)
    assert cost.bytes_communicated("ring", **kw) == 4 * 7 * (1 << 17) * 4 * 128
    short = {**kw, "length": 1 << 10}
    assert cost.bytes_communicated("linear", **short) == cost.bytes_communicated(
        "linear", **kw
    )  # independent of length


def test_axis_size_is_read_from_the_mesh_and_a_wrong_one_is_refused():
    q, k, v = _qkv()
    for fn, want in [
        (cp.linear_attention_cp, att.linear_attention(q, k, v, causal=True)),
        (cp.ring_attention, att.softmax_attention(q, k, v, causal=True)),
    ]:
        sharded = _sharded(lambda q, k, v, fn=fn: fn(q, k, v, axis_name="seq"))  # size omitted
        np.testing.assert_allclose(sharded(q, k, v), want, atol=1e-5)
        wrong = _sharded(lambda q, k, v, fn=fn: fn(q, k, v, axis_name="seq", axis_size=4))
        with pytest.raises(ValueError, match="axis_size=4, but mesh axis 'seq' has 8 devices"):
            wrong(q, k, v)
