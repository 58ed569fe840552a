"""Scanned layer stacks (`ModelConfig.scan_layers`) against the unrolled loop they replace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research.models import Bert, DecoderLM, EncoderDecoder, ModelConfig, partitioning, stack
from research.models.layers import Block
from research.models.params import transfer, unused_paths
from research.ops import decoding

BASE = dict(
    vocab_size=50, d_model=32, num_heads=4, num_layers=3, d_ff=64, max_length=32, positions="rotary"
)


def _pair(cls, **kw):
    """The same architecture unrolled and scanned, from the same seed."""
    cfg = ModelConfig(**{**BASE, **kw})
    return cls(cfg, rngs=nnx.Rngs(0)), cls(cfg.replace(scan_layers=True), rngs=nnx.Rngs(0))


def _tokens(b=2, length=11, seed=1):
    return jax.random.randint(jax.random.key(seed), (b, length), 1, 50)


def test_scanned_model_stacks_the_unrolled_parameters():
    unrolled, scanned = _pair(DecoderLM)
    assert isinstance(unrolled.layers, nnx.List) and isinstance(scanned.layers, Block)
    q = scanned.layers.attn.q.kernel
    assert q.get_value().shape == (3, 32, 32)
    assert q.get_metadata()["logical_axes"] == ("layers", "embed", "heads")
    for i, layer in enumerate(unrolled.layers):
        a = nnx.to_flat_state(nnx.state(layer, nnx.Param))
        b = nnx.to_flat_state(nnx.state(stack.layer_at(scanned.layers, i), nnx.Param))
        for (pa, va), (pb, vb) in zip(a, b, strict=True):
            assert pa == pb
            np.testing.assert_array_equal(va.get_value(), vb.get_value())
    # The rest of the model (embeddings, final norm) is the same draw too.
    np.testing.assert_array_equal(
        unrolled.embed.token.embedding.get_value(), scanned.embed.token.embedding.get_value()
    )


@pytest.mark.parametrize(
    "kw",
    [{}, {"attention": "linear"}, {"short_conv": 3, "remat": "full"}, {"num_kv_heads": 2},
     {"norm": "post", "positions": "learned", "remat": "save_qkv_proj"},
     {"attention": "gated_deltanet", "positions": "none", "remat": "full"}],
    ids=["softmax", "linear", "short_conv-remat", "gqa", "post-ln", "gated_deltanet-remat"],
)  # fmt: skip
def test_decoder_forward_and_incremental_decoding_match(kw):
    unrolled, scanned = _pair(DecoderLM, **kw)
    tokens = _tokens()
    full = scanned(tokens)
    np.testing.assert_allclose(full, unrolled(tokens), atol=1e-5)
    logits, cache = scanned.prefill(tokens[:, :4], lengths=jnp.array([4, 3]), max_length=16)
    leaves = jax.tree.leaves(cache["layers"])
    assert all(x.shape[:2] == (2, 3) for x in leaves)  # batch first, then layers
    np.testing.assert_allclose(logits[0], full[0, 3], atol=1e-5)
    # Row 1 had a 3-token prompt: decoding its 4th token reproduces the full forward.
    steps = []
    for t in range(3, 10):
        token = jnp.array([tokens[0, t + 1], tokens[1, t]])
        logits, cache = scanned.decode_step(token, cache)
        steps.append(logits[1])
    np.testing.assert_allclose(jnp.stack(steps), full[1, 3:10], atol=1e-5)


def test_beam_search_reorders_a_scanned_cache():
    unrolled, scanned = _pair(DecoderLM)
    prompt = _tokens(length=5)
    out = []
    for model in (unrolled, scanned):
        logits, cache = model.prefill(prompt, max_length=16)
        seqs, scores = decoding.beam_search(
            model.decode_step, logits, cache, beam_size=3, max_new_tokens=6, eos_id=0
        )
        out.append((np.asarray(seqs), np.asarray(scores)))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_allclose(out[0][1], out[1][1], atol=1e-5)


def test_bert_and_unilm_prefill_match():
    unrolled, scanned = _pair(Bert, num_segments=2, norm="post", positions="learned")
    tokens = _tokens(length=9)
    seg = jnp.array([[0] * 6 + [1] * 3] * 2)
    a = unrolled(tokens, segment_ids=seg, unilm=True)
    b = scanned(tokens, segment_ids=seg, unilm=True)
    np.testing.assert_allclose(b.logits, a.logits, atol=1e-5)
    la, _ = unrolled.prefill(tokens, segment_ids=seg, unilm=True, max_length=12)
    lb, _ = scanned.prefill(tokens, segment_ids=seg, unilm=True, max_length=12)
    np.testing.assert_allclose(lb, la, atol=1e-5)


def test_encoder_decoder_scans_both_stacks_and_decodes():
    unrolled, scanned = _pair(EncoderDecoder, num_decoder_layers=2)
    assert isinstance(scanned.encoder, Block) and stack.num_layers(scanned.layers) == 2
    src, tgt = _tokens(length=7), _tokens(length=6, seed=2)
    full = scanned(src, tgt)
    np.testing.assert_allclose(full, unrolled(src, tgt), atol=1e-5)
    logits, cache = scanned.prefill(src, bos_id=1, max_length=8)
    assert cache["layers"]["cross"]["k"].shape == (2, 2, 7, 4, 8)  # [B, layers, S, Hkv, D]
    steps = [logits]
    for t in range(5):
        logits, cache = scanned.decode_step(tgt[:, t], cache)
        steps.append(logits)
    forced = scanned(src, jnp.concatenate([jnp.ones((2, 1), tgt.dtype), tgt[:, :5]], axis=1))
    np.testing.assert_allclose(jnp.stack(steps, 1), forced, atol=1e-5)


@pytest.mark.parametrize("remat", list(partitioning.REMAT_POLICIES))
def test_gradients_match_for_every_remat_policy(remat):
    """A scanned stack under each policy has the unrolled model's gradients: every layer's, the
    embeddings' and the final norm's."""
    tokens = _tokens(length=12)

    def loss(model):
        logits = model(tokens[:, :-1])
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    unrolled, _ = _pair(DecoderLM)
    ref = nnx.grad(loss)(unrolled)
    _, scanned = _pair(DecoderLM, remat=remat)
    grads = nnx.grad(loss)(scanned)
    for i in range(3):
        a = nnx.to_flat_state(ref["layers"][i])
        b = nnx.to_flat_state(jax.tree.map(lambda x, i=i: x[i], grads["layers"]))
        for (pa, va), (pb, vb) in zip(a, b, strict=True):
            assert pa == pb
            np.testing.assert_allclose(vb.get_value(), va.get_value(), atol=1e-6)
    rest = [nnx.to_flat_state(g) for g in (ref, grads)]
    rest = [[(p, v) for p, v in flat if p[0] != "layers"] for flat in rest]
    assert [p for p, _ in rest[0]] == [p for p, _ in rest[1]] and rest[0]
    for (_, va), (_, vb) in zip(*rest, strict=True):
        np.testing.assert_allclose(vb.get_value(), va.get_value(), atol=1e-6)


def test_scan_compiles_one_layer_body():
    # The jaxpr (what XLA compiles) holds one layer body however deep the stack: compile time
    # stays flat in depth (research.plan --layers_sweep measures it on a TPU topology).
    def dots(n, scan):
        model = DecoderLM(
            ModelConfig(**{**BASE, "num_layers": n, "scan_layers": scan}), rngs=nnx.Rngs(0)
        )
        return str(jax.make_jaxpr(lambda t: model(t))(_tokens())).count("dot_general")

    assert dots(2, True) == dots(8, True)
    assert dots(8, False) - dots(2, False) == 6 * (dots(3, False) - dots(2, False)) > 0


def test_dropout_differs_per_layer_and_is_reproducible():
    cfg = ModelConfig(**{**BASE, "dropout": 0.5, "scan_layers": True})
    model = DecoderLM(cfg, rngs=nnx.Rngs(params=0, dropout=1))
    model.train()
    nnx.reseed(model, dropout=jax.random.key(3), policy="match_shape")
    keys = jax.random.key_data(model.layers.dropout.rngs.key.get_value())
    assert len({tuple(np.asarray(k).ravel()) for k in keys}) == 3  # one stream per layer
    tokens = _tokens()
    a = model(tokens)
    nnx.reseed(model, dropout=jax.random.key(3), policy="match_shape")
    np.testing.assert_array_equal(model(tokens), a)
    model.eval()
    assert not np.allclose(model(tokens), a)  # dropout was on


def test_convert_and_transfer_between_layouts():
    unrolled, scanned = _pair(DecoderLM)
    tokens = _tokens()
    ref = unrolled(tokens)
    back = stack.convert(scanned, scan=False)
    assert isinstance(back.layers, nnx.List) and not back.cfg.scan_layers
    np.testing.assert_allclose(back(tokens), ref, atol=1e-6)
    again = stack.convert(back, scan=True)
    np.testing.assert_allclose(again(tokens), ref, atol=1e-6)
    # transfer matches layers by number across layouts, both ways.
    fresh = DecoderLM(unrolled.cfg.replace(scan_layers=True), rngs=nnx.Rngs(7))
    copied, left = transfer(unrolled, fresh)
    assert not left and "layers/2/attn/q/kernel" in copied
    np.testing.assert_allclose(fresh(tokens), ref, atol=1e-6)
    flat = DecoderLM(unrolled.cfg, rngs=nnx.Rngs(7))
    assert not transfer(fresh, flat)[1]
    np.testing.assert_allclose(flat(tokens), ref, atol=1e-6)
    # A 2-layer scanned model takes the first 2 layers of the 3-layer one.
    short = DecoderLM(unrolled.cfg.replace(num_layers=2, scan_layers=True), rngs=nnx.Rngs(7))
    copied, left = transfer(scanned, short)
    assert not left and not any(c.startswith("layers/2/") for c in copied)
    np.testing.assert_array_equal(
        short.layers.ffn.wi.kernel.get_value(), again.layers.ffn.wi.kernel.get_value()[:2]
    )
    # What was left out is named in either layout: the third layer, and nothing else.
    unused = unused_paths(scanned, copied)
    assert unused and all(u.startswith("layers/2/") for u in unused)
    assert "layers/2/attn/q/kernel" in unused
    flat_short = DecoderLM(unrolled.cfg.replace(num_layers=2), rngs=nnx.Rngs(7))
    copied_flat, _ = transfer(unrolled, flat_short)
    assert unused_paths(unrolled, copied_flat) == unused
    assert unused_paths(scanned, transfer(scanned, flat)[0]) == []


def test_bad_scan_layers_value():
    with pytest.raises(ValueError, match="scan_layers must be True or False, got 'yes'"):
        ModelConfig(scan_layers="yes")
