"""The Pallas kernels (research/ops/attention/pallas) under the Pallas interpreter equal the XLA
chunked forms, their reference: fp32 values and gradients within 1e-5, bf16 inputs within 2e-2;
over lengths that are and are not multiples of the chunk and block, GQA, Dk != Dv, segments
crossing blocks and initial states. Blocks and lanes are shrunk (32 tokens, 16 lanes) so that
small, fast shapes cross several blocks and lane rows; the TPU sizes are compiled by Mosaic in
tests/plan/test_plan.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from research.ops import attention as att
from research.ops.attention.pallas import driver
from tests.ops.references import (
    NP_FEATURE_MAPS,
    np_delta_rule,
    np_gated_linear_attention,
    np_linear_attention,
)

KINDS = ("linear", "gla", "gla_scalar", "deltanet", "gated_deltanet")


def _problem(
    kind, length, heads, kv_heads, dv, p_new, with_state, strong, seed, dtype=np.float32, scale=1.0
):
    rng = np.random.default_rng(seed)
    b, dk = 2, 8
    q = rng.standard_normal((b, length, heads, dk))
    k = rng.standard_normal((b, length, kv_heads, dk))
    if kind in ("deltanet", "gated_deltanet"):  # the delta rule is stable for |k| <= 1
        q, k = (x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (q, k))
    v = rng.standard_normal((b, length, kv_heads, dv))
    gate_shape = (b, length, heads, dk) if kind == "gla" else (b, length, heads)
    # scale 1: decays of e^-1 a token, so only near keys count; 0.02: GLA's and RetNet's
    # order (-0.02 a token), so keys chunks and sub-chunks back and the carried state count.
    g = -rng.uniform(0.0, 2.0, gate_shape) * scale
    g = np.where(rng.random(gate_shape) < strong, -20.0, g)  # decays that underflow exp(-b)
    beta = rng.uniform(0.0, 1.0, (b, length, heads))
    seg = np.cumsum(rng.random((b, length)) < p_new, axis=1).astype(np.int32)
    s0 = rng.standard_normal((b, heads, dk, dv + (kind == "linear"))) if with_state else None
    cast = lambda x: None if x is None else jnp.asarray(x, dtype)  # noqa: E731
    return [cast(x) for x in (q, k, v, g, beta)], jnp.asarray(seg), cast(s0)


def _op(kind, implementation, seg, chunk):
    """(q, k, v, g, beta, s0) -> (out, final state or zeros) with `implementation`."""

    def fn(q, k, v, g, beta, s0):
        kw = dict(segment_ids=seg, chunk_size=chunk, implementation=implementation)
        if kind == "linear":
            init = None if s0 is None else att.LinearAttentionState(s0[..., :-1], s0[..., -1])
            out = att.linear_attention(q, k, v, causal=True, initial_state=init, **kw)
            return out, jnp.zeros(())
        kw.update(initial_state=s0, return_state=True)
        if kind.startswith("gla"):
            return att.gated_linear_attention(q, k, v, g, **kw)
        gate = g if kind == "gated_deltanet" else None
        return att.delta_rule_attention(q, k, v, beta, log_gate=gate, **kw)

    return fn


def _values_and_grads(kind, implementation, xs, seg, s0, chunk):
    fn = _op(kind, implementation, seg, chunk)
    wrt = (0, 1, 2, 3, 4) if s0 is None else (0, 1, 2, 3, 4, 5)

    def loss(*args):
        out, state = fn(*args)
        # a cotangent that differs per position and head (sin), and one for the state
        return jnp.sum(jnp.sin(out.astype(jnp.float32))) + jnp.sum(state**2), (out, state)

    (_, vals), grads = jax.jit(jax.value_and_grad(loss, wrt, has_aux=True))(*xs, s0)
    return vals, grads


def _close(got, want, rtol):
    want = np.asarray(want, np.float32)
    got = np.asarray(got, np.float32)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(1.0, np.abs(want).max()))


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    """Under the interpreter (CPU) blocks of 32 tokens and rows of 16 lanes; on a TPU
    (launch/accelerator_check.sh) the kernels' own sizes, which Mosaic's tiling requires."""
    backend = jax.default_backend()
    if backend == "gpu":
        pytest.skip(
            "implementation='pallas' has TPU kernels only (its GPU refusal is tested on CPU)"
        )
    if backend == "cpu":
        monkeypatch.setattr(driver, "BLOCK_TOKENS", 32)
        monkeypatch.setattr(driver, "LANES", 16)


@settings(max_examples=5, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    length=st.integers(1, 80),
    heads=st.sampled_from([(2, 2), (2, 1)]),
    dv=st.sampled_from([4, 8, 12]),
    p_new=st.sampled_from([0.0, 0.05, 0.3]),
    with_state=st.booleans(),
    strong=st.sampled_from([0.0, 0.2]),
    chunk=st.sampled_from([16, 32]),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1.0, 0.02]),
)
# every option at once: 3 blocks of 32 (the last partly padding), GQA, Dk != Dv, segments
# crossing blocks, an initial state, underflowing gates; and the same for the delta rule
@example("gla", 77, (2, 1), 12, 0.05, True, 0.2, 16, 0, 1.0)
@example("gated_deltanet", 77, (2, 1), 12, 0.05, True, 0.2, 16, 1, 1.0)
# mild gates, chunks of two 16-token sub-chunks, segments: the terms of keys in an earlier
# sub-chunk and chunk, and their segment masks, count (a dropped mask passed the cases above)
@example("gla", 77, (2, 1), 12, 0.1, True, 0.0, 32, 2, 0.02)
@example("gla_scalar", 77, (2, 2), 8, 0.1, True, 0.0, 32, 3, 0.02)
@example("linear", 77, (2, 1), 8, 0.1, True, 0.0, 32, 4, 1.0)
def test_kernels_equal_the_xla_chunked_forms(
    kind, length, heads, dv, p_new, with_state, strong, chunk, seed, scale
):
    xs, seg, s0 = _problem(kind, length, *heads, dv, p_new, with_state, strong, seed, scale=scale)
    seg = seg if p_new else None
    want, want_grads = _values_and_grads(kind, "xla", xs, seg, s0, chunk)
    got, got_grads = _values_and_grads(kind, "pallas", xs, seg, s0, chunk)
    for w, g in zip(want, got, strict=True):
        _close(g, w, 1e-5)
    for i, (w, g) in enumerate(zip(want_grads, got_grads, strict=True)):
        assert np.isfinite(np.asarray(g)).all(), i
        _close(g, w, 1e-5)


def test_bf16_inputs_within_2e_2_of_the_xla_forms():
    """bf16 q, k, v (and gates): every kernel's output within 2e-2 relative (the gradients are
    compared in fp32 by the tests above)."""
    problems = {
        kind: _problem(kind, 40, 2, 1, 8, 0.05, True, 0.0, 3, jnp.bfloat16) for kind in KINDS
    }

    @jax.jit
    def both():
        out = {}
        for kind, (xs, seg, s0) in problems.items():
            s0 = s0.astype(jnp.float32)
            for impl in ("xla", "pallas"):
                out[kind, impl] = _op(kind, impl, seg, 16)(*xs, s0)[0]
        return out

    out = both()
    for kind in KINDS:
        _close(out[kind, "pallas"], out[kind, "xla"], 2e-2)


def test_the_kernel_runs_and_is_called():
    """implementation='pallas' traces a pallas_call; 'xla' does not."""
    xs, seg, s0 = _problem("gla", 20, 2, 2, 4, 0.1, False, 0.0, 0)
    jaxprs = {
        impl: str(jax.make_jaxpr(_op("gla", impl, seg, 16))(*xs, s0)) for impl in ("xla", "pallas")
    }
    assert "pallas_call" in jaxprs["pallas"] and "pallas_call" not in jaxprs["xla"]


BAD = [
    (dict(form="scan"), "implementation='pallas' is a kernel of form='chunked'; got form='scan'"),
    (dict(chunk_size=24), "chunk_size=24 with implementation='pallas': use a power of two"),
    (dict(chunk_size=8), "chunk_size=8 with implementation='pallas'"),
    (dict(implementation="triton"), "implementation='triton' is not allowed; choose one of"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_bad_settings_are_one_line_errors(change, message):
    xs, _, _ = _problem("gated_deltanet", 20, 2, 2, 4, 0.0, False, 0.0, 0)
    q, k, v, g, beta = xs
    kw = {"implementation": "pallas", **change}
    for call in (
        lambda: att.gated_linear_attention(q, k, v, g, **kw),
        lambda: att.delta_rule_attention(q, k, v, beta, log_gate=g, **kw),
    ):
        with pytest.raises(ValueError, match=message.replace("(", r"\(")) as e:
            call()
        assert "\n" not in str(e.value)


def test_non_causal_and_gpu_are_refused_with_the_xla_form_named(monkeypatch):
    xs, _, _ = _problem("linear", 20, 2, 2, 4, 0.0, False, 0.0, 0)
    q, k, v, g, beta = xs
    with pytest.raises(ValueError, match="non-causal linear attention is two matmuls"):
        att.linear_attention(q, k, v, causal=False, implementation="pallas")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(ValueError, match="no GPU \\(Triton\\) kernel .* use implementation='xla'"):
        att.gated_linear_attention(q, k, v, g, chunk_size=16, implementation="pallas")


@pytest.mark.parametrize("kind", ["linear", "gla", "gla_scalar", "deltanet", "gated_deltanet"])
def test_kernels_equal_the_float64_numpy_recurrence(kind):
    """Beside the XLA forms, the kernels against float64 NumPy (tests/ops/references.py):
    packed segments across blocks, GQA, an initial state (not for linear: its reference is the
    kernel form, one segment at a time) and underflowing gates; output and final state within
    2e-5 of the reference's scale."""
    with_state = kind != "linear"
    xs, seg, s0 = _problem(kind, 70, 2, 1, 12, 0.05, with_state, 0.2, 7)
    q, k, v, g, beta = (np.asarray(x, np.float64) for x in xs)
    seg_np = np.asarray(seg)
    if kind == "linear":  # elu + 1, normalised, restarting at every segment
        out = np.zeros((*q.shape[:3], v.shape[-1]))
        rep = [np.repeat(x, q.shape[2] // x.shape[2], axis=2) for x in (k, v)]
        for row in range(q.shape[0]):
            for sid in np.unique(seg_np[row]):
                at = seg_np[row] == sid
                one = [x[row : row + 1, at] for x in (q, *rep)]
                out[row, at] = np_linear_attention(*one, NP_FEATURE_MAPS["elu"], causal=True)[0]
        want = (out, np.zeros(()))
    else:
        kw = dict(initial_state=np.asarray(s0, np.float64), segment_ids=seg_np)
        if kind in ("deltanet", "gated_deltanet"):
            gate = g if kind == "gated_deltanet" else None
            want = np_delta_rule(q, k, v, beta, log_gate=gate, **kw)
        else:
            want = np_gated_linear_attention(q, k, v, g, **kw)
    got = jax.jit(_op(kind, "pallas", seg, 16))(*xs, s0)
    for w, x in zip(want, got, strict=True):
        _close(x, w, 2e-5)
