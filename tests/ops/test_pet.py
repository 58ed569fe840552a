"""PET label scores and loss against a float64 NumPy loop and a Hugging Face BertForMaskedLM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax

from research import ops


def np_label_scores(logits, positions, verbalizer):
    """score[b, y] = sum_s log_softmax(logits[b, positions[b, s]])[verbalizer[y, s]], in loops."""
    lp = log_softmax(np.asarray(logits, np.float64), axis=-1)
    (b, s), y = positions.shape, verbalizer.shape[0]
    out = np.zeros((b, y))
    for i in range(b):
        for label in range(y):
            for slot in range(s):
                out[i, label] += lp[i, positions[i, slot], verbalizer[label, slot]]
    return out


def _case(seed=0, b=3, length=9, vocab=17, slots=2, labels=4):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((b, length, vocab))).astype(np.float32)
    positions = np.stack([rng.choice(length, slots, replace=False) for _ in range(b)])
    verbalizer = rng.integers(0, vocab, (labels, slots))
    return logits, positions, verbalizer


@pytest.mark.parametrize("slots", [1, 2])
def test_label_scores_match_numpy(slots):
    logits, positions, verbalizer = _case(slots=slots)
    ref = np_label_scores(logits, positions, verbalizer)
    scores = jax.jit(ops.label_scores)(logits, positions, verbalizer)
    assert scores.shape == (3, 4) and scores.dtype == jnp.float32
    np.testing.assert_allclose(scores, ref, rtol=1e-6, atol=1e-6)


def test_bf16_logits_are_scored_in_fp32():
    logits, positions, verbalizer = _case(1)
    big = jnp.asarray(logits * 50, jnp.bfloat16)  # logits in the hundreds
    scores = ops.label_scores(big, positions, verbalizer)
    assert scores.dtype == jnp.float32
    ref = np_label_scores(np.asarray(big, np.float64), positions, verbalizer)
    np.testing.assert_allclose(scores, ref, rtol=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_pet_loss_matches_numpy(weighted):
    logits, positions, verbalizer = _case(2)
    labels = np.array([3, 0, 2])
    weights = np.array([0.5, 0.0, 2.0], np.float32) if weighted else None
    w = np.ones(3) if weights is None else weights
    ref = np_label_scores(logits, positions, verbalizer)
    loss, weight = ops.pet_loss(logits, positions, verbalizer, labels, weights)
    np.testing.assert_allclose(loss, -(w * ref[np.arange(3), labels]).sum(), rtol=1e-6)
    np.testing.assert_allclose(weight, w.sum())


def test_cross_entropy_over_label_scores_is_the_papers_label_softmax():
    """PET's L_CE normalises the raw verbalizer logits over labels; the slot log-normalisers
    cancel, so ops.cross_entropy(label_scores, labels) is that loss."""
    logits, positions, verbalizer = _case(3)
    labels = np.array([1, 3, 0])
    raw = np.zeros((3, 4))
    for s in range(2):  # sum over slots of the unnormalised logit of each label's token
        raw += logits.astype(np.float64)[
            np.arange(3)[:, None], positions[:, s, None], verbalizer[None, :, s]
        ]
    ref = -log_softmax(raw, axis=-1)[np.arange(3), labels].sum()
    loss, _ = ops.cross_entropy(ops.label_scores(logits, positions, verbalizer), labels)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)


def test_label_scores_match_transformers(tmp_path):
    """The acceptance test: a random BertForMaskedLM imported with load_bert scores labels as
    torch does on the Hugging Face logits, rows with padding included."""
    torch = pytest.importorskip("torch", reason="parity tests need the test extra (torch==2.13.0)")
    pytest.importorskip("transformers", reason="parity tests need transformers")
    from research.models.convert import load_bert
    from tests.models.test_convert import _random_bert

    hf = _random_bert(tmp_path)  # eval mode: dropout off
    vocab, b, length = hf.config.vocab_size, 3, 12
    rng = np.random.default_rng(0)
    mask = np.arange(length)[None] < np.array([[length], [9], [6]])  # rows 1 and 2 are padded
    ids = np.where(mask, rng.integers(5, vocab, (b, length)), 0)
    positions = np.array([[1, 2], [3, 7], [4, 5]])  # two slots, inside each row's tokens
    ids[np.arange(b)[:, None], positions] = 4  # a [MASK] id at the slots
    verbalizer = np.array([[10, 11], [12, 13], [20, 30], [97, 5]])
    with torch.no_grad():
        hf_logits = hf(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64))
        ).logits
        lp = torch.log_softmax(hf_logits, dim=-1)
        # lp[b, positions[b, s], verbalizer[y, s]] -> [B, S, Y]
        at_slots = lp[
            torch.arange(b)[:, None, None],
            torch.tensor(positions)[:, :, None],
            torch.tensor(verbalizer.T)[None],
        ]
        ref = at_slots.sum(1).numpy()
    out = load_bert(tmp_path)(jnp.asarray(ids), mask=jnp.asarray(mask))
    scores = ops.label_scores(out.logits, positions, verbalizer)
    np.testing.assert_allclose(scores, ref, atol=1e-5)


def _shapes(logits=(2, 5, 7), positions=(2, 1), verbalizer=(3, 1), pos_dtype=np.int32):
    return np.zeros(logits, np.float32), np.zeros(positions, pos_dtype), np.zeros(verbalizer, int)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (
            _shapes(logits=(5, 7)),
            r"mlm_logits must be \[batch, length, vocab\], got shape \(5, 7\)",
        ),
        (_shapes(positions=(2,)), r"mask_positions must be \[batch, slots\], got shape \(2,\)"),
        (_shapes(verbalizer=(3,)), r"verbalizer_ids must be \[num_labels, slots\], got shape"),
        (_shapes(positions=(3, 1)), "mask_positions batch 3 must equal mlm_logits batch 2"),
        (
            _shapes(verbalizer=(3, 2)),
            "verbalizer_ids has 2 tokens per label but mask_positions has 1 slots",
        ),
        (_shapes(pos_dtype=np.float32), "mask_positions must have an integer dtype"),
    ],
)
def test_bad_shapes_raise_one_line(args, match):
    for fn in (ops.label_scores, lambda *a: ops.pet_loss(*a, np.zeros(2, int))):
        with pytest.raises(ValueError, match=match) as err:
            fn(*args)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("labels", "weights", "match"),
    [
        (np.zeros(3, int), None, r"labels must be \[batch=2\], got shape \(3,\)"),
        (np.zeros(2, np.float32), None, "labels must have an integer dtype"),
        (np.zeros(2, int), np.ones(3), r"weights must be \[batch=2\], got shape \(3,\)"),
    ],
)
def test_bad_labels_and_weights(labels, weights, match):
    with pytest.raises(ValueError, match=match):
        ops.pet_loss(*_shapes(), labels, weights)
