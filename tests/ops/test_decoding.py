import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.ops import decoding

A, B, C, D, EOS = 1, 2, 3, 4, 0


def _table_step(table):
    """step_fn whose next-token log-probs depend only on the last token: table [V, V]."""
    table = jnp.log(jnp.asarray(table, jnp.float32) + 1e-30)

    def step(token, cache):
        return table[token], cache + 1

    return step


def _exposure_bias_example():
    """docs/research_notes.md section 1: p(a)=.6, p(c)=.4; p(b|a)=.55, p(d|a)=.45, p(b|c)=.1,
    p(d|c)=.9."""
    v = 5
    first = np.zeros(v)
    first[[A, C]] = [0.6, 0.4]
    table = np.full((v, v), 0.0)
    table[A, [B, D]] = [0.55, 0.45]
    table[C, [B, D]] = [0.1, 0.9]
    table[B, EOS] = table[D, EOS] = table[EOS, EOS] = 1.0
    return jnp.log(jnp.asarray(first, jnp.float32) + 1e-30)[None], _table_step(table)


@pytest.mark.parametrize(
    "beam, want, prob", [(1, (A, B), 0.33), (2, (C, D), 0.36), (3, (C, D), 0.36)]
)
def test_beam_search_reproduces_the_exposure_bias_example(beam, want, prob):
    logits, step = _exposure_bias_example()
    seqs, scores = jax.jit(
        lambda lg, c: decoding.beam_search(
            step, lg, c, beam_size=beam, max_new_tokens=2, eos_id=EOS
        )
    )(logits, jnp.zeros((1,)))
    assert tuple(np.asarray(seqs[0, 0])) == want
    np.testing.assert_allclose(np.exp(scores[0, 0]), prob, rtol=1e-5)
    assert np.all(np.diff(np.asarray(scores[0])) <= 0)  # best first


def test_beam_search_eos_freezes_and_length_penalty():
    logits, step = _exposure_bias_example()
    seqs, scores = decoding.beam_search(
        step, logits, jnp.zeros((1,)), beam_size=2, max_new_tokens=4, eos_id=EOS, alpha=0.6
    )
    best = np.asarray(seqs[0, 0])
    assert tuple(best[:3]) == (C, D, EOS) and best[3] == 0  # pad after EOS
    want = np.log(0.36) / ((5 + 3) / 6) ** 0.6
    np.testing.assert_allclose(scores[0, 0], want, rtol=1e-5)


def _markov(first, table):
    """A step function whose next-token distribution depends only on the last token."""
    lt = jnp.log(jnp.asarray(table, jnp.float32) + 1e-30)
    return jnp.log(jnp.asarray(first, jnp.float32))[None], lambda tok, c: (lt[tok], c)


def _exhaustive_best(first, table, eos, steps, alpha):
    """Brute force over every hypothesis: ended by EOS within `steps` tokens, or unfinished at
    `steps` tokens; score log p / ((5 + n) / 6)^alpha. Returns (score, tokens)."""
    best = (-math.inf, ())
    for n in range(1, steps + 1):
        for ys in itertools.product(range(len(first)), repeat=n):
            if eos in ys[:-1] or (ys[-1] != eos and n < steps):
                continue
            logp = math.log(first[ys[0]]) + sum(
                math.log(table[a][c] + 1e-30) for a, c in zip(ys, ys[1:], strict=False)
            )
            best = max(best, (logp / ((5 + n) / 6) ** alpha, ys))
    return best


def test_beam_search_keeps_a_finished_hypothesis_that_alive_beams_outnumber():
    """[EOS] (p 0.09) finishes at step 0; A's two children (p 0.45 each) then filled both slots
    and pushed it out, so beam search returned A B EOS (p 0.075) even with alpha = 0. Finished
    hypotheses are kept apart now; the answer is brute force's."""
    eos, pad = 0, 5
    first = [0.09, 0.9, 0.0025, 0.0025, 0.0025, 0.0025]
    table = np.full((6, 6), 1 / 6)
    table[1] = [0, 0, 0.5, 0.5, 0, 0]  # after A: B or C
    table[eos] = [1, 0, 0, 0, 0, 0]
    logits, step = _markov(first, table)
    seqs, scores = decoding.beam_search(
        step, logits, jnp.zeros((1,)), beam_size=2, max_new_tokens=3, eos_id=eos, pad_id=pad
    )
    want_score, want = _exhaustive_best(first, table, eos, 3, 0.0)
    assert want == (eos,)
    np.testing.assert_array_equal(seqs[0, 0], [eos, pad, pad])
    np.testing.assert_allclose(scores[0, 0], want_score, rtol=1e-5)


def test_beam_search_with_a_length_penalty_finds_brute_forces_best():
    """alpha = 1: a long unfinished B B B B B B (-0.759) beats [EOS] (-0.916) once normalised;
    pruning by raw log p with finished beams holding slots returned [EOS]."""
    first = [0.4, 0.35, 0.25]
    table = [[1, 0, 0], [0.5, 0.5, 0], [0.001, 0, 0.999]]  # EOS, A, B
    logits, step = _markov(first, table)
    seqs, scores = decoding.beam_search(
        step, logits, jnp.zeros((1,)), beam_size=2, max_new_tokens=6, eos_id=0, alpha=1.0
    )
    want_score, want = _exhaustive_best(first, table, 0, 6, 1.0)
    assert want == (2,) * 6
    np.testing.assert_array_equal(seqs[0, 0], want)
    np.testing.assert_allclose(scores[0, 0], want_score, rtol=1e-5)
    assert np.all(np.diff(np.asarray(scores[0])) <= 0)
    for name, bad in (("eos_id", 3), ("pad_id", -1)):
        kw = {"eos_id": 0, "pad_id": 0, name: bad}
        with pytest.raises(ValueError, match=f"{name}={bad} is not a token id of the 3-token"):
            decoding.beam_search(step, logits, 0, beam_size=2, max_new_tokens=2, **kw)


def test_beam_search_of_one_beam_is_greedy_decoding():
    """beam_size 1 equals greedy decoding stopped at EOS, on random Markov chains where EOS is
    often the second choice (an EOS candidate outside the K best does not finish, as in
    Hugging Face's beam search)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        first, table = rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(5), size=5)
        logits, step = _markov(first, table)
        beam, _ = decoding.beam_search(
            step, logits, jnp.zeros((1,)), beam_size=1, max_new_tokens=6, eos_id=0, pad_id=4
        )
        greedy = decoding.greedy(
            step, logits, jnp.zeros((1,)), max_new_tokens=6, stop_tokens=(0,), pad_id=4
        )
        np.testing.assert_array_equal(beam[0, 0], greedy[0])


def test_greedy_stops_and_pads():
    logits, step = _exposure_bias_example()
    out = decoding.greedy(
        step, logits, jnp.zeros((1,)), max_new_tokens=5, stop_tokens=(EOS,), pad_id=9
    )
    np.testing.assert_array_equal(out[0], [A, B, EOS, 9, 9])


def test_filter_logits_top_k_top_p_against_numpy():
    logits = jnp.log(jnp.array([[0.05, 0.4, 0.3, 0.15, 0.1]]))
    kept = np.isfinite(np.asarray(decoding.filter_logits(logits, top_k=2)))
    np.testing.assert_array_equal(kept[0], [0, 1, 1, 0, 0])
    # Sorted 0.4, 0.3, 0.15, ...: cumulative 0.4, 0.7, 0.85 -> p=0.7 keeps two, p=0.71 three.
    for p, n in ((0.4, 1), (0.7, 2), (0.71, 3), (1.0, 5)):
        assert np.isfinite(np.asarray(decoding.filter_logits(logits, top_p=p))).sum() == n
    np.testing.assert_allclose(decoding.filter_logits(logits, temperature=2.0), logits / 2)


def test_filter_logits_against_hugging_faces_warpers():
    """Temperature, then top-k, then top-p, as transformers' TemperatureLogitsWarper,
    TopKLogitsWarper and TopPLogitsWarper apply them (generate()'s order), on random logits
    without ties: the same tokens kept, the same scaled values."""
    import torch
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(0)
    for temperature, top_k, top_p in [(0.7, 0, 0.9), (1.3, 5, 1.0), (0.5, 8, 0.6), (1.0, 3, 0.3)]:
        logits = rng.standard_normal((16, 40)).astype(np.float32) * 3
        ours = np.asarray(
            decoding.filter_logits(
                jnp.asarray(logits), temperature=temperature, top_k=top_k, top_p=top_p
            )
        )
        ids, hf = torch.zeros((16, 1), dtype=torch.long), torch.from_numpy(logits)
        hf = TemperatureLogitsWarper(temperature)(ids, hf)
        if top_k:
            hf = TopKLogitsWarper(top_k)(ids, hf)
        if top_p < 1:
            hf = TopPLogitsWarper(top_p)(ids, hf)
        hf = hf.numpy()
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(hf))
        np.testing.assert_allclose(ours[np.isfinite(ours)], hf[np.isfinite(hf)], rtol=1e-6)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            decoding.filter_logits(jnp.zeros((1, 3)), temperature=bad)


def test_every_step_draws_with_a_key_of_its_own():
    """Uniform logits over 1,000 tokens, 64 rows, 3 steps: a step reusing the previous step's
    key would repeat its tokens; independent draws match about 1 in 1,000."""
    logits = jnp.zeros((64, 1000))
    out = np.asarray(
        decoding.sample(
            lambda tok, c: (jnp.zeros((64, 1000)), c),
            logits,
            jnp.zeros((64,)),
            jax.random.PRNGKey(0),
            max_new_tokens=3,
        )
    )
    assert np.mean(out[:, 0] == out[:, 1]) < 0.05 and np.mean(out[:, 1] == out[:, 2]) < 0.05
    assert len(set(out[:, 0].tolist())) > 50  # rows draw apart too


def test_sampling_frequencies_follow_the_filtered_distribution():
    probs = np.array([0.05, 0.4, 0.3, 0.15, 0.1])
    logits = jnp.log(jnp.asarray(probs, jnp.float32))[None].repeat(4000, 0)

    def step(token, cache):
        return logits, cache

    out = decoding.sample(
        step, logits, jnp.zeros((4000,)), jax.random.PRNGKey(0), max_new_tokens=1, top_p=0.71
    )
    freq = np.bincount(np.asarray(out[:, 0]), minlength=5) / 4000
    want = np.array([0, 0.4, 0.3, 0.15, 0]) / 0.85
    assert np.max(np.abs(freq - want)) < 0.03


def test_decoding_bad_arguments():
    logits, step = _exposure_bias_example()
    with pytest.raises(ValueError, match="top_p must be in"):
        decoding.sample(step, logits, 0, jax.random.PRNGKey(0), max_new_tokens=2, top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        decoding.sample(step, logits, 0, jax.random.PRNGKey(0), max_new_tokens=2, temperature=0)
    with pytest.raises(ValueError, match="beam_size 9 exceeds the vocabulary size 5"):
        decoding.beam_search(step, logits, jnp.zeros((1,)), beam_size=9, max_new_tokens=2, eos_id=0)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        decoding.greedy(step, logits, 0, max_new_tokens=0)
