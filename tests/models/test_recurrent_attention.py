"""The gated / delta-rule layers (GLA, RetNet, DeltaNet, Gated DeltaNet) against NumPy, packed
documents against separate runs for every causal kind, and their config errors.

(Prefill + decode == forward and padding for these kinds: tests/models/test_transformer.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import lm
from research.config import ConfigError
from research.data.lm import _shift
from research.models import DecoderLM, ModelConfig
from research.models.config import attention_overrides
from research.models.layers import make_attention
from research.models.recurrent_attention import retnet_log_decays
from research.tasks.lm import lm_loss
from research.train.config import parse
from tests.ops.references import np_delta_rule, np_gated_linear_attention

TINY = dict(
    vocab_size=40, d_model=16, num_heads=2, num_layers=2, d_ff=32, max_length=24, chunk_size=4
)


def _np(x):
    return np.asarray(x, np.float64)


def _dense(layer, x):
    y = x @ _np(layer.kernel.get_value())
    return y if layer.bias is None else y + _np(layer.bias.get_value())


def _silu(x):
    return x / (1 + np.exp(-x))


def _readout(attn, x, o, eps):
    """NumPy: per-head RMSNorm(o) * swish(W_g x), then W_o."""
    o = o / np.sqrt(np.mean(o * o, axis=-1, keepdims=True) + eps) * _np(attn.norm.get_value())
    o = o * _silu(_dense(attn.gate, x)).reshape(o.shape)
    return _dense(attn.o, o.reshape(*o.shape[:2], -1))


def _conv(x, w):
    """Causal depthwise conv: y_t = sum_s w[s] x_{t-s}."""
    y = np.zeros_like(x)
    for s in range(w.shape[0]):
        y[:, s:] += w[s] * x[:, : x.shape[1] - s]
    return y


@pytest.mark.parametrize("temperature", [16.0, 2.5])
def test_gla_layer_equals_numpy(temperature):
    cfg = ModelConfig(
        **TINY, attention="gla", positions="none", gla_gate_rank=3, gla_gate_temperature=temperature
    )
    attn = make_attention(cfg, causal=True, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).standard_normal((2, 11, 16)).astype(np.float32)
    got = attn(jnp.asarray(x))
    xd = _np(x)
    heads = lambda t: t.reshape(2, 11, 2, 8)  # noqa: E731
    q, k, v = (heads(_dense(p, xd)) for p in (attn.q, attn.k, attn.v))
    logit = _dense(attn.gate_up, _dense(attn.gate_down, xd))
    g = heads(-np.log1p(np.exp(-logit)) / temperature)  # log-sigmoid / temperature
    o, _ = np_gated_linear_attention(q, k, v, g)
    want = _readout(attn, xd, o, cfg.layer_norm_eps)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["deltanet", "gated_deltanet"])
def test_delta_layers_equal_numpy(kind):
    cfg = ModelConfig(**TINY, attention=kind, positions="none", num_kv_heads=1, qkv_conv=3)
    attn = make_attention(cfg, causal=True, rngs=nnx.Rngs(1))
    x = np.random.default_rng(1).standard_normal((2, 10, 16)).astype(np.float32)
    got = attn(jnp.asarray(x))
    xd = _np(x)
    q, k, v = (
        _silu(_conv(_dense(p, xd), _np(getattr(attn, f"{n}_conv").get_value())))
        for n, p in (("q", attn.q), ("k", attn.k), ("v", attn.v))
    )
    q, k, v = q.reshape(2, 10, 2, 8), k.reshape(2, 10, 1, 8), v.reshape(2, 10, 1, 8)
    q, k = (t / np.sqrt(np.sum(t * t, axis=-1, keepdims=True) + 1e-6) for t in (q, k))
    beta = 1 / (1 + np.exp(-_dense(attn.beta, xd)))
    g = None
    if kind == "gated_deltanet":
        a = _dense(attn.decay_proj, xd) + _np(attn.dt_bias.get_value())
        g = -np.exp(_np(attn.a_log.get_value())) * np.log1p(np.exp(a))
        assert np.all(g < 0)
    o, _ = np_delta_rule(q, k, v, beta, log_gate=g)
    want = _readout(attn, xd, o, cfg.layer_norm_eps)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-4)


def test_retnet_layer_equals_numpy():
    """RetNet: the scalar per-head decays of the paper, the key convolution, rotary q and k,
    and the readout (per-head RMSNorm, swish gate, W_o), against NumPy."""
    cfg = ModelConfig(**TINY, attention="retnet", positions="rotary", short_conv=2)
    attn = make_attention(cfg, causal=True, rngs=nnx.Rngs(4))
    x = np.random.default_rng(4).standard_normal((2, 9, 16)).astype(np.float32)
    pos = np.broadcast_to(np.arange(9), (2, 9))
    got = attn(jnp.asarray(x), positions=jnp.asarray(pos))
    xd = _np(x)
    heads = lambda t: t.reshape(2, 9, 2, 8)  # noqa: E731
    xk = _conv(xd, _np(attn.key_conv.get_value()))  # the key convolution on x
    q, k, v = heads(_dense(attn.q, xd)), heads(_dense(attn.k, xk)), heads(_dense(attn.v, xd))
    # Rotary (split halves, base 10,000) on q and k.
    half = 4
    freq = 10_000.0 ** (-np.arange(half) / half)
    ang = pos[..., None, None] * freq
    cos, sin = np.cos(ang), np.sin(ang)

    def rot(t):
        a, b = t[..., :half], t[..., half:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], -1)

    g = np.broadcast_to(np.log(1 - 2.0 ** (-5 - np.arange(2))), (2, 9, 2))
    o, _ = np_gated_linear_attention(rot(q), rot(k), v, g)
    want = _readout(attn, xd, o, cfg.layer_norm_eps)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-4)


def test_retnet_decays_are_the_papers():
    """gamma_h = 1 - 2^(-5 - h) (Sun et al. 2023, section 2.2)."""
    want = np.log([1 - 2.0 ** (-5 - h) for h in range(4)])
    np.testing.assert_allclose(np.asarray(retnet_log_decays(4)), want, rtol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        dict(attention="softmax"),
        dict(attention="softmax", softmax_implementation="blockwise"),
        dict(attention="linear", feature_map="elu"),
        dict(attention="linear", feature_map="elu", short_conv=3),
        dict(attention="gla"),
        dict(attention="gla", short_conv=3),
        dict(attention="retnet", positions="rotary"),
        dict(attention="deltanet"),
        dict(attention="gated_deltanet", positions="rotary"),
        # the 1b_gdn preset's layer stack: scanned and rematerialised layers pass the ids on
        dict(attention="gated_deltanet", scan_layers=True, remat="full"),
        dict(attention="softmax", scan_layers=True, remat="save_qkv_proj", short_conv=3),
    ],
    ids=lambda kw: "-".join(str(v) for v in kw.values()),
)
def test_packed_documents_get_the_logits_they_get_alone(kw):
    """Three documents (5, 1 and 7 tokens; chunks of 4, so two cross a chunk boundary) packed in
    one row: each gets exactly its own logits (attention, positions and recurrent state all
    restart at its first token), and the row's loss is the sum of the documents' own."""
    model = DecoderLM(ModelConfig(**{**TINY, **kw}), rngs=nnx.Rngs(2))
    toks = jax.random.randint(jax.random.PRNGKey(3), (1, 13), 1, TINY["vocab_size"])
    doc = jnp.asarray([[0] * 5 + [1] + [2] * 7])
    packed = model(toks, document_ids=doc)
    want_loss = 0.0  # NumPy cross-entropy of each document's next tokens, from its own logits
    for start, stop in ((0, 5), (5, 6), (6, 13)):
        alone = model(toks[:, start:stop])
        np.testing.assert_allclose(packed[:, start:stop], alone, atol=2e-5, rtol=1e-5)
        logits = np.asarray(alone[0, :-1], np.float64)
        log_p = logits - logits.max(-1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
        want_loss -= log_p[np.arange(stop - start - 1), np.asarray(toks[0, start + 1 : stop])].sum()
    # Without the ids the later documents see the earlier ones.
    assert not np.allclose(model(toks)[:, 6:], packed[:, 6:], atol=1e-3)
    # The loss of the row as the LM data packs it (ids 1, 2, 3): no target crosses a boundary,
    # and the 1-token document has none.
    row = {"tokens": np.asarray(toks), "tokens_segment_ids": np.asarray(doc) + 1}
    loss, weight, _ = lm_loss(model, _shift(row, documents=True))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    assert float(weight) == 4 + 6


def test_tpu_flash_takes_packed_documents_as_its_segment_ids(monkeypatch):
    """On a TPU the flash kernel gets the packed documents (it used to fall back to blockwise
    silently). Off TPU the kernel cannot run, so the platform is patched and the op's call is
    recorded and answered by the dense form: the documents' ids reach it and each document gets
    its own logits."""
    from research import ops
    from research.models import attention as attention_module

    calls = []
    real = ops.softmax_attention

    def kernel(*args, implementation, segment_ids=None, **kw):
        calls.append((implementation, None if segment_ids is None else np.asarray(segment_ids)))
        return real(*args, implementation="xla", segment_ids=segment_ids, **kw)

    cfg = {**TINY, "max_length": 128, "softmax_implementation": "tpu_flash"}
    model = DecoderLM(ModelConfig(**cfg), rngs=nnx.Rngs(2))
    toks = jax.random.randint(jax.random.PRNGKey(3), (1, 128), 1, TINY["vocab_size"])
    doc = jnp.asarray([[0] * 50 + [1] * 78])
    monkeypatch.setattr(attention_module, "platform", lambda: "tpu")
    monkeypatch.setattr(ops, "softmax_attention", kernel)
    packed = model(toks, document_ids=doc)
    assert [c[0] for c in calls] == ["tpu_flash"] * TINY["num_layers"]
    assert all(np.array_equal(c[1], doc) for c in calls)
    monkeypatch.undo()
    for start, stop in ((0, 50), (50, 128)):
        alone = model(toks[:, start:stop])
        np.testing.assert_allclose(packed[:, start:stop], alone, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            dict(attention="gated_deltanet", feature_map="taylor"),
            "model: feature_map='taylor' does not apply to attention='gated_deltanet' (no feature "
            "map: the kind has its own gates); leave feature_map at its default 'elu'",
        ),
        (
            dict(attention="deltanet", short_conv=3),
            "model: short_conv=3 does not apply to attention='deltanet'; leave it at 0",
        ),
        (
            dict(attention="retnet", linear_form="cumsum"),
            "model: linear_form='cumsum' is not allowed with attention='retnet'; choose one of "
            "chunked, scan",
        ),
        (
            dict(attention="gla", gla_gate_temperature=0.0),
            "model: gla_gate_temperature must be > 0, got 0.0",
        ),
        (
            dict(attention="gla", qkv_conv=2),
            "model: qkv_conv=2 does not apply to attention='gla' (only deltanet, gated_deltanet); "
            "leave it at 4",
        ),
        (
            dict(attention="gated_deltanet", gla_gate_temperature=2.0),
            "model: gla_gate_temperature=2.0 does not apply to attention='gated_deltanet' (only "
            "gla); leave it at 16.0",
        ),
        (
            dict(attention="softmax", gla_gate_rank=4),
            "model: gla_gate_rank=4 does not apply to attention='softmax' (only gla); leave it "
            "at 16",
        ),
        (
            dict(attention="softmax", linear_implementation="pallas"),
            "model: linear_implementation='pallas' applies to attention linear, gla, retnet, "
            "deltanet, gated_deltanet; got attention='softmax'",
        ),
        (
            dict(attention="gla", linear_implementation="pallas", linear_form="scan"),
            "model: linear_implementation='pallas' is a kernel of linear_form='chunked'; got "
            "linear_form='scan'",
        ),
        (
            dict(attention="deltanet", linear_implementation="pallas", chunk_size=24),
            "model: chunk_size=24 with implementation='pallas': use a power of two from 16",
        ),
    ],
)
def test_a_new_kind_with_an_option_it_does_not_take_is_one_line(override, message):
    c = lm.get_config("smoke")
    c.model.update(override)
    with pytest.raises(ConfigError) as e:
        parse(c)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_sweep_over_kinds_keeps_each_kinds_own_options():
    """attention_overrides (compare_attention, recall): a delta-only option set for the whole
    sweep stays on its delta points and goes back to its default on the others."""
    c = lm.get_config("smoke")
    c.model.update(qkv_conv=3, gla_gate_rank=5)
    for name, conv, rank in (("gated_deltanet", 3, 16), ("gla", 4, 5), ("taylor", 4, 16)):
        point = c.copy_and_resolve_references()
        point.model.update(**attention_overrides(name))
        model = parse(point).model
        assert (model.qkv_conv, model.gla_gate_rank, model.gla_gate_temperature) == (conv, rank, 16)


def test_a_bidirectional_task_refuses_a_causal_only_kind():
    from configs import mlm

    c = mlm.get_config("smoke")
    c.model.attention = "gated_deltanet"
    with pytest.raises(ConfigError) as e:
        parse(c)
    assert str(e.value) == (
        "model.attention='gated_deltanet' is causal self-attention only (a recurrence); "
        "task='mlm' trains a Bert with bidirectional or cross-attention: use softmax, linear or "
        "linformer"
    )
    with pytest.raises(ValueError, match="'gla' is causal self-attention only"):
        make_attention(ModelConfig(**TINY, attention="gla"), causal=False, rngs=nnx.Rngs(0))


def _logits_and_grads(cfg, toks, doc):
    """A DecoderLM of `cfg` on packed `toks`: its logits and the gradients of sum(sin(logits))."""
    model = DecoderLM(cfg, rngs=nnx.Rngs(2))
    graph, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        logits = nnx.merge(graph, params, rest)(toks, document_ids=doc)
        return jnp.sum(jnp.sin(logits)), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, grads


def test_the_pallas_kernels_give_the_xla_forms_model_and_gpu_is_refused():
    """model.linear_implementation='pallas' (here under the Pallas interpreter): a Gated DeltaNet
    LM with packed documents has the XLA form's logits and gradients; on a GPU the config is
    refused in one line naming the XLA form."""
    cfg = ModelConfig(**{**TINY, "attention": "gated_deltanet", "chunk_size": 16})
    toks = jax.random.randint(jax.random.PRNGKey(3), (2, 21), 1, TINY["vocab_size"])
    doc = jnp.asarray([[0] * 5 + [1] * 16, [0] * 21])

    want, want_grads = _logits_and_grads(cfg.replace(linear_implementation="xla"), toks, doc)
    got, got_grads = _logits_and_grads(cfg.replace(linear_implementation="pallas"), toks, doc)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    for w, g in zip(jax.tree.leaves(want_grads), jax.tree.leaves(got_grads), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(np.abs(w).max()))
    c = lm.get_config("smoke")
    c.model.update(attention="gated_deltanet", linear_implementation="pallas", chunk_size=16)
    with pytest.raises(ConfigError) as e:
        parse(c, platform="gpu")
    assert str(e.value).startswith(
        "model.linear_implementation='pallas' has TPU (Mosaic) kernels only, no GPU (Triton) "
        "kernel: use model.linear_implementation=xla"
    )


@pytest.mark.parametrize("attention", ["gla", "gated_deltanet"])  # 4-D gates; scalar gates, beta
def test_the_pallas_kernels_per_device_on_a_mesh_give_the_xla_forms_model(monkeypatch, attention):
    """On a TPU mesh the Mosaic kernels run per device (`per_device`: batch and heads split,
    grouped k/v repeated first). Off TPU the platform is patched and the kernels run under the
    Pallas interpreter on 8 CPU devices (data 2 x fsdp 2 x tensor 2, 4 heads, 2 k/v heads):
    logits and gradients equal the XLA form's on one device, with packed documents."""
    from research.models import recurrent_attention
    from research.models.partitioning import activation_sharding
    from research.train import sharding

    extra = dict(num_heads=4, num_kv_heads=2, d_model=32, chunk_size=16)
    cfg = ModelConfig(**{**TINY, **extra, "attention": attention})
    toks = jax.random.randint(jax.random.PRNGKey(3), (4, 21), 1, TINY["vocab_size"])
    doc = jnp.asarray([[0] * 5 + [1] * 16, [0] * 21, [0] * 11 + [1] * 10, [0] * 21])
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})

    calls = []
    real = recurrent_attention.per_device

    def spy(*args, **kw):
        calls.append(args[0])
        return real(*args, **kw)

    want, want_grads = _logits_and_grads(cfg.replace(linear_implementation="xla"), toks, doc)
    monkeypatch.setattr(recurrent_attention, "platform", lambda: "tpu")
    monkeypatch.setattr(recurrent_attention, "per_device", spy)
    with activation_sharding(sharding.activation_resolver(mesh)):
        got, got_grads = _logits_and_grads(cfg.replace(linear_implementation="pallas"), toks, doc)
    assert len(calls) == TINY["num_layers"]  # every layer went through the per-device path
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    for w, g in zip(jax.tree.leaves(want_grads), jax.tree.leaves(got_grads), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(np.abs(w).max()))
