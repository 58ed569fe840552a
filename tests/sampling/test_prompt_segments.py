"""The sampler with prompt segment ids, the UniLM mask and a logit bias: each equals the
hand-written decode it replaced (chat's reply sampling, qagen's question beam and its banned
answer tokens), built here from the model's prefill / decode_step and research.ops.decoding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research.models import Bert, DecoderLM, EncoderDecoder, ModelConfig
from research.ops import decoding
from research.sampling import decode, generate

CFG = ModelConfig(
    vocab_size=30, d_model=16, num_heads=2, num_layers=2, d_ff=32, max_length=32, num_segments=2
)


def _prompts():
    prompt = jnp.asarray([[2, 7, 8, 3, 9, 3], [2, 5, 3, 0, 0, 0]], jnp.int32)
    lengths = jnp.asarray([6, 3], jnp.int32)
    segments = jnp.asarray([[0, 0, 0, 0, 1, 1], [1, 1, 1, 0, 0, 0]], jnp.int32)
    return prompt, lengths, segments


def test_sampling_with_prompt_segments_equals_chat_reply_sampling():
    model = DecoderLM(CFG.replace(tie_embeddings=True), rngs=nnx.Rngs(0))
    prompt, lengths, segments = _prompts()
    reply_segment, key = jnp.asarray([0, 0]), jax.random.key(3)
    opts = dict(top_k=5, top_p=1.0, temperature=1.0, stop_tokens=(3,), pad_id=0)

    @nnx.jit
    def reference(model, key):  # the chat task's former sample_replies
        logits, cache = model.prefill(
            prompt, lengths=lengths, segment_ids=segments, max_length=prompt.shape[1] + 8
        )
        step = lambda tok, c: model.decode_step(tok, c, segment=reply_segment)  # noqa: E731
        return decoding.sample(step, logits, cache, key, max_new_tokens=8, **opts)

    @nnx.jit
    def ours(model, key):
        return decode(
            model,
            prompt,
            lengths=lengths,
            max_new_tokens=8,
            method="sample",
            key=key,
            segment=reply_segment,
            segment_ids=segments,
            **opts,
        )

    want = np.asarray(reference(model, key))
    np.testing.assert_array_equal(np.asarray(ours(model, key)), want)
    jitted = generate(
        model,
        prompt,
        lengths=lengths,
        max_new_tokens=8,
        method="sample",
        key=key,
        segment=reply_segment,
        segment_ids=segments,
        **opts,
    )
    np.testing.assert_array_equal(np.asarray(jitted), want)
    # The segment ids matter: the same prompt as all segment 0 decodes differently.
    plain = decode(model, prompt, lengths=lengths, max_new_tokens=8, method="greedy")
    seg = decode(
        model, prompt, lengths=lengths, max_new_tokens=8, method="greedy", segment_ids=segments
    )
    assert not np.array_equal(np.asarray(plain), np.asarray(seg))


def test_unilm_beam_with_prompt_segments_equals_prefill_and_beam_search():
    model = Bert(CFG.replace(mlm_head=True, pooler=False), rngs=nnx.Rngs(1))
    prompt, lengths, segments = _prompts()
    logits, cache = model.prefill(
        prompt, lengths=lengths, segment_ids=segments, unilm=True, max_length=prompt.shape[1] + 5
    )
    step = functools.partial(model.decode_step, segment=1)
    want = decoding.beam_search(
        step, logits, cache, beam_size=3, max_new_tokens=5, eos_id=3, pad_id=0
    )
    got = decode(
        model,
        prompt,
        lengths=lengths,
        max_new_tokens=5,
        method="beam",
        segment=1,
        segment_ids=segments,
        unilm=True,
        beam_size=3,
        eos_id=3,
        pad_id=0,
    )
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-6)
    # Independently of the cache and the beam bookkeeping: each beam's score is the sum of its
    # tokens' log-probabilities (through EOS; alpha 0) under one cache-free UniLM forward of
    # prompt + beam, the beam in segment 1.
    tokens, scores = np.asarray(got[0]), np.asarray(got[1])
    for row in range(prompt.shape[0]):
        n = int(lengths[row])
        for beam in range(3):
            out = list(tokens[row, beam])
            out = out[: out.index(3) + 1] if 3 in out else out
            seq = np.concatenate([np.asarray(prompt[row, :n]), out])[None]
            seg = np.concatenate([np.asarray(segments[row, :n]), np.ones(len(out), int)])[None]
            logits = model(jnp.asarray(seq), segment_ids=jnp.asarray(seg), unilm=True).logits
            logp = jax.nn.log_softmax(np.asarray(logits[0], np.float64), axis=-1)
            total = sum(float(logp[n - 1 + t, tok]) for t, tok in enumerate(out))
            assert scores[row, beam] == pytest.approx(total, rel=1e-4, abs=1e-4), (row, beam)


def test_logit_bias_is_added_to_every_step_and_bans_tokens():
    model = DecoderLM(CFG, rngs=nnx.Rngs(2))
    prompt, lengths, _ = _prompts()
    banned = jnp.asarray([0, 1, 2, 4], jnp.int32)
    ban = jnp.zeros(CFG.vocab_size).at[banned].set(-jnp.inf)
    key = jax.random.key(5)
    logits, cache = model.prefill(prompt, lengths=lengths, max_length=prompt.shape[1] + 12)

    def step(token, cache):
        logits, cache = model.decode_step(token, cache)
        return logits + ban, cache

    want = decoding.sample(step, logits + ban, cache, key, max_new_tokens=12, temperature=2.0)
    got = decode(
        model,
        prompt,
        lengths=lengths,
        max_new_tokens=12,
        method="sample",
        key=key,
        logit_bias=ban,
        temperature=2.0,
    )
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert not np.isin(np.asarray(got), np.asarray(banned)).any()
    # generate (checked, jitted) takes it too; a bias of another shape is one line
    opts = dict(lengths=lengths, max_new_tokens=12, method="sample", key=key, temperature=2.0)
    jitted = generate(model, prompt, logit_bias=ban, **opts)
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(want))
    with pytest.raises(ValueError, match=r"logit_bias must be \[vocab_size\] = \[30\], got"):
        generate(model, prompt, logit_bias=ban[:-1], **opts)


def test_an_encoder_decoder_takes_no_prompt_segments():
    model = EncoderDecoder(CFG.replace(num_layers=1, num_segments=0), rngs=nnx.Rngs(0))
    prompt, lengths, segments = _prompts()
    for extra in ({"segment_ids": segments}, {"unilm": True}):
        with pytest.raises(ValueError, match="no segments; drop segment_ids= and unilm="):
            generate(model, prompt, lengths=lengths, max_new_tokens=2, bos_id=1, **extra)
