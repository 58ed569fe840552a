"""Attention ops against float64 NumPy references, across shapes drawn by hypothesis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from research.ops import attention as att
from research.ops import feature_maps as fm
from research.ops.attention import common, linear
from research.ops.attention.linear import naive
from research.ops.attention.linear.chunk import chunk_blocks
from tests.ops.references import NP_FEATURE_MAPS, np_linear_attention, np_softmax_attention

ATOL = 1e-4


def _qkv(seed, b, lq, lk, h, d, dv=None, hkv=None):
    rng = np.random.default_rng(seed)
    hkv = hkv or h
    q = rng.standard_normal((b, lq, h, d)).astype(np.float32)
    k = rng.standard_normal((b, lk, hkv, d)).astype(np.float32)
    v = rng.standard_normal((b, lk, hkv, dv or d)).astype(np.float32)
    return q, k, v


def _key_mask(seed, b, length):
    """Key-padding mask with at least one real token per row."""
    lengths = np.random.default_rng(seed + 1).integers(1, length + 1, size=b)
    return np.arange(length)[None, :] < lengths[:, None]


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
    q, k, v = _qkv(s["seed"], s["b"], s["length"], s["length"], s["h"], s["d"])
    mask = _key_mask(s["seed"], s["b"], s["length"]) if s["padded"] else None
    want = np_linear_attention(q, k, v, NP_FEATURE_MAPS[feature_map], causal=True, key_mask=mask)
    for form in att.LINEAR_FORMS:
        got = att.linear_attention(
            q,
            k,
            v,
            feature_map=feature_map,
            causal=True,
            form=form,
            chunk_size=s["chunk"],
            mask=mask,
        )
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=ATOL, err_msg=form)


@pytest.mark.parametrize("feature_map", ["elu", "relu", "taylor"])
@given(s=shapes, lk=st.integers(1, 50))
def test_noncausal_linear_equals_kernel_reference(feature_map, s, lk):
    assume(feature_map != "taylor" or s["d"] > 1)
    q, k, v = _qkv(s["seed"], s["b"], s["length"], lk, s["h"], s["d"], dv=3)
    mask = _key_mask(s["seed"], s["b"], lk) if s["padded"] else None
    want = np_linear_attention(q, k, v, NP_FEATURE_MAPS[feature_map], causal=False, key_mask=mask)
    got = att.linear_attention(q, k, v, feature_map=feature_map, mask=mask)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=ATOL)


def test_efficient_attention_softmax_feature_map():
    """Shen et al.: out = softmax_d(Q) (softmax_n(K)^T V), padded keys excluded from softmax_n."""
    q, k, v = _qkv(0, 2, 9, 11, 2, 5, dv=3)
    mask = _key_mask(0, 2, 11)
    got = att.linear_attention(q, k, v, feature_map="softmax", mask=mask)
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    sq = np.exp(q64 - q64.max(-1, keepdims=True))
    sq /= sq.sum(-1, keepdims=True)
    ek = np.where(mask[:, :, None, None], np.exp(k64), 0.0)
    sk = ek / ek.sum(1, keepdims=True)
    want = np.einsum("blhf,bhfv->blhv", sq, np.einsum("bnhf,bnhv->bhfv", sk, v64))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_gqa_linear_matches_repeated_heads():
    q, k, v = _qkv(3, 2, 20, 20, 4, 8, hkv=2)
    got = att.linear_attention(q, k, v, causal=True, chunk_size=8)
    rep = [np.repeat(x, 2, axis=2) for x in (k, v)]
    want = np_linear_attention(q, *rep, NP_FEATURE_MAPS["elu"], causal=True)
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_favor_approximates_softmax_kernel():
    """With many random features, FAVOR+ linear attention approaches softmax attention."""
    q, k, v = _qkv(5, 1, 16, 16, 2, 8)
    q, k = 0.5 * q, 0.5 * k  # moderate logits keep the estimator's variance small
    w = fm.favor_projection(jax.random.PRNGKey(0), 8192, 8)
    got = att.linear_attention(q, k, v, feature_map=fm.favor(w), causal=True, chunk_size=4)
    want = np_softmax_attention(q, k, v, causal=True)
    assert np.max(np.abs(np.asarray(got) - want)) < 0.05
    assert fm.feature_dim(fm.favor(w), 8) == 8192


def test_favor_projection_rows_are_orthogonal_in_blocks():
    w = np.asarray(fm.favor_projection(jax.random.PRNGKey(1), 12, 8))
    block = w[:8] / np.linalg.norm(w[:8], axis=1, keepdims=True)
    np.testing.assert_allclose(block @ block.T, np.eye(8), atol=1e-5)
    assert w.shape == (12, 8)


def test_favor_by_name_with_projection_equals_the_callable():
    """feature_map="favor" (the ModelConfig spelling) works in the ops given its projection, in
    every entry point, and equals passing `fm.favor(W)`."""
    q, k, v = _qkv(6, 2, 12, 12, 2, 8, dv=5)
    mask = _key_mask(6, 2, 12)
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
    q, k, v = _qkv(s["seed"], s["b"], s["length"], s["length"], s["h"], s["d"])
    cot = np.random.default_rng(s["seed"] + 7).standard_normal(v.shape).astype(np.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * cot)

    ref = jax.grad(loss(lambda *a: _quadratic_linear_jax(*a, fm.elu_feature_map)), (0, 1, 2))(
        q, k, v
    )
    for form in ("chunked", "scan"):
        fn = lambda q, k, v, form=form: att.linear_attention(  # noqa: E731
            q, k, v, causal=True, form=form, chunk_size=s["chunk"]
        )
        got = jax.grad(loss(fn), (0, 1, 2))(q, k, v)
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
    q, k, v = _qkv(5, b, length, length, h, d)
    mask = jnp.asarray(_key_mask(5, b, length))
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
    q, k, v = _qkv(11, 1, 19, 19, 2, 4)
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
    q, k, v = _qkv(2, 2, 13, 13, 2, 4)
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
    q, k, v = _qkv(4, 2, 23, 23, 2, 6, dv=5)
    mask = _key_mask(4, 2, 23)
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
    q, k, v = _qkv(8, 1, 16384, 16384, 2, 32)
    q, k = 0.3 * q, 0.3 * k
    ref = att.linear_attention(q, k, v, causal=True)
    bf = att.linear_attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), causal=True)
    assert bf.dtype == jnp.bfloat16
    bf = np.asarray(bf, np.float32)
    assert np.all(np.isfinite(bf))
    # bf16 inputs carry ~3 significant digits; the fp32 accumulation keeps the error at that level.
    assert np.max(np.abs(bf - np.asarray(ref))) < 0.05
    assert np.mean(np.abs(bf - np.asarray(ref))) < 5e-3


# ---------------------------------------------------------------- softmax attention
softmax_shapes = st.fixed_dictionaries(
    {
        "b": st.integers(1, 2),
        "lq": st.integers(1, 40),
        "lk": st.integers(1, 40),
        "h": st.sampled_from([1, 2, 4]),
        "hkv_div": st.sampled_from([1, 2]),
        "d": st.sampled_from([2, 8]),
        "bq": st.sampled_from([1, 7, 16, 64]),
        "bk": st.sampled_from([1, 5, 16, 64]),
        "mask": st.sampled_from(["none", "padding", "full"]),
        "causal": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


def _softmax_case(s):
    hkv = s["h"] // s["hkv_div"] if s["h"] % s["hkv_div"] == 0 else s["h"]
    q, k, v = _qkv(s["seed"], s["b"], s["lq"], s["lk"], s["h"], s["d"], dv=3, hkv=hkv)
    mask = None
    if s["mask"] == "padding":
        mask = _key_mask(s["seed"], s["b"], s["lk"])
    elif s["mask"] == "full":
        rng = np.random.default_rng(s["seed"] + 3)
        mask = rng.random((s["b"], 1, s["lq"], s["lk"])) < 0.7
    return q, k, v, mask


def _np_mask(mask):
    return None if mask is None or mask.ndim == 4 else mask[:, None, None, :]


@given(s=softmax_shapes)
def test_softmax_implementations_equal_numpy(s):
    q, k, v, mask = _softmax_case(s)
    groups = q.shape[2] // k.shape[2]
    want = np_softmax_attention(
        q,
        np.repeat(k, groups, 2),
        np.repeat(v, groups, 2),
        causal=s["causal"],
        mask=mask if mask is None or mask.ndim == 4 else _np_mask(mask),
    )
    for impl in att.PORTABLE_SOFTMAX_IMPLEMENTATIONS:
        got = att.softmax_attention(
            q,
            k,
            v,
            causal=s["causal"],
            mask=mask,
            implementation=impl,
            block_q=s["bq"],
            block_k=s["bk"],
        )
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=ATOL, err_msg=impl)


@settings(max_examples=6)  # each shape compiles a backward pass: half the profile's
@given(s=softmax_shapes)
def test_blockwise_gradients_equal_dense(s):
    q, k, v, mask = _softmax_case(s)
    rng = np.random.default_rng(s["seed"] + 5)
    bias = rng.standard_normal((1, q.shape[2], s["lq"], s["lk"])).astype(np.float32)
    cot = rng.standard_normal((s["b"], s["lq"], s["h"], 3)).astype(np.float32)

    def grads(impl):
        def loss(q, k, v, bias):
            out = att.softmax_attention(
                q,
                k,
                v,
                causal=s["causal"],
                mask=mask,
                bias=bias,
                implementation=impl,
                block_q=s["bq"],
                block_k=s["bk"],
            )
            return jnp.sum(out * cot)

        return jax.grad(loss, (0, 1, 2, 3))(q, k, v, bias)

    for g, r in zip(grads("blockwise"), grads("xla"), strict=True):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, r, atol=ATOL, rtol=ATOL)


def test_blockwise_bias_gradient_reduces_over_broadcast_axes():
    q, k, v = _qkv(1, 2, 12, 12, 2, 4)
    bias = np.random.default_rng(0).standard_normal((2, 1, 1, 12)).astype(np.float32)

    def g(impl):
        fn = lambda b: jnp.sum(  # noqa: E731
            att.softmax_attention(
                q, k, v, bias=b, causal=True, implementation=impl, block_q=5, block_k=3
            )
            ** 2
        )
        return jax.grad(fn)(bias)

    gb = g("blockwise")
    assert gb.shape == bias.shape
    np.testing.assert_allclose(gb, g("xla"), atol=ATOL)


@pytest.mark.parametrize("impl", att.PORTABLE_SOFTMAX_IMPLEMENTATIONS)
def test_softmax_causal_zero_gradient_from_future_and_padding_invariance(impl):
    q, k, v = _qkv(6, 1, 21, 21, 2, 4)
    t = 10

    def out_t(q, k, v):
        o = att.softmax_attention(q, k, v, causal=True, implementation=impl, block_q=4, block_k=4)
        return jnp.sum(o[:, t])

    for g in jax.grad(out_t, (0, 1, 2))(q, k, v):
        assert np.all(np.asarray(g)[:, t + 1 :] == 0.0)
    pad = np.full((1, 5, 2, 4), 1e3, np.float32)
    kp, vp = np.concatenate([k, pad], 1), np.concatenate([v, pad], 1)
    mask = np.arange(26)[None] < 21
    a = att.softmax_attention(q, k, v, implementation=impl, block_k=4)
    b = att.softmax_attention(q, kp, vp, mask=mask, implementation=impl, block_k=4)
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("impl", att.PORTABLE_SOFTMAX_IMPLEMENTATIONS)
def test_fully_masked_query_outputs_zero(impl):
    q, k, v = _qkv(7, 1, 4, 6, 1, 4)
    mask = np.ones((1, 1, 4, 6), bool)
    mask[0, 0, 2] = False
    out = np.asarray(att.softmax_attention(q, k, v, mask=mask, implementation=impl, block_k=2))
    assert np.all(out[0, 2] == 0.0) and np.all(out[0, [0, 1, 3]] != 0.0)


def test_softmax_xla_matches_jax_nn_reference():
    q, k, v = _qkv(12, 2, 17, 17, 4, 8, hkv=2)
    want = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    got = att.softmax_attention(q, k, v, causal=True)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("impl", att.PORTABLE_SOFTMAX_IMPLEMENTATIONS)
@pytest.mark.parametrize("lq, lk", [(5, 9), (9, 5)])
def test_causal_softmax_is_top_left_aligned_when_lengths_differ(impl, lq, lk):
    """causal=True with Lq != Lk: query i sees keys j <= i (not the bottom-right alignment of
    decoding after a cache), as the docstring says."""
    q, k, v = _qkv(14, 2, lq, lk, 2, 4)
    top_left = np.arange(lq)[:, None] >= np.arange(lk)[None, :]
    want = np_softmax_attention(q, k, v, mask=top_left[None, None])
    got = att.softmax_attention(q, k, v, causal=True, implementation=impl, block_q=2, block_k=3)
    np.testing.assert_allclose(got, want, atol=1e-5)
    bottom_right = np.arange(lq)[:, None] + (lk - lq) >= np.arange(lk)[None, :]
    other = np_softmax_attention(q, k, v, mask=bottom_right[None, None])
    assert not np.allclose(got, other, atol=1e-3)
    assert "top-left aligned also when Lq != Lk" in " ".join(att.softmax_attention.__doc__.split())


def test_linformer_equals_softmax_over_projected_keys():
    q, k, v = _qkv(13, 2, 10, 16, 2, 4)
    rng = np.random.default_rng(0)
    e, f = (rng.standard_normal((5, 16)).astype(np.float32) / 4 for _ in range(2))
    mask = _key_mask(13, 2, 16)
    km, vm = (np.where(mask[:, :, None, None], x, 0.0) for x in (k, v))
    want = np_softmax_attention(
        q, np.einsum("mn,bnhd->bmhd", e, km), np.einsum("mn,bnhd->bmhd", f, vm)
    )
    np.testing.assert_allclose(att.linformer_attention(q, k, v, e, f, mask=mask), want, atol=1e-5)


# ---------------------------------------------------------------- naive reference, block sizes
@pytest.mark.parametrize("masked", [False, True])
def test_naive_quadratic_equals_chunked_scan_and_cumsum(masked):
    """linear/naive.py's O(L^2) masked form, on the same features, equals every causal form
    (chunked across several blocks, with block padding)."""
    b, length, h, d = 2, 150, 2, 8
    q, k, v = _qkv(21, b, length, length, h, d)
    mask = jnp.asarray(_key_mask(21, b, length)) if masked else None
    fq, fk = linear.features(q, k, "elu", mask)
    want = naive.quadratic(fq, fk, jnp.asarray(v))
    for form, block_bytes in [("chunked", None), ("chunked", 1), ("scan", None), ("cumsum", None)]:
        got = att.linear_attention(
            q, k, v, causal=True, form=form, mask=mask, chunk_size=4, block_bytes=block_bytes
        )
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-6, err_msg=form)
    ref = np_linear_attention(q, k, v, NP_FEATURE_MAPS["elu"], causal=True, key_mask=mask)
    np.testing.assert_allclose(want, ref, atol=2e-6, rtol=2e-6)


def test_cpu_default_block_sizes_are_the_tuned_values():
    assert common.default_block_sizes("cpu") == (512, 512, 2**20)
    assert common.default_block_sizes("unknown") == common.default_block_sizes("cpu")


@pytest.mark.parametrize("feature_map", ["elu", "favor"])
def test_linear_block_bytes_changes_no_value_or_gradient(feature_map):
    """block_bytes only tiles the chunked kernel: tiny blocks (many, padded) equal the default."""
    b, length, h, d = 2, 150, 2, 8
    if feature_map == "favor":
        feature_map = fm.favor(fm.favor_projection(jax.random.PRNGKey(4), 16, d))
    q, k, v = _qkv(31, b, length, length, h, d)
    mask = jnp.asarray(_key_mask(31, b, length))
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


def test_softmax_block_sizes_change_no_value_or_gradient():
    q, k, v = _qkv(41, 2, 45, 45, 2, 8)
    cot = np.random.default_rng(42).standard_normal(q.shape).astype(np.float32)

    def run(**blocks):
        def loss(q, k, v):
            out = att.softmax_attention(q, k, v, causal=True, implementation="blockwise", **blocks)
            return jnp.sum(out * cot), out

        return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)

    (_, small), small_grads = run(block_q=8, block_k=16)
    (_, default), default_grads = run()
    np.testing.assert_allclose(small, default, atol=1e-5, rtol=1e-5)
    for name, g, w in zip("qkv", small_grads, default_grads, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5, err_msg=name)


# ---------------------------------------------------------------- bad input
q4 = np.zeros((1, 8, 2, 4), np.float32)
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


@pytest.mark.parametrize("causal", [False, True])
def test_cudnn_path_passes_layout_masks_bias_and_groups_to_jax(causal):
    """implementation="cudnn" is jax.nn.dot_product_attention with implementation="cudnn" on
    our arguments; the same call with JAX's "xla" kernel (all a CPU has) equals NumPy, so only
    the kernel name differs on a GPU."""
    from research.ops.attention import softmax

    q, k, v = _qkv(21, 2, 7, 7, 4, 8, hkv=2)
    mask = np.asarray(_key_mask(3, 2, 7))[:, None, None, :]
    bias = np.random.default_rng(4).standard_normal((1, 4, 7, 7)).astype(np.float32)
    got = softmax._jax_attention(q, k, v, bias, mask, causal, 0.3, "xla")
    want = np_softmax_attention(
        q, np.repeat(k, 2, 2), np.repeat(v, 2, 2), causal=causal, mask=mask, bias=bias, scale=0.3
    )
    np.testing.assert_allclose(got, want, atol=1e-5)
    if jax.default_backend() != "gpu":
        with pytest.raises(ValueError, match="'cudnn' needs a GPU .* backend is 'cpu'"):
            att.softmax_attention(q, k, v, implementation="cudnn")


def test_cudnn_call_gets_a_full_length_mask(monkeypatch):
    """cuDNN reads a mask as a bias of shape [B, H, Lq, Lk]; a key-padding mask must reach
    jax.nn.dot_product_attention broadcast to Lq x Lk (checked by intercepting the call)."""
    from research.ops.attention import softmax

    seen = {}
    original = jax.nn.dot_product_attention

    def spy(q, k, v, bias=None, mask=None, **kw):
        seen["mask"], seen["implementation"] = mask.shape, kw["implementation"]
        return original(q, k, v, bias, mask, **{**kw, "implementation": "xla"})

    monkeypatch.setattr(softmax, "check_backend", lambda *a: None)
    monkeypatch.setattr(softmax.jax.nn, "dot_product_attention", spy)
    q, k, v = _qkv(22, 2, 5, 7, 2, 8)
    mask = np.asarray(_key_mask(5, 2, 7))
    got = att.softmax_attention(q, k, v, mask=mask, implementation="cudnn")
    assert seen == {"mask": (2, 1, 5, 7), "implementation": "cudnn"}
    np.testing.assert_allclose(
        got, np_softmax_attention(q, k, v, mask=mask[:, None, None, :]), atol=1e-5
    )
