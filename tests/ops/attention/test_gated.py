"""Gated linear attention: every form equals the float64 NumPy recurrence (values and gradients),
the special cases are the ops they claim to be, bad input fails early, memory stays O(L d)."""

import functools

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from research import ops
from research.ops import attention as att
from research.ops.attention import context_parallel as cp
from research.ops.attention.gated import chunk
from tests.ops.references import np_gated_linear_attention, np_gated_linear_attention_grads

GRAD_NAMES = ("q", "k", "v", "log_gate", "initial_state")


def _close(got, want, tol=2e-4):
    """fp32 against float64: relative to the reference's magnitude (sums of up to L terms)."""
    want = np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, np.abs(want).max()))


def _inputs(
    rng, b, length, heads, kv_heads, dk, dv, gate="vector", strength=3.0, p_new=0.2, strong=0.1
):
    q = rng.standard_normal((b, length, heads, dk)).astype(np.float32)
    k = rng.standard_normal((b, length, kv_heads, dk)).astype(np.float32)
    v = rng.standard_normal((b, length, kv_heads, dv)).astype(np.float32)
    gate_shape = {
        "vector": (b, length, heads, dk),
        "scalar": (b, length, heads),
        "kv_scalar": (b, length, kv_heads),
    }[gate]
    g = -rng.uniform(0.0, strength, gate_shape)
    g = np.where(rng.random(gate_shape) < strong, -20.0, g).astype(np.float32)
    seg = np.cumsum(rng.random((b, length)) < p_new, axis=1).astype(np.int32)
    s0 = rng.standard_normal((b, heads, dk, dv)).astype(np.float32)
    d_out = rng.standard_normal((b, length, heads, dv)).astype(np.float32)
    d_state = rng.standard_normal((b, heads, dk, dv)).astype(np.float32)
    return q, k, v, g, seg, s0, d_out, d_state


def _value_and_grads(fn, q, k, v, g, s0, d_out, d_state):
    """fn(q, k, v, g, s0) -> (out, final state); returns them and the gradients of
    sum(out * d_out) + sum(state * d_state) with respect to (q, k, v, g, s0)."""

    def loss(*args):
        out, state = fn(*args)
        return jnp.sum(out * d_out) + jnp.sum(state * d_state), (out, state)

    (_, (out, state)), grads = jax.jit(jax.value_and_grad(loss, range(5), has_aux=True))(
        q, k, v, g, s0
    )
    return out, state, grads


def _check_against_numpy(fn, q, k, v, g, seg, s0, d_out, d_state, tol=2e-4):
    out, state, grads = _value_and_grads(fn, q, k, v, g, s0, d_out, d_state)
    kw = dict(initial_state=s0, segment_ids=seg)
    want, want_state = np_gated_linear_attention(q, k, v, g, **kw)
    _close(out, want, tol)
    _close(state, want_state, tol)
    ref = np_gated_linear_attention_grads(q, k, v, g, d_out, d_state=d_state, **kw)
    for name, got in zip(GRAD_NAMES, grads, strict=True):
        assert np.isfinite(np.asarray(got)).all(), name
        _close(got, ref[name], tol)


@st.composite
def problems(draw):
    kv_heads = draw(st.integers(1, 2))
    return dict(
        b=draw(st.integers(1, 2)),
        length=draw(st.integers(1, 40)),
        kv_heads=kv_heads,
        heads=kv_heads * draw(st.integers(1, 2)),
        dk=draw(st.integers(1, 5)),
        dv=draw(st.integers(1, 4)),
        gate=draw(st.sampled_from(["vector", "scalar", "kv_scalar"])),
        strength=draw(st.sampled_from([0.05, 3.0])),
        p_new=draw(st.sampled_from([0.0, 0.1, 0.5])),
        strong=draw(st.sampled_from([0.0, 0.2])),
        seed=draw(st.integers(0, 2**16)),
    )


FORMS = [("chunked", 64), ("chunked", 4), ("chunked", 7), ("scan", 4), ("step", None)]


def _decode_steps(q, k, v, g, s0, seg):
    """`gated_linear_attention_step` token by token (a lax.scan), reset_t where a new segment
    starts: (out [B, L, H, Dv], final state)."""
    starts = np.concatenate([np.zeros_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], 1)

    def step(state, x):
        return ops.gated_linear_attention_step(state, *x[:4], reset_t=x[4])

    xs = tuple(jnp.moveaxis(jnp.asarray(a), 1, 0) for a in (q, k, v, g, starts))
    state, out = jax.lax.scan(step, s0, xs)
    return jnp.moveaxis(out, 0, 1), state


EVERYTHING = dict(  # every option at once: GQA, Dk != Dv, segments, strong gates
    b=2, length=23, kv_heads=2, heads=4, dk=3, dv=5, gate="vector", strength=3.0, p_new=0.3,
    strong=0.2, seed=7,
)  # fmt: skip


@settings(max_examples=12)
@given(p=problems(), which=st.sampled_from(FORMS))
@example(p=EVERYTHING, which=("scan", 4))  # the derandomized draws did not reach scan
# nor the scalar gate per kv head ([B, L, Hkv]) in any form
@example(p={**EVERYTHING, "gate": "kv_scalar"}, which=("chunked", 7))
@example(p={**EVERYTHING, "gate": "kv_scalar"}, which=("scan", 4))
@example(p={**EVERYTHING, "gate": "kv_scalar"}, which=("step", None))
def test_forms_equal_numpy_recurrence(p, which):
    """Values and gradients (q, k, v, gates, initial state) of chunked (default and tiny chunks,
    lengths not divisible by them), scan and the decode step taken token by token, over batch,
    GQA, Dk != Dv, gate kinds, segments (length-1 ones too) and decays down to -20, equal the
    float64 token recurrence."""
    form, chunk_size = which
    p = dict(p)  # the shared example dict stays whole
    rng = np.random.default_rng(p.pop("seed"))
    q, k, v, g, seg, s0, d_out, d_state = _inputs(rng, **p)

    def fn(q, k, v, g, s0):
        if form == "step":
            return _decode_steps(q, k, v, g, s0, seg)
        return ops.gated_linear_attention(
            q,
            k,
            v,
            g,
            initial_state=s0,
            segment_ids=seg,
            return_state=True,
            form=form,
            chunk_size=chunk_size,
        )

    _check_against_numpy(fn, q, k, v, g, seg, s0, d_out, d_state)


@pytest.mark.parametrize("gate", ["vector", "scalar"])
@pytest.mark.parametrize("form, chunk_size", [("chunked", 4), ("scan", 4)])
def test_forms_without_segment_ids_equal_numpy_recurrence(form, chunk_size, gate):
    """The path without segment_ids (its own branches in both forms), values and gradients with
    an initial state, a length not divisible by the chunk and decays down to -20."""
    rng = np.random.default_rng(21)
    q, k, v, g, _, s0, d_out, d_state = _inputs(rng, 2, 11, 4, 2, 3, 5, gate=gate)

    def fn(q, k, v, g, s0):
        return ops.gated_linear_attention(
            q, k, v, g, initial_state=s0, return_state=True, form=form, chunk_size=chunk_size
        )

    _check_against_numpy(fn, q, k, v, g, None, s0, d_out, d_state)


def test_naive_form_equals_numpy_recurrence():
    rng = np.random.default_rng(0)
    q, k, v, g, seg, s0, d_out, d_state = _inputs(rng, 2, 13, 4, 2, 3, 5, p_new=0.3)

    def fn(q, k, v, g, s0):
        return ops.gated_linear_attention(
            q, k, v, g, initial_state=s0, segment_ids=seg, return_state=True, form="naive"
        )

    _check_against_numpy(fn, q, k, v, g, seg, s0, d_out, d_state)


@pytest.mark.parametrize("gate", ["vector", "scalar"])
def test_blocks_carry_the_state_and_its_segment_to_the_next_block(gate, monkeypatch):
    """Blocks (the remat unit, BLOCK_TOKENS = 1,024 tokens) shrunk to 8 so that a short input
    spans five: segments start inside a block, on a block boundary and span two boundaries."""
    monkeypatch.setattr(chunk, "BLOCK_TOKENS", 8)
    rng = np.random.default_rng(5)
    q, k, v, g, _, s0, d_out, d_state = _inputs(rng, 2, 37, 2, 1, 3, 4, gate=gate)
    seg = np.array([[0] * 6 + [1] * 18 + [2] * 13, [3] * 8 + [4] * 29], np.int32)

    def fn(q, k, v, g, s0):
        return ops.gated_linear_attention(
            q, k, v, g, initial_state=s0, segment_ids=seg, return_state=True, chunk_size=4
        )

    _check_against_numpy(fn, q, k, v, g, seg, s0, d_out, d_state)


@pytest.mark.parametrize("length, chunk_size, gate", [(8, 8192, "vector"), (61, 1024, "scalar")])
def test_an_input_shorter_than_the_chunk_is_one_chunk(length, chunk_size, gate):
    """chunk_size is capped near the length (as the delta rule's is): 8 tokens with the
    per-key-dim gate at chunk_size 8192 used to pad to 8,192 and compile 257 MiB of
    temporaries. The cap is the length rounded up to the chunk's sub-chunk of 16: a prime
    length (61) with a scalar gate costs about what 64 tokens in one chunk do, not 61
    sub-chunks of one token (4.3 GB of temporaries at 1021 tokens)."""

    def temp_bytes(n, chunk_size):
        x = jax.ShapeDtypeStruct((1, n, 1, 2), jnp.float32)
        g = x if gate == "vector" else jax.ShapeDtypeStruct((1, n, 1), jnp.float32)
        fn = functools.partial(ops.gated_linear_attention, chunk_size=chunk_size)
        return jax.jit(fn).lower(x, x, x, g).compile().memory_analysis().temp_size_in_bytes

    whole = -(-length // 16) * 16  # the length rounded up to a sub-chunk: one chunk of it
    # (padding the input to that length takes a little more)
    assert temp_bytes(length, chunk_size) <= 2 * temp_bytes(whole, whole) < 2**21


@pytest.mark.parametrize("gate", ["vector", "scalar"])
def test_strong_decays_stay_finite_across_chunks_and_sub_chunks(gate):
    """Runs of g = -20 per step (the cumulative log-gate reaches -2500 in a chunk of 128, far
    past fp32's exp range) with weak gates around them, segments spanning chunk boundaries."""
    rng = np.random.default_rng(1)
    weak = dict(gate=gate, strength=0.02, p_new=0.01, strong=0.0)
    q, k, v, g, seg, s0, d_out, d_state = _inputs(rng, 1, 300, 2, 2, 8, 8, **weak)
    g[:, 40:170] = -20.0
    g[:, 200:203] = -20.0

    def fn(q, k, v, g, s0):
        return ops.gated_linear_attention(
            q, k, v, g, initial_state=s0, segment_ids=seg, return_state=True, chunk_size=128
        )

    _check_against_numpy(fn, q, k, v, g, seg, s0, d_out, d_state)


@pytest.mark.parametrize("per_step, poisoned", [(-0.6, "tree_terms"), (-0.65, "factored_terms")])
def test_factored_path_is_taken_exactly_inside_its_range(per_step, poisoned, monkeypatch):
    """Per-key-dim gates near -0.6 per step sum to -37..-40 over a chunk of 64, inside
    FACTOR_RANGE: the one-matmul factored form runs; near -0.65 (sums below -40) the tree. The
    other branch is made to return NaNs, so values and gradients can only equal NumPy if the
    right one ran. q and k are 10x larger than usual, to probe fp32's range next to e^40."""
    rng = np.random.default_rng(7)
    q, k, v, _, seg, s0, d_out, d_state = _inputs(rng, 2, 150, 2, 1, 6, 4, p_new=0.02)
    g = (per_step * rng.uniform(0.97, 1.03, (2, 150, 2, 6))).astype(np.float32)
    sums = g[:, :128].reshape(2, 2, 64, 2, 6).sum(axis=2)  # the two full chunks
    assert (sums >= -chunk.FACTOR_RANGE).all() == (poisoned == "tree_terms")
    real = getattr(chunk, poisoned)
    monkeypatch.setattr(chunk, poisoned, lambda *a: jax.tree.map(lambda x: x * jnp.nan, real(*a)))

    def fn(q, k, v, g, s0):
        return ops.gated_linear_attention(
            q, k, v, g, initial_state=s0, segment_ids=seg, return_state=True
        )

    _check_against_numpy(fn, 10 * q, 10 * k, v, g, seg, s0, d_out, d_state)


def test_vmap_over_mild_and_strong_gates_equals_numpy_with_finite_gradients():
    """Under jax.vmap the factored / tree switch becomes a select that runs both paths: with a
    mild gate in one vmapped item and g = -20 at about a fifth of the other's entries, values
    and gradients of both items still equal NumPy, and the discarded path leaves no NaN behind
    (0 * inf)."""
    rng = np.random.default_rng(11)
    items = [_inputs(rng, 1, 70, 2, 2, 4, 3, strength=0.05, strong=s) for s in (0.0, 0.2)]
    q, k, v, g, seg, s0, d_out, d_state = (np.stack(x) for x in zip(*items, strict=True))

    def loss(q, k, v, g, s0, seg, d_out, d_state):
        out, state = ops.gated_linear_attention(
            q, k, v, g, initial_state=s0, segment_ids=seg, return_state=True
        )
        return jnp.sum(out * d_out) + jnp.sum(state * d_state), (out, state)

    def total(q, k, v, g, s0):  # grad of vmap: the select's discarded side gets zeros
        losses, aux = jax.vmap(loss)(q, k, v, g, s0, seg, d_out, d_state)
        return jnp.sum(losses), aux

    grad = jax.value_and_grad(total, range(5), has_aux=True)
    (_, (out, state)), grads = jax.jit(grad)(q, k, v, g, s0)
    for i in range(2):
        kw = dict(initial_state=s0[i], segment_ids=seg[i])
        want, want_state = np_gated_linear_attention(q[i], k[i], v[i], g[i], **kw)
        _close(out[i], want)
        _close(state[i], want_state)
        ref = np_gated_linear_attention_grads(
            q[i], k[i], v[i], g[i], d_out[i], d_state=d_state[i], **kw
        )
        for name, got in zip(GRAD_NAMES, grads, strict=True):
            assert np.isfinite(np.asarray(got[i])).all(), (i, name)
            _close(got[i], ref[name])


def _dots(jaxpr):
    """Every dot_general in a jaxpr, including those of scans, conds and checkpoints."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jex.core.ClosedJaxpr):
                    yield from _dots(sub.jaxpr)
                elif isinstance(sub, jex.core.Jaxpr):
                    yield from _dots(sub)


@pytest.mark.parametrize("family", ["vector", "scalar", "delta"])
def test_log_gate_sums_ask_for_full_fp32_precision(family):
    """At default precision GPUs round fp32 matmuls to TF32 and TPUs to bf16 passes: a log-gate
    sum of -40 would be off by 0.02-0.2, a 2-20% error once exponentiated. The chunked forms
    (GLA per-key-dim and scalar, gated delta) form those sums as products with 0/1 triangular
    matrices, the only dot operands of rank <= 3, and every one of them, forward and backward,
    must ask for HIGHEST. The CPU computes fp32 at any precision, so this is read off the
    traced program rather than measured."""
    x = jnp.ones((1, 100, 2, 8), jnp.float32)
    g = jnp.full(x.shape if family == "vector" else x.shape[:3], -0.1, jnp.float32)
    if family == "delta":
        beta = jnp.full(x.shape[:3], 0.5, jnp.float32)
        fn = lambda q, k, v, g: ops.delta_rule_attention(q, k, v, beta, log_gate=g)  # noqa: E731
    else:
        fn = ops.gated_linear_attention
    loss = lambda *args: jnp.sum(fn(*args))  # noqa: E731
    with jax.default_matmul_precision("bfloat16"):  # as on a TPU; conftest sets "highest"
        jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3)))(x, x, x, g)
    sums = [e for e in _dots(jaxpr.jaxpr) if min(v.aval.ndim for v in e.invars) <= 3]
    assert len(sums) >= 3  # forward sums and their transposes
    highest = (jax.lax.Precision.HIGHEST,) * 2
    assert all(e.params["precision"] == highest for e in sums), [
        (tuple(v.aval.shape for v in e.invars), e.params["precision"]) for e in sums
    ]


def test_sub_chunk_size_divides_the_chunk():
    assert [chunk.sub_chunk_size(c) for c in (64, 4, 7, 24, 17, 1)] == [16, 4, 7, 12, 1, 1]


def test_decode_steps_after_a_chunked_prefill_equal_numpy():
    """Prefill with return_state, then one token at a time (reset_t at segment starts)."""
    rng = np.random.default_rng(2)
    q, k, v, g, seg, s0, _, _ = _inputs(rng, 2, 20, 4, 2, 3, 5, gate="vector", p_new=0.25)
    want, want_state = np_gated_linear_attention(q, k, v, g, initial_state=s0, segment_ids=seg)
    prefill = 9
    out, state = ops.gated_linear_attention(
        q[:, :prefill],
        k[:, :prefill],
        v[:, :prefill],
        g[:, :prefill],
        initial_state=s0,
        segment_ids=seg[:, :prefill],
        return_state=True,
        chunk_size=4,
    )
    outs = [out]
    step = jax.jit(ops.gated_linear_attention_step)
    for t in range(prefill, q.shape[1]):
        reset = seg[:, t] != seg[:, t - 1]
        state, o = step(state, q[:, t], k[:, t], v[:, t], g[:, t], reset_t=reset)
        outs.append(o[:, None])
    _close(jnp.concatenate(outs, axis=1), want)
    _close(state, want_state)


def test_decode_step_gradients_equal_numpy():
    rng = np.random.default_rng(3)
    q, k, v, g, _, s0, d_out, d_state = _inputs(rng, 2, 1, 2, 1, 4, 3, gate="scalar")

    def fn(q, k, v, g, s0):
        state, o = ops.gated_linear_attention_step(s0, q[:, 0], k[:, 0], v[:, 0], g[:, 0])
        return o[:, None], state

    _check_against_numpy(fn, q, k, v, g, None, s0, d_out, d_state)


@pytest.mark.parametrize(
    "form,gate", [("chunked", "vector"), ("chunked", "kv_scalar"), ("scan", "scalar")]
)
def test_context_parallel_equals_numpy(form, gate):
    """8 devices x 9 tokens (not a multiple of the chunk of 4); segments that cross shard and
    chunk boundaries, one of length 1 right at a shard start, and strong decays."""
    rng = np.random.default_rng(4)
    q, k, v, g, _, s0, d_out, _ = _inputs(rng, 2, 72, 4, 2, 3, 5, gate=gate, strong=0.1)
    seg = np.zeros((2, 72), np.int32)
    seg[0, 5:] += 1  # crosses shards 0..7
    seg[0, 27:] += 1  # 27 = 3 * 9: a segment of length 1 at the start of shard 3
    seg[0, 28:] += 1
    seg[1] = np.repeat([0, 1, 2], [30, 1, 41])
    d_state = rng.standard_normal(s0.shape).astype(np.float32)
    _check_context_parallel(q, k, v, g, seg, s0, d_out, d_state, form=form, chunk_size=4)


@settings(max_examples=3)  # each example compiles a sharded forward and backward
@given(
    p=problems(),
    per_device=st.integers(1, 5),
    which=st.sampled_from([("chunked", 4), ("chunked", 3), ("scan", 2)]),
)
@example(p=EVERYTHING, per_device=3, which=("chunked", 2))  # run first: the draws add to them
@example(p=EVERYTHING, per_device=2, which=("scan", 2))
def test_context_parallel_equals_numpy_over_drawn_problems(p, per_device, which):
    """As above over drawn batch, heads (GQA), Dk != Dv, gate kinds, segments (a new one at
    each token with probability up to 0.5) and decays, with 1-5 tokens per device."""
    p = dict(p)  # the shared example dict stays whole
    rng = np.random.default_rng(p.pop("seed"))
    q, k, v, g, seg, s0, d_out, d_state = _inputs(rng, **{**p, "length": 8 * per_device})
    form, chunk_size = which
    _check_context_parallel(q, k, v, g, seg, s0, d_out, d_state, form=form, chunk_size=chunk_size)


def _check_context_parallel(q, k, v, g, seg, s0, d_out, d_state, *, form, chunk_size):
    """Values and gradients of gated_linear_attention_cp on 8 devices against NumPy."""
    assert len(jax.devices()) == 8
    mesh = Mesh(np.asarray(jax.devices()), ("seq",))

    def local(q, k, v, g, seg, s0):
        o, s = cp.gated_linear_attention_cp(
            q,
            k,
            v,
            g,
            axis_name="seq",
            axis_size=8,
            initial_state=s0,
            return_state=True,
            segment_ids=seg,
            form=form,
            chunk_size=chunk_size,
        )
        last = jax.lax.axis_index("seq") == 7  # the last device's state is the final one
        return o, jax.lax.psum(jnp.where(last, s, 0.0), "seq")

    seq = P(None, "seq")
    fn = jax.shard_map(local, mesh=mesh, in_specs=(seq,) * 5 + (P(),), out_specs=(seq, P()))

    def loss(q, k, v, g, s0):
        o, s = fn(q, k, v, g, seg, s0)
        return jnp.sum(o * d_out) + jnp.sum(s * d_state)

    out, state = jax.jit(fn)(q, k, v, g, seg, s0)
    grads = jax.jit(jax.grad(loss, range(5)))(q, k, v, g, s0)
    kw = dict(initial_state=s0, segment_ids=seg)
    want_out, want_state = np_gated_linear_attention(q, k, v, g, **kw)
    _close(out, want_out)
    _close(state, want_state)
    ref = np_gated_linear_attention_grads(q, k, v, g, d_out, d_state=d_state, **kw)
    for name, got in zip(GRAD_NAMES, grads, strict=True):
        _close(got, ref[name])


def test_zero_gate_is_linear_attention_with_its_numerator_and_denominator():
    """g = 0 is plain (unnormalised) linear attention. linear_attention always normalises, so
    GLA runs on [v, 1]: its two parts are the numerator and the denominator, and their ratio is
    linear_attention with the identity feature map (positive q, k: positive denominators)."""
    rng = np.random.default_rng(5)
    q, k = (rng.uniform(0.1, 1.0, (2, 33, 2, 4)).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((2, 33, 2, 3)).astype(np.float32)
    vz = np.concatenate([v, np.ones_like(v[..., :1])], axis=-1)
    zero = np.zeros((2, 33, 2), np.float32)
    for form in ("chunked", "scan"):
        out = ops.gated_linear_attention(q, k, vz, zero, scale=1.0, form=form, chunk_size=8)
        want = ops.linear_attention(q, k, v, feature_map=lambda x: x, causal=True)
        _close(out[..., :3] / out[..., 3:], want, 1e-5)


def test_scalar_gate_equals_the_per_dim_gate_broadcast():
    rng = np.random.default_rng(6)
    q, k, v, g, seg, s0, _, _ = _inputs(rng, 2, 50, 2, 2, 4, 3, gate="scalar", strong=0.1)
    kw = dict(initial_state=s0, segment_ids=seg, chunk_size=16)
    wide = np.broadcast_to(g[..., None], (*g.shape, 4))
    _close(
        ops.gated_linear_attention(q, k, v, g, **kw),
        ops.gated_linear_attention(q, k, v, wide, **kw),
        1e-5,
    )


def test_retnet_decay_equals_the_parallel_retention_form():
    """RetNet (Sun et al. 2023): gamma_h = 1 - 2^(-5 - h), o = (scale Q K^T * D) V with
    D_ij = gamma^(i - j) for j <= i, computed here in float64 from the closed form."""
    rng = np.random.default_rng(7)
    b, length, heads, d = 2, 70, 4, 8
    q, k, v = (rng.standard_normal((b, length, heads, d)).astype(np.float32) for _ in range(3))
    gamma = 1.0 - 2.0 ** (-5.0 - np.arange(heads))
    g = np.broadcast_to(np.log(gamma), (b, length, heads)).astype(np.float32)
    i = np.arange(length)
    decay = np.where(i[:, None] >= i[None, :], gamma[:, None, None] ** (i[:, None] - i[None, :]), 0)
    scores = np.einsum("bihd,bjhd->bhij", q.astype(np.float64), k) * d**-0.5 * decay
    want = np.einsum("bhij,bjhd->bihd", scores, v)
    for form in ("chunked", "scan"):
        _close(ops.gated_linear_attention(q, k, v, g, form=form), want)


def test_public_names_and_forms():
    assert att.GATED_FORMS == ("chunked", "scan", "naive")
    assert ops.gated_linear_attention is att.gated_linear_attention
    assert ops.gated_linear_attention_step is att.gated_linear_attention_step


_Q = np.zeros((1, 6, 2, 4), np.float32)
_V = np.zeros((1, 6, 2, 3), np.float32)
_G = np.zeros((1, 6, 2), np.float32)
BAD = [
    (dict(log_gate=_G + 0.5), r"log_gate must be finite and <= 0 .* got 0\.5 at index \(0, 0, 0\)"),
    (dict(log_gate=np.full_like(_G, np.nan)), "log_gate must be finite and <= 0"),
    (dict(log_gate=np.zeros((1, 6, 2, 5))), r"log_gate must be \(1, 6, 2\) or \(1, 6, 2, 4\)"),
    (
        dict(segment_ids=np.array([[0, 0, 1, 1, 0, 2]])),
        "segment_ids must be non-decreasing along length; row 0 goes from 1 to 0 at position 4",
    ),
    (
        dict(segment_ids=np.zeros((1, 5), np.int32)),
        r"segment_ids must be an integer array \[batch, length\] = \(1, 6\), got int32 \(1, 5\)",
    ),
    (dict(segment_ids=np.zeros((1, 6), np.float32)), "segment_ids must be an integer array"),
    (dict(k=np.zeros((1, 6, 2, 5), np.float32)), "q and k head_dim differ"),
    (
        dict(k=np.zeros((1, 5, 2, 4), np.float32), v=np.zeros((1, 5, 2, 3), np.float32)),
        "gated linear attention is causal and needs q_length == kv_length, got 6, 5",
    ),
    (
        dict(initial_state=np.zeros((1, 2, 3, 4))),
        r"initial_state must be \[batch, heads, key_dim, value_dim\] = \(1, 2, 4, 3\)",
    ),
    (dict(form="cumsum"), "unknown form 'cumsum'; allowed: chunked, scan, naive"),
    (dict(chunk_size=0), "chunk_size must be a positive int, got 0"),
    (dict(scale="big"), "scale must be a number or None"),
    (dict(return_state="yes"), "return_state must be a bool, got 'yes'"),
]


@pytest.mark.parametrize("bad,message", BAD)
def test_bad_input_raises_one_line_value_error(bad, message, monkeypatch):
    """Raised at the boundary, before anything is traced: the kernels are replaced by a trap."""
    monkeypatch.setattr(chunk, "chunked", lambda *a, **k: pytest.fail("reached the kernel"))
    args = dict(q=_Q, k=_Q, v=_V, log_gate=_G) | bad
    q, k, v, g = (args.pop(n) for n in ("q", "k", "v", "log_gate"))
    with pytest.raises(ValueError, match=message) as err:
        ops.gated_linear_attention(q, k, v, g, **args)
    assert "\n" not in str(err.value)


def test_bad_step_input_raises():
    state = np.zeros((1, 2, 4, 3), np.float32)
    q, v, g = _Q[:, 0], _V[:, 0], _G[:, 0]
    with pytest.raises(ValueError, match="log_gate must be finite and <= 0"):
        ops.gated_linear_attention_step(state, q, q, v, g + 1.0)
    with pytest.raises(ValueError, match=r"state must be \[batch, heads, key_dim, value_dim\]"):
        ops.gated_linear_attention_step(state[..., :2], q, q, v, g)
    with pytest.raises(ValueError, match=r"reset_t must be a bool array \[batch\]"):
        ops.gated_linear_attention_step(state, q, q, v, g, reset_t=np.zeros(1, np.int32))
    with pytest.raises(ValueError, match=r"^state must be an array .* got None"):
        ops.gated_linear_attention_step(None, q, q, v, g)


def _fwd_bwd_bytes(length: int, form: str) -> int:
    """Compiled fwd+bwd memory (AOT: arguments + outputs + temporaries), B1 H4 Dk = Dv = 64."""
    f32 = jax.ShapeDtypeStruct((1, length, 4, 64), jnp.float32)

    def loss(q, k, v, g):
        return jnp.sum(ops.gated_linear_attention(q, k, v, g, form=form))

    compiled = jax.jit(jax.value_and_grad(loss, range(4))).lower(f32, f32, f32, f32).compile()
    m = compiled.memory_analysis()
    return (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


@pytest.mark.parametrize("form", ["chunked", "scan"])
def test_fwd_bwd_memory_at_64k_tokens_is_under_1_gib(form):
    """No per-token states: 64k tokens x 4 heads x 64 x 64 fp32 states would be 4 GiB."""
    assert _fwd_bwd_bytes(2**16, form) <= 2**30


def test_fwd_bwd_memory_at_1m_tokens_is_under_16_gib():
    """Compiled only (not run): arguments and gradients alone are 8 GiB here."""
    assert _fwd_bwd_bytes(2**20, "chunked") <= 16 * 2**30
