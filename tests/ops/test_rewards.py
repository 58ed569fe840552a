"""In-jit rewards against sacrebleu and rouge-score on random id sequences (space-joined)."""

import jax
import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from research.ops import rewards

PAD = 0


def _batch(rng, n, length, vocab):
    """Random hyp/ref pairs: varied lengths (including empty and 1-3 tokens), pads anywhere
    (also inside), and refs that share many n-grams with the hyp so matches are frequent."""
    hyps = np.zeros((n, length), np.int32)
    refs = np.zeros((n, length), np.int32)
    for i in range(n):
        lh, lr = rng.integers(0, length + 1, size=2)
        if i % 7 == 0:
            lh, lr = rng.integers(0, 4, size=2)
        h = rng.integers(1, vocab, lh)
        r = rng.integers(1, vocab, lr)
        if i % 2 and lr and lh:  # copy a stretch of the hyp into the ref
            k = min(lh, lr)
            s = rng.integers(0, k)
            r[s:k] = h[s:k]
        hyps[i, :lh], refs[i, :lr] = h, r
        if i % 5 == 1:  # pads in the middle are dropped like trailing ones
            hyps[i] = rng.permutation(hyps[i])
    return hyps, refs


def _text(row):
    return " ".join(str(t) for t in row if t != PAD)


@pytest.mark.parametrize("vocab", [4, 12, 50])
def test_sentence_bleu_equals_sacrebleu(vocab):
    hyps, refs = _batch(np.random.default_rng(vocab), 80, 14, vocab)
    ours = np.asarray(jax.jit(rewards.sentence_bleu)(hyps, refs))
    theirs = [
        sacrebleu.sentence_bleu(_text(h), [_text(r)], tokenize="none").score / 100
        for h, r in zip(hyps, refs, strict=True)
    ]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.ptp(theirs) > 0.3  # the cases span a real range of scores


@pytest.mark.parametrize("vocab", [4, 12, 50])
def test_rouge_equals_rouge_score(vocab):
    hyps, refs = _batch(np.random.default_rng(100 + vocab), 80, 14, vocab)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    ref_scores = [scorer.score(_text(r), _text(h)) for h, r in zip(hyps, refs, strict=True)]
    for name, ours in (
        ("rouge1", rewards.rouge_n(hyps, refs, 1)),
        ("rouge2", rewards.rouge_n(hyps, refs, 2)),
        ("rougeL", jax.jit(rewards.rouge_l)(hyps, refs)),
    ):
        theirs = [s[name].fmeasure for s in ref_scores]
        np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5, err_msg=name)


def test_bad_inputs():
    with pytest.raises(ValueError, match="must be \\[batch, length\\]"):
        rewards.rouge_l(np.zeros(3, np.int32), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="unknown reward 'cider'"):
        rewards.reward("cider")
