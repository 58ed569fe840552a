"""Linear attention (every form and feature map, FAVOR+) against float64 NumPy references,
across shapes drawn by hypothesis; its gradients, padding and block sizes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from research.ops import attention as att
from research.ops import feature_maps as fm
from research.ops.attention import linear
from research.ops.attention.linear import naive
from research.ops.attention.linear.chunk import chunk_blocks
from tests.ops.attention.cases import ATOL, key_mask, q4, qkv
from tests.ops.references import (
    NP_FEATURE_MAPS,
    np_favor,
    np_linear_attention,
    np_softmax_attention,
)

shapes = st.fixed_dictionaries(
    {
        "b": st.integers(1, 2),
        "length": st.integers(1, 70),
        "h": st.integers(1, 3),
        "d": st.sampled_from([1, 4, 8]),
        "chunk": st.sampled_from([1, 8, 16, 64]),
        "padded": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


# ---------------------------------------------------------------- linear attention, values
@pytest.mark.parametrize("feature_map", ["elu", "relu", "taylor"])
@given(s=shapes)
def test_causal_linear_forms_equal_numpy_quadratic(feature_map, s):
    # head_dim 1 makes taylor's q^.k^ exactly -1 half the time: 0/0, a degenerate map.
    assume(feature_map != "taylor" or s["d"] > 1)
    q, k, v = qkv(s["seed"], s["b"], s["length"], s["length"], s["h"], s["d"])
    mask = key_mask(s["seed"], s["b"], s["length"]) if s["padded"] else None
    want = np_linear_attention(q, k, v, NP_FEATURE_MAPS[feature_map], causal=True, key_mask=mask)
    for form in att.LINEAR_FORMS:  # jitted: one compile per form and shape, as in training
        fn = functools.partial(
            att.linear_attention,
            feature_map=feature_map,
            causal=True,
            form=form,
            chunk_size=s["chunk"],
        )
        got = jax.jit(fn)(q, k, v, mask=mask)
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=ATOL, err_msg=form)


@pytest.mark.parametrize("feature_map", ["elu", "relu", "taylor"])
@given(s=shapes, lk=st.integers(1, 50))
def test_noncausal_linear_equals_kernel_reference(feature_map, s, lk):
    assume(feature_map != "taylor" or s["d"] > 1)
    q, k, v = qkv(s["seed"], s["b"], s["length"], lk, s["h"], s["d"], dv=3)
    mask = key_mask(s["seed"], s["b"], lk) if s["padded"] else None
    want = np_linear_attention(q, k, v, NP_FEATURE_MAPS[feature_map], causal=False, key_mask=mask)
    fn = functools.partial(att.linear_attention, feature_map=feature_map)
    got = jax.jit(fn)(q, k, v, mask=mask)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=ATOL)


def test_efficient_attention_softmax_feature_map():
    """Shen et al.: out = softmax_d(Q) (softmax_n(K)^T V), padded keys excluded from softmax_n."""
    q, k, v = qkv(0, 2, 9, 11, 2, 5, dv=3)
    mask = key_mask(0, 2, 11)
    got = att.linear_attention(q, k, v, feature_map="softmax", mask=mask)
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    sq = np.exp(q64 - q64.max(-1, keepdims=True))
    sq /= sq.sum(-1, keepdims=True)
    ek = np.where(mask[:, :, None, None], np.exp(k64), 0.0)
    sk = ek / ek.sum(1, keepdims=True)
    want = np.einsum("blhf,bhfv->blhv", sq, np.einsum("bnhf,bnhv->bhfv", sk, v64))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_gqa_linear_matches_repeated_heads():
    q, k, v = qkv(3, 2, 20, 20, 4, 8, hkv=2)
    got = att.linear_attention(q, k, v, causal=True, chunk_size=8)
    rep = [np.repeat(x, 2, axis=2) for x in (k, v)]
    want = np_linear_attention(q, *rep, NP_FEATURE_MAPS["elu"], causal=True)
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_favor_approximates_softmax_kernel():
    """With many random features, FAVOR+ linear attention approaches softmax attention."""
    q, k, v = qkv(5, 1, 16, 16, 2, 8)
    q, k = 0.5 * q, 0.5 * k  # moderate logits keep the estimator's variance small
    w = fm.favor_projection(jax.random.PRNGKey(0), 8192, 8)
    got = att.linear_attention(q, k, v, feature_map=fm.favor(w), causal=True, chunk_size=4)
    want = np_softmax_attention(q, k, v, causal=True)
    assert np.max(np.abs(np.asarray(got) - want)) < 0.05
    assert fm.feature_dim(fm.favor(w), 8) == 8192


def test_favor_equals_its_closed_form_in_every_form():
    """For a given projection W, FAVOR+ linear attention is the kernel form with
    phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m), x' = x d^-1/4, computed in float64 NumPy: chunked
    (causal, with a key mask), scan, cumsum and non-causal."""
    q, k, v = qkv(7, 2, 13, 13, 2, 8, dv=3)
    mask = key_mask(7, 2, 13)
    w = fm.favor_projection(jax.random.PRNGKey(3), 24, 8)
    phi = np_favor(w)
    for causal, form in ((True, "chunked"), (True, "scan"), (True, "cumsum"), (False, "chunked")):
        got = att.linear_attention(
            q, k, v, feature_map=fm.favor(w), causal=causal, mask=mask, form=form, chunk_size=4
        )
        want = np_linear_attention(q, k, v, phi, causal=causal, key_mask=mask)
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=ATOL, err_msg=f"{form} {causal}")


def test_favor_projection_rows_are_orthogonal_in_blocks():
    w = np.asarray(fm.favor_projection(jax.random.PRNGKey(1), 12, 8))
    block = w[:8] / np.linalg.norm(w[:8], axis=1, keepdims=True)
    np.testing.assert_allclose(block @ block.T, np.eye(8), atol=1e-5)
    assert w.shape == (12, 8)


def test_favor_by_name_with_projection_equals_the_callable():
    """feature_map="favor" (the ModelConfig spelling) works in the ops given its projection, in
    every entry point, and equals passing `fm.favor(W)`."""
    q, k, v = qkv(6, 2, 12, 12, 2, 8, dv=5)
    mask = key_mask(6, 2, 12)
    w = fm.favor_projection(jax.random.PRNGKey(2), 16, 8)
    named = dict(feature_map="favor", favor_projection=w)
    for causal in (True, False):
        got = att.linear_attention(q, k, v, causal=causal, mask=mask, chunk_size=4, **named)
        want = att.linear_attention(
            q, k, v, feature_map=fm.favor(w), causal=causal, mask=mask, chunk_size=4
        )
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"causal={causal}")
    assert fm.feature_dim("favor", 8, favor_projection=w) == 16
    state = att.linear_attention_state(k[:, :5], v[:, :5], mask=mask[:, :5], **named)
    want_state = att.linear_attention_state(
        k[:, :5], v[:, :5], mask=mask[:, :5], feature_map=fm.favor(w)
    )
    np.testing.assert_allclose(state.s, want_state.s, atol=1e-6)
    _, out = att.linear_attention_step(state, q[:, 5], k[:, 5], v[:, 5], **named)
    _, want_out = att.linear_attention_step(
        want_state, q[:, 5], k[:, 5], v[:, 5], feature_map=fm.favor(w)
    )
    np.testing.assert_allclose(out, want_out, atol=1e-6)
    # Under jit the projection is a traced argument (as a trained or resampled W would be).
    jitted = jax.jit(
        lambda w: att.linear_attention(
            q, k, v, causal=True, feature_map="favor", favor_projection=w
        )
    )
    np.testing.assert_allclose(
        jitted(w), att.linear_attention(q, k, v, causal=True, **named), atol=1e-6
    )


def _favor_calls(w=None, feature_map="favor"):
    kw = dict(feature_map=feature_map, favor_projection=w)
    s0 = att.linear_attention_init_state(1, 2, 8, 4)
    return {
        "linear_attention": lambda: att.linear_attention(q4, q4, q4, causal=True, **kw),
        "linear_attention_step": lambda: att.linear_attention_step(
            s0, q4[:, 0], q4[:, 0], q4[:, 0], **kw
        ),
        "linear_attention_state": lambda: att.linear_attention_state(q4, q4, **kw),
        "feature_dim": lambda: fm.feature_dim(feature_map, 4, favor_projection=w),
    }


@pytest.mark.parametrize("entry", list(_favor_calls()))
def test_favor_name_without_projection_says_how_to_make_one(entry):
    with pytest.raises(ValueError) as err:
        _favor_calls()[entry]()
    message = str(err.value)
    assert message == (
        "feature_map='favor' needs favor_projection=ops.favor_projection(key, num_features, "
        "head_dim)"
    )
    # The suggested expression runs, and with it the same call succeeds.
    from research import ops

    suggested = message.split("favor_projection=", 1)[1]
    w = eval(
        suggested, {"ops": ops, "key": jax.random.PRNGKey(0), "num_features": 8, "head_dim": 4}
    )
    _favor_calls(w)[entry]()


@pytest.mark.parametrize("entry", list(_favor_calls()))
def test_favor_projection_with_another_map_is_refused(entry):
    w = fm.favor_projection(jax.random.PRNGKey(0), 8, 4)
    with pytest.raises(ValueError, match="favor_projection is only used with feature_map='favor'"):
        _favor_calls(w, feature_map="elu")[entry]()


def test_causal_softmax_map_error_suggests_maps_that_work():
    """The error for a causal softmax map lists replacements; each one (favor with the
    projection its own error asks for) runs causally."""
    with pytest.raises(ValueError, match="cannot be causal") as err:
        att.linear_attention(q4, q4, q4, feature_map="softmax", causal=True)
    names = str(err.value).split("use ", 1)[1].split(" for causal")[0]
    suggested = names.replace(" or ", ", ").split(", ")
    assert suggested == ["elu", "relu", "taylor", "favor"]
    assert "favor_projection=ops.favor_projection(key, num_features, head_dim)" in str(err.value)
    w = fm.favor_projection(jax.random.PRNGKey(0), 8, 4)
    for name in suggested:
        extra = {"favor_projection": w} if name == "favor" else {}
        att.linear_attention(q4, q4, q4, feature_map=name, causal=True, **extra)
    with pytest.raises(ValueError, match="unknown feature_map 'cosine'.*favor \\(with favor_proj"):
        att.linear_attention(q4, q4, q4, feature_map="cosine")


# ---------------------------------------------------------------- linear attention, gradients
def _quadratic_linear_jax(q, k, v, phi):
    """Plain masked quadratic form in JAX, differentiated by autodiff: the gradient reference."""
    fq, fk = phi(q), phi(k)
    sim = jnp.einsum("bihf,bjhf->bhij", fq, fk) * jnp.tril(jnp.ones((q.shape[1],) * 2))
    num = jnp.einsum("bhij,bjhv->bihv", sim, v)
    return num / jnp.swapaxes(sim.sum(-1), 1, 2)[..., None]


@settings(max_examples=6)  # each shape compiles a backward pass: half the profile's
@given(s=shapes)
def test_chunked_and_scan_gradients_equal_reference(s):
    q, k, v = qkv(s["seed"], s["b"], s["length"], s["length"], s["h"], s["d"])
    cot = np.random.default_rng(s["seed"] + 7).standard_normal(v.shape).astype(np.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * cot)

    ref = jax.jit(
        jax.grad(loss(lambda *a: _quadratic_linear_jax(*a, fm.elu_feature_map)), (0, 1, 2))
    )(q, k, v)
    for form in ("chunked", "scan"):
        fn = lambda q, k, v, form=form: att.linear_attention(  # noqa: E731
            q, k, v, causal=True, form=form, chunk_size=s["chunk"]
        )
        got = jax.jit(jax.grad(loss(fn), (0, 1, 2)))(q, k, v)
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(g, r, atol=ATOL, rtol=ATOL, err_msg=form)


@pytest.mark.parametrize("length", [190, 150])  # 24 chunks: 3 blocks of 8; 19: padded to 24
@pytest.mark.parametrize("feature_map", ["elu", "taylor", "favor"])
def test_chunked_kernel_across_blocks_equals_cumsum_form(length, feature_map):
    """The chunked kernel walks blocks of chunks with a hand-written VJP; shrink the block so
    several blocks (and block padding) are exercised, with a key mask and an initial state,
    and compare values and all gradients with the autodiff'd cumsum form."""
    b, h, d, chunk = 2, 2, 8, 8
    block_bytes = 4 * b * h * (d + 1) * chunk * 4
    nc, nb = chunk_blocks(length, chunk, 4 * b * h * (d + 1), d, block_bytes)
    assert (nc, nb) == (8, 3)
    if feature_map == "favor":
        feature_map = fm.favor(fm.favor_projection(jax.random.PRNGKey(3), 16, d))
    f = fm.feature_dim(feature_map, d)
    q, k, v = qkv(5, b, length, length, h, d)
    mask = jnp.asarray(key_mask(5, b, length))
    rng = np.random.default_rng(6)
    s0 = jnp.asarray(rng.uniform(0, 1, (b, h, f, d)), jnp.float32)
    z0 = jnp.asarray(rng.uniform(1, 2, (b, h, f)), jnp.float32)
    cot = rng.standard_normal(v.shape).astype(np.float32)

    def loss(form):
        def fn(q, k, v, s0, z0):
            init = att.LinearAttentionState(s0, z0)
            out = att.linear_attention(
                q,
                k,
                v,
                feature_map=feature_map,
                causal=True,
                form=form,
                chunk_size=chunk,
                mask=mask,
                initial_state=init,
                block_bytes=block_bytes,
            )
            return jnp.sum(out * cot), out

        return jax.value_and_grad(fn, argnums=(0, 1, 2, 3, 4), has_aux=True)

    (_, got), got_grads = loss("chunked")(q, k, v, s0, z0)
    (_, want), want_grads = loss("cumsum")(q, k, v, s0, z0)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=ATOL)
    for name, g, w in zip("q k v s0 z0".split(), got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=ATOL, err_msg=name)


@pytest.mark.parametrize("form", att.LINEAR_FORMS)
@pytest.mark.parametrize("feature_map", ["elu", "taylor"])
def test_causal_linear_has_exactly_zero_gradient_from_the_future(form, feature_map):
    q, k, v = qkv(11, 1, 19, 19, 2, 4)
    t = 9

    def out_t(q, k, v):
        o = att.linear_attention(
            q, k, v, feature_map=feature_map, causal=True, form=form, chunk_size=4
        )
        return jnp.sum(o[:, t])

    for g in jax.grad(out_t, (0, 1, 2))(q, k, v):
        g = np.asarray(g)
        assert np.all(g[:, t + 1 :] == 0.0)
        assert np.any(g[:, : t + 1] != 0.0)


@pytest.mark.parametrize("form", att.LINEAR_FORMS)
def test_linear_padding_invariance(form):
    """Appending padded keys (any values) changes no output at real positions."""
    q, k, v = qkv(2, 2, 13, 13, 2, 4)
    pad = np.random.default_rng(9).standard_normal((2, 7, 2, 4)).astype(np.float32) * 100
    qp, kp, vp = (np.concatenate([x, pad], 1) for x in (q, k, v))
    mask = np.arange(20)[None].repeat(2, 0) < 13
    a = att.linear_attention(q, k, v, causal=True, form=form, chunk_size=8)
    b = att.linear_attention(qp, kp, vp, causal=True, form=form, chunk_size=8, mask=mask)
    np.testing.assert_allclose(b[:, :13], a, atol=1e-6)
    a = att.linear_attention(q, k, v)
    b = att.linear_attention(qp[:, :13], kp, vp, mask=mask)
    np.testing.assert_allclose(b, a, atol=1e-6)


@pytest.mark.parametrize("feature_map", ["elu", "relu", "taylor"])
def test_recurrent_steps_equal_parallel_form(feature_map):
    q, k, v = qkv(4, 2, 23, 23, 2, 6, dv=5)
    mask = key_mask(4, 2, 23)
    want = att.linear_attention(
        q, k, v, feature_map=feature_map, causal=True, mask=mask, chunk_size=8
    )
    state = att.linear_attention_init_state(2, 2, fm.feature_dim(feature_map, 6), 5)
    step = jax.jit(
        lambda s, q, k, v, m: att.linear_attention_step(
            s, q, k, v, feature_map=feature_map, mask_t=m
        )
    )
    outs = []
    for t in range(23):
        state, o = step(state, q[:, t], k[:, t], v[:, t], mask[:, t])
        outs.append(o)
    np.testing.assert_allclose(np.stack(outs, 1), want, atol=1e-5)


def test_chunked_bf16_at_16k_is_finite_and_close_to_fp32():
    q, k, v = qkv(8, 1, 16384, 16384, 2, 32)
    q, k = 0.3 * q, 0.3 * k
    ref = att.linear_attention(q, k, v, causal=True)
    bf = att.linear_attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), causal=True)
    assert bf.dtype == jnp.bfloat16
    bf = np.asarray(bf, np.float32)
    assert np.all(np.isfinite(bf))
    # bf16 inputs carry ~3 significant digits; the fp32 accumulation keeps the error at that
    # level: measured max 0.007 and mean 2.8e-5 against a mean |output| of 0.011. (The bounds
    # were 0.05 and 5e-3: a running mean of v that ignores q and k passed the mean bound.)
    err, ref = np.abs(bf - np.asarray(ref)), np.asarray(ref)
    assert np.max(err) < 1e-2
    assert np.mean(err) < 0.01 * np.mean(np.abs(ref))


# ---------------------------------------------------------------- naive reference, block sizes
@pytest.mark.parametrize("masked", [False, True])
def test_naive_quadratic_equals_chunked_scan_and_cumsum(masked):
    """linear/naive.py's O(L^2) masked form, on the same features, equals every causal form
    (chunked across several blocks, with block padding)."""
    b, length, h, d = 2, 150, 2, 8
    q, k, v = qkv(21, b, length, length, h, d)
    mask = jnp.asarray(key_mask(21, b, length)) if masked else None
    fq, fk = linear.features(q, k, "elu", mask)
    want = naive.quadratic(fq, fk, jnp.asarray(v))
    for form, block_bytes in [("chunked", None), ("chunked", 1), ("scan", None), ("cumsum", None)]:
        got = att.linear_attention(
            q, k, v, causal=True, form=form, mask=mask, chunk_size=4, block_bytes=block_bytes
        )
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-6, err_msg=form)
    ref = np_linear_attention(q, k, v, NP_FEATURE_MAPS["elu"], causal=True, key_mask=mask)
    np.testing.assert_allclose(want, ref, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("feature_map", ["elu", "favor"])
def test_linear_block_bytes_changes_no_value_or_gradient(feature_map):
    """block_bytes only tiles the chunked kernel: tiny blocks (many, padded) equal the default."""
    b, length, h, d = 2, 150, 2, 8
    if feature_map == "favor":
        feature_map = fm.favor(fm.favor_projection(jax.random.PRNGKey(4), 16, d))
    q, k, v = qkv(31, b, length, length, h, d)
    mask = jnp.asarray(key_mask(31, b, length))
    cot = np.random.default_rng(32).standard_normal(v.shape).astype(np.float32)

    def run(block_bytes):
        def loss(q, k, v):
            out = att.linear_attention(
                q,
                k,
                v,
                feature_map=feature_map,
                causal=True,
                mask=mask,
                chunk_size=8,
                block_bytes=block_bytes,
            )
            return jnp.sum(out * cot), out

        return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)

    assert chunk_blocks(length, 8, 4 * b * h * d, d, 1)[1] > 1  # tiny blocks: several of them
    (_, small), small_grads = run(1)
    (_, default), default_grads = run(None)
    np.testing.assert_allclose(small, default, atol=1e-5, rtol=1e-5)
    for name, g, w in zip("qkv", small_grads, default_grads, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5, err_msg=name)
