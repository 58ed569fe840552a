"""Softmax attention (every implementation) against float64 NumPy references, across shapes
drawn by hypothesis; gradients, masks, block sizes and the cuDNN path."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from research.ops import attention as att
from tests.ops.attention.cases import ATOL, key_mask, qkv
from tests.ops.references import np_softmax_attention

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
    q, k, v = qkv(s["seed"], s["b"], s["lq"], s["lk"], s["h"], s["d"], dv=3, hkv=hkv)
    mask = None
    if s["mask"] == "padding":
        mask = key_mask(s["seed"], s["b"], s["lk"])
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
    for impl in att.PORTABLE_SOFTMAX_IMPLEMENTATIONS:  # jitted: one compile per shape
        fn = functools.partial(
            att.softmax_attention,
            causal=s["causal"],
            implementation=impl,
            block_q=s["bq"],
            block_k=s["bk"],
        )
        got = jax.jit(fn)(q, k, v, mask=mask)
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

        return jax.jit(jax.grad(loss, (0, 1, 2, 3)))(q, k, v, bias)

    for g, r in zip(grads("blockwise"), grads("xla"), strict=True):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, r, atol=ATOL, rtol=ATOL)


def _np_attention_grads(q, k, v, bias, keep, cot):
    """float64 NumPy: the output and d(sum(out * cot)) / d(bias) of dense softmax attention
    with scores q k^T / sqrt(d) + bias (broadcast to [B, H, Lq, Lk]), `keep` [B, H, Lq, Lk];
    the bias gradient summed over the axes the bias broadcasts along."""
    q, k, v, b64, cot = (np.asarray(x, np.float64) for x in (q, k, v, bias, cot))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5 + b64
    s = np.where(keep, s, -np.inf)
    m = np.max(s, -1, keepdims=True)
    p = np.exp(s - np.where(np.isfinite(m), m, 0.0))
    den = p.sum(-1, keepdims=True)
    p = np.divide(p, den, out=np.zeros_like(p), where=den > 0)
    out = np.einsum("bhqk,bkhd->bqhd", p, v)
    dp = np.einsum("bqhd,bkhd->bhqk", cot, v)
    ds = p * (dp - np.sum(p * dp, -1, keepdims=True))
    axes = tuple(i for i, n in enumerate(bias.shape) if n == 1)
    return out, ds.sum(axis=axes, keepdims=True)


@pytest.mark.parametrize("bias_shape", ["full", "heads-keys", "batch-queries-keys", "keys"])
@settings(max_examples=2)  # each draw compiles a backward pass per implementation
@given(s=softmax_shapes)
def test_a_bias_gives_numpys_output_and_bias_gradient(s, bias_shape):
    """An additive score bias of every broadcast shape: output and its gradient equal a float64
    NumPy formula (the bias gradient reduced over its broadcast axes), in every portable
    implementation."""
    q, k, v, mask = _softmax_case(s)
    b, lq, h, lk = s["b"], s["lq"], s["h"], s["lk"]
    shape = {
        "full": (b, h, lq, lk),
        "heads-keys": (1, h, 1, lk),
        "batch-queries-keys": (b, 1, lq, lk),
        "keys": (1, 1, 1, lk),
    }[bias_shape]
    rng = np.random.default_rng(s["seed"] + 9)
    bias = (2 * rng.standard_normal(shape)).astype(np.float32)
    cot = rng.standard_normal((b, lq, h, v.shape[-1])).astype(np.float32)
    groups = h // k.shape[2]
    keep = np.ones((b, h, lq, lk), bool)
    if s["causal"]:
        keep &= np.tril(np.ones((lq, lk), bool))
    if mask is not None:
        keep &= mask if mask.ndim == 4 else _np_mask(mask)
    want, want_db = _np_attention_grads(
        q, np.repeat(k, groups, 2), np.repeat(v, groups, 2), bias, keep, cot
    )
    for impl in att.PORTABLE_SOFTMAX_IMPLEMENTATIONS:

        def loss(bias, impl=impl):
            out = att.softmax_attention(
                q, k, v, causal=s["causal"], mask=mask, bias=bias, implementation=impl,
                block_q=s["bq"], block_k=s["bk"],
            )  # fmt: skip
            return jnp.sum(out * cot), out

        (_, out), db = jax.jit(jax.value_and_grad(loss, has_aux=True))(bias)
        np.testing.assert_allclose(out, want, atol=ATOL, rtol=ATOL, err_msg=impl)
        assert db.shape == bias.shape
        np.testing.assert_allclose(db, want_db, atol=ATOL, rtol=ATOL, err_msg=impl)


def test_blockwise_bias_gradient_reduces_over_broadcast_axes():
    q, k, v = qkv(1, 2, 12, 12, 2, 4)
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
    q, k, v = qkv(6, 1, 21, 21, 2, 4)
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
    q, k, v = qkv(7, 1, 4, 6, 1, 4)
    mask = np.ones((1, 1, 4, 6), bool)
    mask[0, 0, 2] = False
    out = np.asarray(att.softmax_attention(q, k, v, mask=mask, implementation=impl, block_k=2))
    assert np.all(out[0, 2] == 0.0) and np.all(out[0, [0, 1, 3]] != 0.0)


def test_softmax_xla_matches_jax_nn_reference():
    q, k, v = qkv(12, 2, 17, 17, 4, 8, hkv=2)
    want = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    got = att.softmax_attention(q, k, v, causal=True)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("impl", att.PORTABLE_SOFTMAX_IMPLEMENTATIONS)
@pytest.mark.parametrize("lq, lk", [(5, 9), (9, 5)])
def test_causal_softmax_is_top_left_aligned_when_lengths_differ(impl, lq, lk):
    """causal=True with Lq != Lk: query i sees keys j <= i (not the bottom-right alignment of
    decoding after a cache), as the docstring says."""
    q, k, v = qkv(14, 2, lq, lk, 2, 4)
    top_left = np.arange(lq)[:, None] >= np.arange(lk)[None, :]
    want = np_softmax_attention(q, k, v, mask=top_left[None, None])
    got = att.softmax_attention(q, k, v, causal=True, implementation=impl, block_q=2, block_k=3)
    np.testing.assert_allclose(got, want, atol=1e-5)
    bottom_right = np.arange(lq)[:, None] + (lk - lq) >= np.arange(lk)[None, :]
    other = np_softmax_attention(q, k, v, mask=bottom_right[None, None])
    assert not np.allclose(got, other, atol=1e-3)
    assert "top-left aligned also when Lq != Lk" in " ".join(att.softmax_attention.__doc__.split())


def test_softmax_block_sizes_change_no_value_or_gradient():
    q, k, v = qkv(41, 2, 45, 45, 2, 8)
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


@pytest.mark.parametrize("causal", [False, True])
def test_cudnn_path_passes_layout_masks_bias_and_groups_to_jax(causal):
    """implementation="cudnn" is jax.nn.dot_product_attention with implementation="cudnn" on
    our arguments; the same call with JAX's "xla" kernel (all a CPU has) equals NumPy, so only
    the kernel name differs on a GPU."""
    from research.ops.attention import softmax

    q, k, v = qkv(21, 2, 7, 7, 4, 8, hkv=2)
    mask = np.asarray(key_mask(3, 2, 7))[:, None, None, :]
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
    q, k, v = qkv(22, 2, 5, 7, 2, 8)
    mask = np.asarray(key_mask(5, 2, 7))
    got = att.softmax_attention(q, k, v, mask=mask, implementation="cudnn")
    assert seen == {"mask": (2, 1, 5, 7), "implementation": "cudnn"}
    np.testing.assert_allclose(
        got, np_softmax_attention(q, k, v, mask=mask[:, None, None, :]), atol=1e-5
    )
