import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research.models import Bert, DecoderLM, EncoderDecoder, ModelConfig
from research.sampling import decode, generate

CFG = ModelConfig(
    vocab_size=30, d_model=16, num_heads=2, num_layers=2, d_ff=32, max_length=32, chunk_size=4
)


@pytest.mark.parametrize("attention", ["softmax", "linear", "gla", "gated_deltanet"])
def test_jitted_greedy_equals_argmax_of_full_forward(attention):
    model = DecoderLM(CFG.replace(attention=attention), rngs=nnx.Rngs(0))
    prompt = jax.random.randint(jax.random.PRNGKey(0), (2, 4), 1, 30)
    out = np.asarray(generate(model, prompt, max_new_tokens=6))
    seq = np.asarray(prompt)
    for _ in range(6):  # reference: re-run the whole sequence for every new token
        nxt = np.argmax(np.asarray(model(jnp.asarray(seq)))[:, -1], axis=-1)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq[:, 4:])


def test_sampling_and_beam_through_the_model():
    model = DecoderLM(CFG, rngs=nnx.Rngs(1))
    prompt = jnp.ones((3, 2), jnp.int32)

    def sample(seed):
        opts = dict(method="sample", max_new_tokens=5, top_k=5, temperature=0.7)
        return generate(model, prompt, key=jax.random.PRNGKey(seed), **opts)

    a = sample(1)
    np.testing.assert_array_equal(a, sample(1))  # deterministic given the key
    # Every token drawn is among the 5 most likely under a full forward of the sequence so far
    # (top_k), not always the most likely one, and another key draws something else.
    seq = np.concatenate([np.asarray(prompt), np.asarray(a)], axis=1)
    logits = np.asarray(model(jnp.asarray(seq)))
    ranks = []
    for t in range(5):
        step = logits[:, 1 + t]  # predicts seq[:, 2 + t] = a[:, t]
        rank = (step > step[np.arange(3), np.asarray(a)[:, t]][:, None]).sum(-1)
        ranks.extend(rank.tolist())
    assert max(ranks) < 5 and max(ranks) > 0, ranks
    assert not np.array_equal(np.asarray(sample(2)), np.asarray(a))
    # EOS = 8, a token this model likes, so that some hypotheses finish.
    seqs, scores = generate(model, prompt, method="beam", max_new_tokens=4, beam_size=3, eos_id=8)
    assert seqs.shape == (3, 3, 4) and scores.shape == (3, 3)
    # A beam's score is its log-probability under the model, up to its EOS (alpha = 0).
    for k in range(3):
        want = _score(model, prompt, seqs[:, k], eos_id=8)
        np.testing.assert_allclose(scores[:, k], want, atol=1e-4)
    assert np.any(np.asarray(seqs)[:, :, :-1] == 8)  # finished hypotheses among the results
    greedy = generate(model, prompt, max_new_tokens=4)
    assert np.all(np.asarray(scores[:, 0]) >= np.asarray(_score(model, prompt, greedy)) - 1e-5)


@pytest.mark.parametrize("attention", ["retnet", "deltanet"])
def test_beam_reorders_recurrent_states_and_conv_windows(attention):
    """Beam search gathers the cache rows of the surviving beams: a recurrent state and (for
    the delta kinds) the conv windows must follow their beam, so the best beam's score is its
    log-probability under a fresh forward pass."""
    model = DecoderLM(CFG.replace(attention=attention, short_conv=0), rngs=nnx.Rngs(2))
    prompt = jax.random.randint(jax.random.PRNGKey(3), (2, 3), 1, 30)
    seqs, scores = generate(model, prompt, method="beam", max_new_tokens=5, beam_size=3, eos_id=0)
    for b in range(3):
        want = _score(model, prompt, seqs[:, b], eos_id=0)
        np.testing.assert_allclose(scores[:, b], want, atol=1e-4)


def _score(model, prompt, tokens, eos_id=None):
    """log p(tokens | prompt) under a fresh forward pass, up to and including the first
    `eos_id` (a finished hypothesis: what follows it is padding)."""
    full = model(jnp.concatenate([prompt, tokens], axis=1))
    logp = jax.nn.log_softmax(full[:, prompt.shape[1] - 1 : -1], axis=-1)
    per_token = jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    if eos_id is not None:  # keep positions up to the first EOS
        ended_before = jnp.cumsum(tokens == eos_id, axis=1) - (tokens == eos_id)
        per_token = jnp.where(ended_before > 0, 0.0, per_token)
    return per_token.sum(1)


def test_generate_bad_arguments():
    model = DecoderLM(CFG, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown method 'nucleus'"):
        generate(model, jnp.ones((1, 2), jnp.int32), max_new_tokens=2, method="nucleus")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        generate(model, jnp.ones((1, 2), jnp.int32), max_new_tokens=2, method="sample")
    # Values that jit would clamp silently (an id past the vocabulary, a length past the prompt).
    prompt = jnp.ones((2, 3), jnp.int32)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int, got 0"):
        generate(model, prompt, max_new_tokens=0)
    with pytest.raises(ValueError, match=r"prompt token ids must be in \[0, 30\), got 1 to 30"):
        generate(model, prompt.at[0, 0].set(30), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 3\] .* got 0 to 4"):
        generate(model, prompt, lengths=jnp.array([0, 4]), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"lengths must be \[batch\] = \(2,\), got \(1,\)"):
        generate(model, prompt, lengths=jnp.array([3]), max_new_tokens=2)


def test_encoder_decoder_greedy_equals_a_teacher_forced_argmax_loop():
    model = EncoderDecoder(CFG.replace(num_layers=1), rngs=nnx.Rngs(2))
    src = jax.random.randint(jax.random.PRNGKey(3), (2, 7), 2, 30)
    lengths = jnp.array([7, 4])
    out = np.asarray(generate(model, src, lengths=lengths, max_new_tokens=5, bos_id=1))
    src_mask = jnp.arange(7)[None] < lengths[:, None]
    memory = model.encode(src, src_mask=src_mask)
    tgt = np.ones((2, 1), np.int32)  # BOS, then each step's argmax fed back
    for _ in range(5):
        logits = model.decode(memory, jnp.asarray(tgt), src_mask=src_mask)
        tgt = np.concatenate([tgt, np.argmax(np.asarray(logits)[:, -1], -1)[:, None]], axis=1)
    np.testing.assert_array_equal(out, tgt[:, 1:])
    # The traceable core runs inside a caller's jit (a training loss) with the same result.
    graphdef, state = nnx.split(model)

    @jax.jit
    def inside(state, src, lengths):
        return decode(
            nnx.merge(graphdef, state),
            src,
            lengths=lengths,
            max_new_tokens=5,
            method="greedy",
            bos_id=1,
        )

    np.testing.assert_array_equal(inside(state, src, lengths), out)


def test_unilm_bert_beam_through_generate():
    model = Bert(CFG.replace(norm="post", num_segments=2), rngs=nnx.Rngs(4))
    prompt = jax.random.randint(jax.random.PRNGKey(5), (2, 5), 1, 30)
    tokens, scores = generate(
        model,
        prompt,
        lengths=jnp.array([5, 3]),
        max_new_tokens=3,
        method="beam",
        beam_size=2,
        eos_id=0,
    )
    assert tokens.shape == (2, 2, 3) and scores.shape == (2, 2)
    assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)  # best first


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("beam", dict(num_beams=2, eos_id=0),
         "unknown option 'num_beams' for method='beam'; allowed: alpha, beam_size, eos_id, pad_id"),
        ("greedy", dict(temperature=0.5),
         "unknown option 'temperature' for method='greedy'; allowed: pad_id, stop_tokens"),
        ("beam", dict(beam_size=2), "method='beam' needs option(s) eos_id"),
    ],
)  # fmt: skip
def test_unknown_or_missing_option_is_one_line_naming_it(method, options, message):
    model = DecoderLM(CFG, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError) as err:
        generate(model, jnp.ones((1, 2), jnp.int32), max_new_tokens=2, method=method, **options)
    assert str(err.value) == message


def test_encoder_decoder_needs_bos_id():
    model = EncoderDecoder(CFG.replace(num_layers=1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="EncoderDecoder needs bos_id"):
        generate(model, jnp.ones((1, 3), jnp.int32), max_new_tokens=2)
    with pytest.raises(ValueError, match="bos_id is for an EncoderDecoder"):
        generate(
            DecoderLM(CFG, rngs=nnx.Rngs(0)),
            jnp.ones((1, 3), jnp.int32),
            max_new_tokens=2,
            bos_id=1,
        )
