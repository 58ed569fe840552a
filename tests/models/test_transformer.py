"""Model behaviour: shapes per attention kind, causality, padding invariance, decode == forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research.models import Bert, DecoderLM, EncoderDecoder, ModelConfig
from research.models.layers import FavorProjection, causal_conv

TINY = dict(
    vocab_size=40,
    d_model=16,
    num_heads=2,
    num_layers=2,
    d_ff=32,
    max_length=24,
    chunk_size=4,
    linformer_k=8,
    favor_features=16,
)
CAUSAL_KINDS = {
    "softmax": dict(attention="softmax"),
    "blockwise": dict(attention="softmax", softmax_implementation="blockwise"),
    "linear-elu": dict(attention="linear", feature_map="elu"),
    "linear-taylor-scan": dict(attention="linear", feature_map="taylor", linear_form="scan"),
    "linear-favor": dict(attention="linear", feature_map="favor"),
    # Rematerialised layers (model.remat) must compute the same forward, prefill and decode.
    "softmax-remat-full": dict(attention="softmax", remat="full"),
    "linear-remat-qkv": dict(attention="linear", feature_map="elu", remat="save_qkv_proj"),
    # The TPU kernel off TPU (or at lengths not a multiple of 128) falls back to blockwise.
    "tpu-flash-off-tpu": dict(attention="softmax", softmax_implementation="tpu_flash"),
}
# A short key convolution adds a per-layer history to the decode cache.
CONV_KINDS = {
    "softmax-conv": dict(attention="softmax", short_conv=3),
    "linear-elu-conv": dict(attention="linear", feature_map="elu", short_conv=3),
}
# The gated / delta-rule kinds (causal self-attention only; research.models.recurrent_attention).
RECURRENT_KINDS = {
    "gla": dict(attention="gla"),
    "retnet-conv": dict(attention="retnet", short_conv=3),
    "deltanet": dict(attention="deltanet"),
    "gated_deltanet": dict(attention="gated_deltanet"),
    "gated_deltanet-scan-gqa": dict(attention="gated_deltanet", linear_form="scan", num_kv_heads=1),
    # Every kind with GQA; the options away from their defaults; the scan forms.
    "gla-gqa-conv-rank3-temp2": dict(
        attention="gla", num_kv_heads=1, short_conv=3, gla_gate_rank=3, gla_gate_temperature=2.0
    ),
    "gla-scan": dict(attention="gla", linear_form="scan"),
    "retnet-gqa-scan": dict(attention="retnet", num_kv_heads=1, linear_form="scan"),
    "deltanet-gqa-conv2": dict(attention="deltanet", num_kv_heads=1, qkv_conv=2),
    "gated_deltanet-gqa-conv5": dict(attention="gated_deltanet", num_kv_heads=1, qkv_conv=5),
}
DECODER_KINDS = {**CAUSAL_KINDS, **CONV_KINDS, **RECURRENT_KINDS}
ENCODER_KINDS = {
    **CAUSAL_KINDS,
    "linear-softmax": dict(attention="linear", feature_map="softmax"),
    "linformer": dict(attention="linformer"),
}


def _cfg(**kw):
    return ModelConfig(**{**TINY, **kw})


def _tokens(b=2, length=10, seed=0):
    return jax.random.randint(jax.random.PRNGKey(seed), (b, length), 1, TINY["vocab_size"])


def _assert_close(a, b, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-5)


@pytest.mark.parametrize(
    "kind, positions",
    [(k, p) for k in CAUSAL_KINDS for p in ("learned", "rotary")]
    + [(k, "rotary") for k in CONV_KINDS]
    + [(k, "rotary") for k in RECURRENT_KINDS]
    + [("gla", "learned")],
)
def test_decoder_lm_shapes_causality_and_decode(kind, positions):
    cfg = _cfg(positions=positions, num_segments=2, **DECODER_KINDS[kind])
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    toks = _tokens(length=11)
    seg = jnp.broadcast_to((jnp.arange(11) >= 5).astype(jnp.int32), toks.shape)
    logits = model(toks, segment_ids=seg)
    assert logits.shape == (2, 11, cfg.vocab_size) and logits.dtype == jnp.float32
    # Causality through the whole model: changing tokens after t leaves logits <= t unchanged.
    t = 6
    changed = toks.at[:, t + 1 :].set((toks[:, t + 1 :] + 7) % cfg.vocab_size)
    _assert_close(model(changed, segment_ids=seg)[:, : t + 1], logits[:, : t + 1])
    assert not np.allclose(model(changed, segment_ids=seg)[:, t + 1 :], logits[:, t + 1 :])
    # Incremental decoding reproduces the full forward at every position after the prompt.
    step_logits, cache = model.prefill(toks[:, :3], segment_ids=seg[:, :3], max_length=12)
    got = [step_logits]
    for i in range(3, 11):
        step_logits, cache = model.decode_step(toks[:, i], cache, segment=seg[:, i])
        got.append(step_logits)
    _assert_close(jnp.stack(got[:-1], 1), logits[:, 2:10])
    _assert_close(got[-1], logits[:, 10])


def test_a_softmax_step_past_its_cache_is_nan_and_a_bf16_cache_is_bf16():
    """A step past the cache dropped its key and attended without the current token, giving
    finite, wrong logits; the KV cache was fp32 whatever the model's dtype (twice a bf16
    model's memory, no precision gained: k and v are computed in bf16)."""
    for dtype in ("float32", "bfloat16"):
        model = DecoderLM(_cfg(positions="rotary", dtype=dtype), rngs=nnx.Rngs(0))
        toks = _tokens(length=8)
        full = model(toks)
        logits, cache = model.prefill(toks[:, :4], max_length=6)
        assert {cache["layers"][0]["self"][n].dtype for n in "kv"} == {jnp.dtype(dtype)}
        steps = jax.jit(model.decode_step)
        for i in range(4, 8):  # positions 4 and 5 fit the cache of 6, 6 and 7 do not
            logits, cache = steps(toks[:, i], cache)
            if i < 6:
                _assert_close(logits, full[:, i], atol=1e-5 if dtype == "float32" else 0.1)
            else:
                assert np.isnan(np.asarray(logits, np.float32)).all(), i


@pytest.mark.parametrize("kind", ["softmax", "linear-elu", *CONV_KINDS, *RECURRENT_KINDS])
def test_decoder_lm_ragged_prefill_ignores_the_padding(kind):
    """Right-padded prompts of different lengths, the padding garbage: each row's prefill ends
    at its own last token and the next step continues from it, as the unpadded row does (what
    the padding would change is the state or cache it leaves: causality alone keeps the real
    positions' logits)."""
    model = DecoderLM(_cfg(**DECODER_KINDS[kind]), rngs=nnx.Rngs(1))
    toks = _tokens(length=9)
    lengths = jnp.array([9, 6])
    mask = jnp.arange(9)[None] < lengths[:, None]
    garbage = jnp.where(mask, toks, 3)
    a = model(toks)
    logits, cache = model.prefill(garbage, lengths=lengths, max_length=12)
    _assert_close(logits[0], a[0, 8])
    _assert_close(logits[1], a[1, 5])
    nxt = jnp.array([5, 7])
    step, _ = model.decode_step(nxt, cache)
    row1 = jnp.concatenate([toks[1, :6], nxt[1:]])[None]
    _assert_close(step[1], model(row1)[0, -1])


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_bert_shapes_and_padding_invariance(kind):
    cfg = _cfg(
        norm="post", num_segments=2, pooler=True, layer_norm_eps=1e-12, **ENCODER_KINDS[kind]
    )
    model = Bert(cfg, rngs=nnx.Rngs(2))
    toks = _tokens(length=12)
    mask = jnp.arange(12)[None] < jnp.array([[12], [7]])
    out = model(toks, mask=mask)
    assert out.hidden_states.shape == (2, 12, 16) and out.logits.shape == (2, 12, 40)
    assert out.pooled.shape == (2, 16)
    other = model(jnp.where(mask, toks, 1), mask=mask)
    _assert_close(other.hidden_states[1, :7], out.hidden_states[1, :7])


def test_bert_predict_at_gathers_the_full_logits_and_the_classifier_head():
    cfg = _cfg(norm="post", pooler=True, num_labels=3)
    model = Bert(cfg, rngs=nnx.Rngs(4))
    toks = _tokens(length=12)
    full = model(toks)
    at = jnp.array([[0, 5, 11], [3, 3, 7]])
    part = model(toks, predict_at=at)
    assert part.logits.shape == (2, 3, 40)
    _assert_close(part.logits, jnp.take_along_axis(full.logits, at[..., None], axis=1))
    # The head: softmax(W pooled + b), dropout off in eval mode.
    head = model.classifier
    ref = full.pooled @ head.kernel.get_value() + head.bias.get_value()
    assert full.class_logits.shape == (2, 3)
    _assert_close(full.class_logits, ref)
    with pytest.raises(ValueError, match="num_labels > 0 needs pooler=True"):
        _cfg(num_labels=3)
    with pytest.raises(ValueError, match="num_labels must be 0 .no head. or an int >= 2, got 1"):
        _cfg(pooler=True, num_labels=1)


def test_bert_unilm_mask_and_incremental_decoding():
    cfg = _cfg(norm="post", num_segments=2)
    model = Bert(cfg, rngs=nnx.Rngs(3))
    toks = _tokens(length=12)
    seg = jnp.broadcast_to((jnp.arange(12) >= 5).astype(jnp.int32), toks.shape)
    full = model(toks, segment_ids=seg, unilm=True).logits
    # Source positions do not see the target; target position t does not see targets after t.
    changed = toks.at[:, 9:].set(2)
    _assert_close(model(changed, segment_ids=seg, unilm=True).logits[:, :9], full[:, :9])
    logits, cache = model.prefill(toks[:, :5], segment_ids=seg[:, :5], max_length=13)
    got = [logits]
    for i in range(5, 11):
        logits, cache = model.decode_step(toks[:, i], cache)
        got.append(logits)
    _assert_close(jnp.stack(got, 1), full[:, 4:11])


@pytest.mark.parametrize("kind", [*CAUSAL_KINDS, "softmax-conv"])
def test_encoder_decoder_forward_and_decode(kind):
    cfg = _cfg(num_decoder_layers=1, **DECODER_KINDS[kind])
    model = EncoderDecoder(cfg, rngs=nnx.Rngs(4))
    src, tgt = _tokens(length=10), _tokens(length=7, seed=1).at[:, 0].set(1)
    src_mask = jnp.arange(10)[None] < jnp.array([[10], [6]])
    logits = model(src, tgt, src_mask=src_mask)
    assert logits.shape == (2, 7, 40)
    # Padded source tokens change nothing; future target tokens change nothing before them.
    _assert_close(model(jnp.where(src_mask, src, 2), tgt, src_mask=src_mask), logits)
    _assert_close(model(src, tgt.at[:, 5:].set(3), src_mask=src_mask)[:, :5], logits[:, :5])
    step, cache = model.prefill(src, src_mask=src_mask, bos_id=1, max_length=8)
    got = [step]
    for i in range(1, 7):
        step, cache = model.decode_step(tgt[:, i], cache)
        got.append(step)
    _assert_close(jnp.stack(got, 1), logits)


def test_causal_conv_matches_numpy_convolution():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 9, 3)), rng.normal(size=(4, 3))
    history = rng.normal(size=(2, 3, 3))
    full = np.concatenate([history, x], axis=1)
    # np.convolve(a, w)[n] = sum_s w[s] a[n - s]; outputs for x start after the 3 history inputs.
    want = np.stack(
        [
            np.stack([np.convolve(full[b, :, c], w[:, c])[3:12] for c in range(3)], -1)
            for b in range(2)
        ]
    )
    _assert_close(causal_conv(jnp.asarray(x), jnp.asarray(w), jnp.asarray(history)), want)
    no_history = np.stack(
        [np.stack([np.convolve(x[b, :, c], w[:, c])[:9] for c in range(3)], -1) for b in range(2)]
    )
    _assert_close(causal_conv(jnp.asarray(x), jnp.asarray(w)), no_history)


def test_causal_conv_in_bf16_rounds_the_sum_once():
    # fla's causal_conv1d accumulates the taps in fp32: the bf16 output is the exact sum of the
    # bf16 inputs times the bf16 weights, rounded once (NumPy float64 here), with documents too.
    # (The products are exact in fp32; the fp32 sum rounds again only at a rare bf16 tie.)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 64, 16)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(4, 16)), jnp.bfloat16)
    docs = jnp.asarray(np.repeat([[0] * 20 + [1] * 44], 2, axis=0))
    xs, ws, d = (np.asarray(t, np.float64) for t in (x, w, docs))
    for ids in (None, docs):
        want = np.zeros(xs.shape)
        for t in range(64):
            for s in range(4):
                if t - s >= 0 and (ids is None or d[0, t - s] == d[0, t]):
                    want[:, t] += ws[s] * xs[:, t - s]
        got = causal_conv(x, w, document_ids=ids)
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(got, np.float64), want.astype(jnp.bfloat16))
    # Decoding: the last 3 inputs as history, then the next tokens (the step's path).
    nxt = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.bfloat16)
    full = np.concatenate([xs[:, -3:], np.asarray(nxt, np.float64)], axis=1)
    want = sum(ws[s] * full[:, 3 - s : 8 - s] for s in range(4))
    got = causal_conv(nxt, w, x[:, -3:])
    np.testing.assert_array_equal(np.asarray(got, np.float64), want.astype(jnp.bfloat16))


def test_short_conv_starts_near_the_identity_and_changes_only_keys():
    plain = DecoderLM(_cfg(), rngs=nnx.Rngs(0))
    conv = DecoderLM(_cfg(short_conv=3), rngs=nnx.Rngs(0))
    w = conv.layers[0].attn.key_conv.get_value()
    assert w.shape == (3, 16) and np.abs(np.asarray(w[0]) - 1).max() < 0.1
    assert np.abs(np.asarray(w[1:])).max() < 0.1
    # With the convolution set to the identity (and the plain model's other weights) the model
    # is the plain one; with the last lag instead, it differs.
    nnx.update(conv, nnx.state(plain))
    toks = _tokens()
    for lag in (0, 2):
        for layer in conv.layers:
            layer.attn.key_conv.set_value(jnp.zeros((3, 16)).at[lag].set(1.0))
        assert np.allclose(conv(toks), plain(toks), atol=1e-5) == (lag == 0)


def test_parameters_carry_logical_axes():
    model = DecoderLM(
        _cfg(attention="linear", feature_map="favor", tie_embeddings=False), rngs=nnx.Rngs(0)
    )
    params = nnx.state(model, nnx.Any(nnx.Param, FavorProjection))
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert len(leaves) > 20
    for var in leaves:
        names = var.get_metadata().get("logical_axes")
        assert names is not None and len(names) == var.get_value().ndim, var
    layer = model.layers[0]
    assert layer.attn.q.kernel.get_metadata()["logical_axes"] == ("embed", "heads")
    assert layer.ffn.wo.kernel.get_metadata()["logical_axes"] == ("mlp", "embed")
    assert model.embed.token.embedding.get_metadata()["logical_axes"] == ("vocab", "embed")
    # The FAVOR projection is state, not a trainable parameter.
    assert isinstance(layer.attn.favor, FavorProjection)
    assert not any(
        isinstance(v, FavorProjection)
        for v in jax.tree.leaves(
            nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable)
        )
    )


def _np_activation(name, h):
    """The activations in float64 NumPy/SciPy: exact GELU x Phi(x), its tanh form (Hendrycks &
    Gimpel), its sigmoid form x sigma(1.702 x), relu."""
    from scipy.special import erf, expit

    return {
        "gelu": lambda h: 0.5 * h * (1 + erf(h / np.sqrt(2))),
        "gelu_tanh": lambda h: 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3))),
        "gelu_sigmoid": lambda h: h * expit(1.702 * h),
        "relu": lambda h: np.maximum(h, 0.0),
    }[name](h)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "gelu_sigmoid", "relu", "swiglu"])
def test_activation_choice_changes_the_network(activation):
    """The feed-forward block against float64 NumPy: W_o act(W_i x + b_i) + b_o, or
    W_o (silu(W_g x + b_g) * (W_i x + b_i)) + b_o for swiglu."""
    from research.models.layers import FeedForward

    model = DecoderLM(_cfg(activation=activation), rngs=nnx.Rngs(0))
    assert model(_tokens()).shape == (2, 10, 40)
    ffn = model.layers[0].ffn
    assert hasattr(ffn, "wg") == (activation == "swiglu")
    assert isinstance(ffn, FeedForward)
    x = np.random.default_rng(1).standard_normal((2, 5, 16)) * 2

    def dense(layer, x):
        return x @ np.asarray(layer.kernel.get_value(), np.float64) + np.asarray(
            layer.bias.get_value(), np.float64
        )

    h = dense(ffn.wi, x)
    if activation == "swiglu":
        g = dense(ffn.wg, x)
        h = g / (1 + np.exp(-g)) * h
    else:
        h = _np_activation(activation, h)
    want = dense(ffn.wo, h)
    np.testing.assert_allclose(ffn(jnp.asarray(x, jnp.float32)), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_model=30, num_heads=4), r"d_model \(30\) must be divisible by num_heads \(4\)"),
        (dict(attention="flash"), "attention='flash' is not allowed; choose one of softmax"),
        (dict(feature_map="cos"), "feature_map='cos' is not allowed"),
        (dict(num_kv_heads=3, num_heads=2, d_model=16), "multiple of num_kv_heads"),
        (dict(max_length=0), "max_length must be a positive int, got 0"),
        (dict(dropout=1.5), r"dropout must be in \[0, 1\)"),
        (dict(layer_norm_eps=-1.0), "layer_norm_eps must be > 0, got -1.0"),
        (dict(rope_base=-5.0), "rope_base must be > 0, got -5.0"),
        (dict(positions="alibi"), "positions='alibi' is not allowed"),
        (dict(short_conv=-1), "short_conv must be an int >= 0, got -1"),
    ],
)
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kwargs)


def test_bad_model_combinations_and_inputs():
    with pytest.raises(ValueError, match="linformer' cannot be causal"):
        DecoderLM(_cfg(attention="linformer"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="feature_map='softmax'.*cannot be causal"):
        DecoderLM(_cfg(attention="linear", feature_map="softmax"), rngs=nnx.Rngs(0))
    model = DecoderLM(_cfg(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="tokens length 30 exceeds max_length=24"):
        model(_tokens(length=30))
    with pytest.raises(ValueError, match="num_segments=0"):
        model(_tokens(), segment_ids=jnp.zeros((2, 10), jnp.int32))
    bert = Bert(_cfg(attention="linear", num_segments=2), rngs=nnx.Rngs(0))
    seg = jnp.zeros((2, 10), jnp.int32)
    with pytest.raises(ValueError, match="needs attention='softmax'"):
        bert(_tokens(), segment_ids=seg, unilm=True)


def test_dropout_is_active_in_train_mode_only():
    model = DecoderLM(_cfg(dropout=0.3), rngs=nnx.Rngs(0, dropout=1))
    toks = _tokens()
    model.eval()
    _assert_close(model(toks), model(toks), atol=0)
    model.train()
    a, b = model(toks), model(toks)
    assert not np.allclose(a, b)  # fresh dropout masks each call
    model.eval()
    _assert_close(model(toks), DecoderLM(_cfg(dropout=0.0), rngs=nnx.Rngs(0, dropout=1))(toks))


def test_an_untied_encoder_decoder_is_refused():
    """tie_embeddings=False built an EncoderDecoder with no head of its own, tied anyway."""
    with pytest.raises(ValueError, match="tie_embeddings=False: an EncoderDecoder ties its output"):
        EncoderDecoder(_cfg(tie_embeddings=False), rngs=nnx.Rngs(0))
