"""Delta-rule attention (DeltaNet, Gated DeltaNet) against a float64 NumPy recurrence: every form
(chunked at default and tiny chunks, several blocks, scan, naive loop, decode steps, context
parallel on 8 fake devices), values and gradients, across shapes drawn by hypothesis."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from research.ops import attention as att
from research.ops.attention import context_parallel as cp
from research.ops.attention.delta import chunk
from research.ops.attention.segments import segment_starts
from tests.ops.references import np_delta_rule, np_delta_rule_grads

ATOL = 2e-4
NAMES = ("q", "k", "v", "beta", "log_gate", "initial_state")


def _inputs(seed, b, length, h, hkv, dk, dv, *, gated=True, strong=False, segments=False):
    """float32 inputs with L2-normalised k (as the layer gives), beta in [0, 1], log_gate <= 0
    (down to -20 when `strong`), and segment ids with length-1 segments (or None)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, length, h, dk))
    k = rng.standard_normal((b, length, hkv, dk))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((b, length, hkv, dv))
    beta = rng.uniform(0, 1, (b, length, h))
    g = -rng.uniform(0, 2, (b, length, h)) if gated else None
    if gated and strong:
        g = np.where(rng.uniform(size=g.shape) < 0.3, -20.0, g)
    s0 = rng.standard_normal((b, h, dk, dv))
    seg = np.cumsum(rng.uniform(size=(b, length)) < 0.3, axis=1) if segments else None
    f32 = lambda x: None if x is None else np.asarray(x, np.float32)  # noqa: E731
    return dict(
        q=f32(q),
        k=f32(k),
        v=f32(v),
        beta=f32(beta),
        log_gate=f32(g),
        initial_state=f32(s0),
        segment_ids=seg,
    )


def _reference(x, **kw):
    return np_delta_rule(
        x["q"],
        x["k"],
        x["v"],
        x["beta"],
        log_gate=x["log_gate"],
        initial_state=x["initial_state"],
        segment_ids=x["segment_ids"],
        **kw,
    )


def _arguments(x):
    """(positional, keyword) arguments of the delta-rule functions from drawn inputs."""
    names = ("log_gate", "initial_state", "segment_ids")
    return (x["q"], x["k"], x["v"], x["beta"]), {n: x[n] for n in names}


def _eager(fn, x, **kw):
    """fn on the inputs, not jitted: the value checks (beta in [0, 1], gates <= 0, segment ids
    non-decreasing) run on concrete arrays only."""
    args, kwargs = _arguments(x)
    return fn(*args, **kwargs, **kw)


def _call(fn, x, **kw):
    """fn on the drawn inputs, jitted (one compile per form and shape, as in training); `kw`
    holds the static options."""
    args, kwargs = _arguments(x)
    return jax.jit(functools.partial(fn, **kw))(*args, **kwargs)


shapes = st.fixed_dictionaries(
    {
        "b": st.integers(1, 2),
        "length": st.integers(1, 40),
        "heads": st.sampled_from([(1, 1), (2, 2), (4, 2), (4, 1)]),  # (H, Hkv): GQA too
        "dk": st.sampled_from([2, 4, 8]),
        "dv": st.sampled_from([1, 3, 8]),  # Dk != Dv
        "chunk": st.integers(1, 9),
        "gated": st.booleans(),
        "strong": st.booleans(),
        "segments": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


def _draw(s):
    h, hkv = s["heads"]
    return _inputs(
        s["seed"],
        s["b"],
        s["length"],
        h,
        hkv,
        s["dk"],
        s["dv"],
        gated=s["gated"],
        strong=s["strong"],
        segments=s["segments"],
    )


FORMS = [("chunked", None), ("chunked", 64), ("scan", 64), ("naive", 64)]
# Every option at once (GQA, Dk != Dv, a partial last chunk, gates, strong betas, documents): run
# first by both property tests, so the few drawn examples (each compiles several forms) add to it.
EVERYTHING = dict(
    b=2,
    length=37,
    heads=(4, 2),
    dk=4,
    dv=3,
    chunk=7,
    gated=True,
    strong=True,
    segments=True,
    seed=5,
)


# ---------------------------------------------------------------- values
@settings(max_examples=4)  # each example compiles four forms
@given(s=shapes)
@example(s=EVERYTHING)
def test_every_form_equals_numpy_recurrence(s):
    x = _draw(s)
    want, want_state = _reference(x)
    for form, c in FORMS:
        out, state = _call(
            att.delta_rule_attention, x, form=form, chunk_size=c or s["chunk"], return_state=True
        )
        np.testing.assert_allclose(out, want, atol=ATOL, err_msg=f"{form} {c}")
        np.testing.assert_allclose(state, want_state, atol=ATOL, err_msg=f"{form} {c}")


# ---------------------------------------------------------------- gradients
def _grads(fn, x, d_out, d_state):
    """Gradients of sum(o * d_out) + sum(S * d_state) with respect to NAMES (no log_gate if
    ungated)."""
    names = [n for n in NAMES if x[n] is not None]

    def loss(*args):
        kw = dict(zip(names, args, strict=True))
        o, s = fn(kw.pop("q"), kw.pop("k"), kw.pop("v"), kw.pop("beta"), **kw)
        return jnp.sum(o * d_out) + jnp.sum(s * d_state)

    grads = jax.jit(jax.grad(loss, range(len(names))))(*(x[n] for n in names))
    return dict(zip(names, grads, strict=True))


def _check_grads(fn, x, seed):
    rng = np.random.default_rng(seed + 7)
    want, state = _reference(x)
    d_out, d_state = rng.standard_normal(want.shape), rng.standard_normal(state.shape)
    ref = np_delta_rule_grads(
        x["q"],
        x["k"],
        x["v"],
        x["beta"],
        d_out,
        d_state=d_state,
        log_gate=x["log_gate"],
        initial_state=x["initial_state"],
        segment_ids=x["segment_ids"],
    )
    got = _grads(fn, x, d_out.astype(np.float32), d_state.astype(np.float32))
    for name, g in got.items():
        np.testing.assert_allclose(g, ref[name], atol=5e-4, rtol=1e-4, err_msg=name)


def _decode_steps(q, k, v, beta, *, segment_ids, log_gate=None, initial_state=None):
    """`delta_rule_step` token by token (a lax.scan), reset_t where a new segment starts."""
    b, length = q.shape[:2]
    seg = np.zeros((b, length), int) if segment_ids is None else segment_ids
    starts = np.concatenate([np.zeros((b, 1), bool), seg[:, 1:] != seg[:, :-1]], 1)
    gates = jnp.zeros(beta.shape) if log_gate is None else log_gate

    def step(state, x):
        q_t, k_t, v_t, beta_t, g_t, reset_t = x
        g_t = None if log_gate is None else g_t
        return att.delta_rule_step(state, q_t, k_t, v_t, beta_t, log_gate_t=g_t, reset_t=reset_t)

    xs = tuple(jnp.moveaxis(jnp.asarray(a), 1, 0) for a in (q, k, v, beta, gates, starts))
    state, out = jax.lax.scan(step, initial_state, xs)
    return jnp.moveaxis(out, 0, 1), state


@settings(max_examples=3)  # each example compiles the step's loop and its backward
@given(s=shapes)
@example(s=EVERYTHING)
def test_decode_steps_token_by_token_equal_numpy_values_and_gradients(s):
    """The decode step over a whole drawn problem (GQA, Dk != Dv, gates down to -20 or none,
    segments through reset_t), values and gradients against the float64 recurrence."""
    x = _draw(s)
    fn = functools.partial(_decode_steps, segment_ids=x["segment_ids"])
    want, want_state = _reference(x)
    args, kwargs = _arguments(x)
    kwargs.pop("segment_ids")
    out, state = jax.jit(fn)(*args, **kwargs)
    np.testing.assert_allclose(out, want, atol=ATOL)
    np.testing.assert_allclose(state, want_state, atol=ATOL)
    _check_grads(fn, x, s["seed"])


@settings(max_examples=2)  # each example compiles three backward passes
@given(s=shapes)
@example(s=EVERYTHING)
def test_gradients_equal_numpy_reverse_recurrence(s):
    x = _draw(s)
    for form, c in [("chunked", s["chunk"]), ("chunked", 64), ("scan", 64)]:

        def fn(q, k, v, beta, form=form, c=c, segment_ids=x["segment_ids"], **kw):
            return att.delta_rule_attention(
                q,
                k,
                v,
                beta,
                form=form,
                chunk_size=c,
                segment_ids=segment_ids,
                return_state=True,
                **kw,
            )

        _check_grads(fn, x, s["seed"])


def test_numpy_reference_gradients_match_finite_differences():
    x = _inputs(3, 1, 9, 2, 1, 3, 2, segments=True)
    rng = np.random.default_rng(0)
    want, _ = _reference(x)
    d_out = rng.standard_normal(want.shape)
    ref = np_delta_rule_grads(
        x["q"],
        x["k"],
        x["v"],
        x["beta"],
        d_out,
        log_gate=x["log_gate"],
        initial_state=x["initial_state"],
        segment_ids=x["segment_ids"],
    )
    for name in NAMES:
        d = rng.standard_normal(x[name].shape)
        hi, lo = ({**x, name: x[name].astype(np.float64) + e * d} for e in (1e-6, -1e-6))
        fd = (np.sum(_reference(hi)[0] * d_out) - np.sum(_reference(lo)[0] * d_out)) / 2e-6
        np.testing.assert_allclose(np.sum(ref[name] * d), fd, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("size", [1, 3, 8, 9, 16, 64])  # powers of two and padded sizes
def test_unit_lower_inverse_and_its_gradient(size):
    """T = (I + A)^{-1} (forward substitution in 8 x 8 blocks, then recursive doubling) and its
    VJP against NumPy's inverse, in float64 terms, with A of the delta rule's magnitude."""
    rng = np.random.default_rng(size)
    a = np.tril(rng.uniform(-1, 1, (2, size, size)), -1).astype(np.float32)
    want = np.linalg.inv(np.eye(size) + a.astype(np.float64))
    np.testing.assert_allclose(chunk.unit_lower_inverse(a), want, atol=1e-4 * size)
    dt = rng.standard_normal(want.shape)
    _, vjp = jax.vjp(chunk.unit_lower_inverse, jnp.asarray(a))
    got = np.tril(vjp(jnp.asarray(dt, jnp.float32))[0], -1)
    ref = np.tril(-want.swapaxes(-1, -2) @ dt @ want.swapaxes(-1, -2), -1)
    np.testing.assert_allclose(got, ref, atol=1e-3 * size)


@pytest.mark.parametrize("length", [103, 120])  # several blocks; 103 is padded
def test_chunked_kernel_over_several_blocks(length):
    x = _inputs(5, 2, length, 2, 2, 6, 5, strong=True, segments=True)
    reset = segment_starts(x["segment_ids"])
    assert chunk._geometry(x["q"], x["v"], 4, 1)[1] >= 3  # three or more blocks

    def fn(q, k, v, beta, log_gate, initial_state):
        return chunk.chunked(q, k, v, beta, log_gate, reset, initial_state, 6**-0.5, 4, 1)

    out, state = fn(*(x[n] for n in NAMES))
    want, want_state = _reference(x)
    np.testing.assert_allclose(out, want, atol=ATOL)
    np.testing.assert_allclose(state, want_state, atol=ATOL)
    _check_grads(
        lambda q, k, v, beta, **kw: fn(q, k, v, beta, kw["log_gate"], kw["initial_state"]), x, 5
    )


# ---------------------------------------------------------------- decode, identities
def test_decode_steps_continue_a_chunked_prefill():
    x = _inputs(11, 2, 21, 4, 2, 8, 6, strong=True)
    want, want_state = _reference(x)
    pre = {**x, **{n: x[n][:, :13] for n in ("q", "k", "v", "beta", "log_gate")}}
    out, state = _call(att.delta_rule_attention, pre, chunk_size=4, return_state=True)
    np.testing.assert_allclose(out, want[:, :13], atol=ATOL)
    for t in range(13, 21):
        state, o_t = att.delta_rule_step(
            state,
            x["q"][:, t],
            x["k"][:, t],
            x["v"][:, t],
            x["beta"][:, t],
            log_gate_t=x["log_gate"][:, t],
        )
        np.testing.assert_allclose(o_t, want[:, t], atol=ATOL)
    np.testing.assert_allclose(state, want_state, atol=ATOL)


@pytest.mark.parametrize("form", ["naive", "step"])
def test_naive_form_and_decode_step_gradients_equal_numpy(form):
    """The readable loop and the decode step (one token at a time from the initial state) have
    the reference's gradients too: q, k, v, beta, the gates (down to -20) and the state."""
    x = _inputs(13, 2, 6, 2, 1, 4, 3, strong=True)

    def fn(q, k, v, beta, log_gate, initial_state, **kw):
        if form == "naive":
            return att.delta_rule_attention(
                q,
                k,
                v,
                beta,
                log_gate=log_gate,
                initial_state=initial_state,
                form="naive",
                return_state=True,
            )
        state, outs = initial_state, []
        for t in range(q.shape[1]):
            state, o = att.delta_rule_step(
                state, q[:, t], k[:, t], v[:, t], beta[:, t], log_gate_t=log_gate[:, t]
            )
            outs.append(o)
        return jnp.stack(outs, axis=1), state

    _check_grads(fn, x, 11)


@pytest.mark.parametrize("form", att.DELTA_FORMS)
def test_gated_delta_with_zero_gate_is_deltanet(form):
    x = _inputs(2, 2, 19, 2, 2, 4, 3, gated=False, segments=True)
    plain = _call(att.delta_rule_attention, x, form=form, chunk_size=4)
    zero = {**x, "log_gate": np.zeros_like(x["beta"])}
    np.testing.assert_allclose(
        _call(att.delta_rule_attention, zero, form=form, chunk_size=4), plain, atol=1e-6
    )


@pytest.mark.parametrize("form", att.DELTA_FORMS)
def test_beta_zero_leaves_the_state_unchanged(form):
    x = _inputs(4, 2, 17, 2, 1, 4, 3, gated=False)
    x["beta"] = np.zeros_like(x["beta"])
    out, state = _call(att.delta_rule_attention, x, form=form, chunk_size=4, return_state=True)
    np.testing.assert_allclose(state, x["initial_state"], atol=1e-6)
    readout = np.einsum("blhk,bhkv->blhv", x["q"] * 4**-0.5, x["initial_state"])
    np.testing.assert_allclose(out, readout, atol=1e-5)


@pytest.mark.parametrize("form", att.DELTA_FORMS)
@pytest.mark.parametrize("gated", [False, True])
def test_packed_equals_separate(form, gated):
    a = _inputs(6, 1, 11, 2, 2, 4, 3, gated=gated, strong=True)  # spans chunks of 4
    b = _inputs(7, 1, 6, 2, 2, 4, 3, gated=gated, strong=True)
    packed = {
        n: None if a[n] is None else np.concatenate([a[n], b[n]], axis=1)
        for n in ("q", "k", "v", "beta", "log_gate")
    }
    packed.update(initial_state=a["initial_state"], segment_ids=np.array([[3] * 11 + [5] * 6]))
    out, state = _call(att.delta_rule_attention, packed, form=form, chunk_size=4, return_state=True)
    np.testing.assert_allclose(
        out[:, :11], _call(att.delta_rule_attention, a, form=form), atol=1e-5
    )
    b_alone, b_state = _call(
        att.delta_rule_attention, {**b, "initial_state": None}, form=form, return_state=True
    )
    np.testing.assert_allclose(out[:, 11:], b_alone, atol=1e-5)
    np.testing.assert_allclose(state, b_state, atol=1e-5)


# ---------------------------------------------------------------- memory
@pytest.mark.parametrize("length, budget_gib", [(1 << 16, 1), (1 << 20, 16)])
def test_compiled_backward_memory_is_linear_in_length(length, budget_gib):
    """AOT compile only (nothing runs): B1 H4 Dk = Dv = 64 fp32, gated, fwd+bwd."""
    sd = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731

    def loss(q, k, v, beta, g):
        return jnp.sum(att.delta_rule_attention(q, k, v, beta, log_gate=g))

    f = jax.jit(jax.grad(loss, argnums=range(5)))
    qkv = sd(1, length, 4, 64)
    m = f.lower(qkv, qkv, qkv, sd(1, length, 4), sd(1, length, 4)).compile().memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    assert total <= budget_gib * 2**30, total / 2**30


# ---------------------------------------------------------------- context parallel
def _cp(x, **kw):
    """delta_rule_attention_cp on 8 fake devices, sequence sharded; returns (out, final state)."""
    mesh = Mesh(np.asarray(jax.devices()), ("seq",))
    seq, rep = P(None, "seq"), P()
    gated, packed = x["log_gate"] is not None, x["segment_ids"] is not None

    def local(q, k, v, beta, s0, g, seg):
        o, s = cp.delta_rule_attention_cp(
            q,
            k,
            v,
            beta,
            axis_name="seq",
            initial_state=s0,
            log_gate=g if gated else None,
            segment_ids=seg if packed else None,
            return_state=True,
            **kw,
        )
        last = jax.lax.axis_index("seq") == 7  # the last device's state is the final one
        return o, jax.lax.psum(jnp.where(last, s, 0.0), "seq")

    fn = jax.shard_map(
        local, mesh=mesh, in_specs=(seq, seq, seq, seq, rep, seq, seq), out_specs=(seq, rep)
    )
    g = x["log_gate"] if gated else np.zeros_like(x["beta"])
    seg = x["segment_ids"] if packed else np.zeros(x["beta"].shape[:2], np.int32)

    def run(q, k, v, beta, initial_state, log_gate=g):
        return jax.jit(fn)(q, k, v, beta, initial_state, log_gate, seg)

    return run


@settings(max_examples=3)  # each example compiles two sharded forms and a sharded backward
@given(s=shapes, per_device=st.integers(1, 5))
def test_context_parallel_equals_numpy(s, per_device):
    assert len(jax.devices()) == 8
    h, hkv = s["heads"]
    x = _inputs(
        s["seed"],
        s["b"],
        8 * per_device,
        h,
        hkv,
        s["dk"],
        s["dv"],
        gated=s["gated"],
        strong=s["strong"],
        segments=s["segments"],
    )
    for form in ("chunked", "scan"):
        run = _cp(x, form=form, chunk_size=s["chunk"])
        out, state = run(x["q"], x["k"], x["v"], x["beta"], x["initial_state"])
        want, want_state = _reference(x)
        np.testing.assert_allclose(out, want, atol=ATOL, err_msg=form)
        np.testing.assert_allclose(state, want_state, atol=ATOL, err_msg=form)

    def fn(q, k, v, beta, *, initial_state, log_gate=None, **_):
        return run(q, k, v, beta, initial_state, *(() if log_gate is None else (log_gate,)))

    _check_grads(fn, x, s["seed"])


def test_context_parallel_segment_across_a_shard_boundary():
    x = _inputs(9, 1, 32, 2, 2, 4, 4, strong=True)
    # Shards of 4: one segment over shards 0-2, length-1 segments at 12 and 13, one that spans
    # shards 3-7 (its first token at 14, mid-shard).
    x["segment_ids"] = np.array([[0] * 12 + [1, 2] + [3] * 18])
    out, state = _cp(x, chunk_size=2)(x["q"], x["k"], x["v"], x["beta"], x["initial_state"])
    want, want_state = _reference(x)
    np.testing.assert_allclose(out, want, atol=ATOL)
    np.testing.assert_allclose(state, want_state, atol=ATOL)


# ---------------------------------------------------------------- errors
def _bad(**change):
    x = _inputs(0, 2, 8, 2, 2, 4, 3, segments=True)
    x.update(change)
    return x


@pytest.mark.parametrize(
    "x, message",
    [
        (
            _bad(beta=np.full((2, 8, 2), 1.5, np.float32)),
            r"beta must be in \[0.0, 1.0\], got 1.5 at \[batch, length, heads\] = \(0, 0, 0\)",
        ),
        (
            _bad(beta=np.full((2, 8, 2), np.nan, np.float32)),
            r"beta must be in \[0.0, 1.0\], got nan",
        ),
        (
            _bad(beta=np.zeros((2, 8), np.float32)),
            r"beta must be \[batch, length, heads\] = \(2, 8, 2\), got \(2, 8\)",
        ),
        (
            _bad(log_gate=np.full((2, 8, 2), 0.5, np.float32)),
            "log_gate must be finite and <= 0.0, got 0.5",
        ),
        (  # a decay of exactly 0 is a reset: segment_ids say it (the chunked form would NaN)
            _bad(log_gate=np.full((2, 8, 2), -np.inf, np.float32)),
            "log_gate must be finite and <= 0.0, got -inf",
        ),
        (_bad(k=np.zeros((2, 8, 2, 5), np.float32)), "q and k head_dim differ"),
        (
            _bad(segment_ids=np.array([[0, 1, 0, 1, 1, 1, 1, 1]] * 2)),
            "segment_ids must be non-decreasing along length; row 0 goes from 1 to 0 at position 2",
        ),
        (
            _bad(segment_ids=np.zeros((2, 7), np.int32)),
            r"segment_ids must be an integer array \[batch, length\] = \(2, 8\)",
        ),
        (
            _bad(initial_state=np.zeros((2, 2, 3, 4), np.float32)),
            r"initial_state must be \[batch, heads, key_dim, value_dim\] = \(2, 2, 4, 3\)",
        ),
    ],
)
def test_bad_inputs_give_one_line_value_errors(x, message):
    with pytest.raises(ValueError, match=message) as err:
        _eager(att.delta_rule_attention, x)
    assert "\n" not in str(err.value)


def test_bad_options_are_refused():
    x = _bad()
    with pytest.raises(ValueError, match="unknown form 'fused'; allowed: chunked, scan, naive"):
        _eager(att.delta_rule_attention, x, form="fused")
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        _eager(att.delta_rule_attention, x, chunk_size=0)
    s0, t0 = x["initial_state"], [x[n][:, 0] for n in ("q", "k", "v", "beta")]
    with pytest.raises(ValueError, match="beta must be in"):
        att.delta_rule_step(s0, *t0[:3], t0[3] + 2)
    with pytest.raises(ValueError, match=r"^state must be \[batch, heads, key_dim, value_dim\]"):
        att.delta_rule_step(s0[..., :2], *t0)
    with pytest.raises(ValueError, match=r"^state must be an array .* got None"):
        att.delta_rule_step(None, *t0)
    with pytest.raises(ValueError, match=r"reset_t must be a bool array \[batch\]"):
        att.delta_rule_step(s0, *t0, reset_t=np.zeros(2, np.int32))


def test_context_parallel_refuses_bad_chunk_sizes_and_lengths():
    from research.ops.attention import context_parallel as cp

    x = _bad()
    args = [x[n] for n in ("q", "k", "v")]
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        cp.delta_rule_attention_cp(*args, x["beta"], axis_name="seq", axis_size=1, chunk_size=0)
    g = np.zeros(x["beta"].shape, np.float32)
    for form in ("chunked", "scan"):
        with pytest.raises(ValueError, match="chunk_size must be a positive int, got -3"):
            cp.gated_linear_attention_cp(
                *args, g, axis_name="seq", axis_size=1, chunk_size=-3, form=form
            )
    with pytest.raises(ValueError, match="is causal and needs q_length == kv_length, got 8, 7"):
        q, k, v = args
        cp.gated_linear_attention_cp(q, k[:, :7], v[:, :7], g, axis_name="seq", axis_size=1)


def test_decode_steps_reset_at_a_new_segment_as_segment_ids_do():
    x = _inputs(12, 2, 9, 2, 2, 4, 3, strong=True)
    seg = np.array([[0] * 5 + [1] * 4, [0] * 2 + [1] * 7])
    want, _ = _reference({**x, "segment_ids": seg})  # float64 NumPy, restarting per segment
    state = x["initial_state"]
    for t in range(9):
        reset = (seg[:, t] != seg[:, t - 1]) if t else np.zeros(2, bool)
        state, o_t = att.delta_rule_step(
            state,
            *(x[n][:, t] for n in ("q", "k", "v", "beta")),
            log_gate_t=x["log_gate"][:, t],
            reset_t=reset,
        )
        np.testing.assert_allclose(o_t, want[:, t], atol=ATOL)
