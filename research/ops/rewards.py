"""Sequence rewards inside jit, on token ids: sentence BLEU, ROUGE-N and ROUGE-L F1.

Each takes hyp_ids, ref_ids [B, L] int (any lengths; `pad_id` entries are dropped wherever they
are) and returns [B] float32. They equal the reference libraries on the space-joined ids:
  sentence_bleu = sacrebleu.sentence_bleu(hyp, [ref], tokenize="none").score / 100
    (exp smoothing, effective order: Chen & Cherry 2014 method 3, as sacrebleu's defaults);
  rouge_n, rouge_l = rouge_score.rouge_scorer.RougeScorer(["rougeN", "rougeL"]) F1.
They are for training signals (SCST, MRT); reported metrics come from those libraries.
"""

import jax.numpy as jnp
from jax import lax


def _compact(ids, pad_id):
    """Non-pad tokens moved to the front in order; returns (ids [B, L], lengths [B])."""
    ids = jnp.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"token ids must be [batch, length], got shape {ids.shape}")
    is_pad = ids == pad_id
    order = jnp.argsort(is_pad, axis=1, stable=True)
    return jnp.take_along_axis(ids, order, axis=1), jnp.sum(~is_pad, axis=1)


def _ngram_eq(a, la, b, lb, n):
    """[B, La, Lb] bool: the n-gram of a at i equals the n-gram of b at j (both inside)."""
    eq = a[:, :, None] == b[:, None, :]
    out = eq
    for t in range(1, n):
        shifted = jnp.pad(eq[:, t:, t:], ((0, 0), (0, t), (0, t)))
        out = out & shifted
    ia = jnp.arange(a.shape[1])[None, :, None] + n <= la[:, None, None]
    ib = jnp.arange(b.shape[1])[None, None, :] + n <= lb[:, None, None]
    return out & ia & ib


def _clipped_matches(h, lh, r, lr, n):
    """sum over n-grams g of min(count_hyp(g), count_ref(g)): the i-th occurrence of g in the
    hypothesis matches when i <= count_ref(g)."""
    hh = _ngram_eq(h, lh, h, lh, n)
    occurrence = jnp.sum(jnp.tril(hh), axis=2)  # 1-based index of this occurrence of h_i
    in_ref = jnp.sum(_ngram_eq(h, lh, r, lr, n), axis=2)
    valid = jnp.arange(h.shape[1])[None, :] + n <= lh[:, None]
    return jnp.sum(valid & (occurrence <= in_ref), axis=1)


def _ngram_counts(length, n):
    return jnp.maximum(length - n + 1, 0)


def sentence_bleu(hyp_ids, ref_ids, *, pad_id: int = 0, max_order: int = 4):
    """Sentence BLEU in [0, 1] (Papineni et al. 2002) with sacrebleu's sentence defaults.

    BLEU = BP * exp(mean_{n <= N'} log p_n), BP = min(1, exp(1 - |ref| / |hyp|)); p_n are clipped
    n-gram precisions; an order with no match gets 1 / (2^k * total_n) (k counts such orders);
    N' = the highest order the hypothesis has n-grams for; 0 when nothing matches at all.
    """
    if max_order < 1:
        raise ValueError(f"max_order={max_order}: must be >= 1")
    h, lh = _compact(hyp_ids, pad_id)
    r, lr = _compact(ref_ids, pad_id)
    lhf, lrf = lh.astype(jnp.float32), lr.astype(jnp.float32)
    bp = jnp.where(lh >= lr, 1.0, jnp.where(lh > 0, jnp.exp(1.0 - lrf / jnp.maximum(lhf, 1)), 0.0))
    log_sum = jnp.zeros(h.shape[0])
    doubling = jnp.ones(h.shape[0])
    order = jnp.zeros(h.shape[0])
    any_match = jnp.zeros(h.shape[0], bool)
    for n in range(1, max_order + 1):
        correct = _clipped_matches(h, lh, r, lr, n).astype(jnp.float32)
        total = _ngram_counts(lh, n).astype(jnp.float32)
        has = total > 0
        zero = has & (correct == 0)
        doubling = jnp.where(zero, doubling * 2, doubling)
        p = jnp.where(
            zero, 1.0 / (doubling * jnp.maximum(total, 1)), correct / jnp.maximum(total, 1)
        )
        log_sum += jnp.where(has, jnp.log(jnp.where(has, p, 1.0)), 0.0)
        order += has
        any_match |= correct > 0
    score = bp * jnp.exp(log_sum / jnp.maximum(order, 1))
    return jnp.where(any_match, score, 0.0).astype(jnp.float32)


def _f1(overlap, n_hyp, n_ref):
    p = overlap / jnp.maximum(n_hyp, 1)
    r = overlap / jnp.maximum(n_ref, 1)
    return jnp.where(p + r > 0, 2 * p * r / jnp.where(p + r > 0, p + r, 1.0), 0.0)


def rouge_n(hyp_ids, ref_ids, n: int, *, pad_id: int = 0):
    """ROUGE-N F1 (Lin 2004): clipped n-gram overlap; P = overlap / hyp n-grams, R = / ref."""
    if n < 1:
        raise ValueError(f"n={n}: ROUGE-N needs n >= 1")
    h, lh = _compact(hyp_ids, pad_id)
    r, lr = _compact(ref_ids, pad_id)
    overlap = _clipped_matches(h, lh, r, lr, n).astype(jnp.float32)
    return _f1(overlap, _ngram_counts(lh, n), _ngram_counts(lr, n)).astype(jnp.float32)


def lcs_length(a, la, b, lb):
    """Longest common subsequence lengths [B] of compacted a [B, La], b [B, Lb].

    Row i of the DP table is the running max of max(D[i-1][j], D[i-1][j-1] + [a_i == b_j]),
    which equals the textbook recursion, so each row is one `cummax` (O(La) sequential steps).
    """
    match = (a[:, :, None] == b[:, None, :]) & (jnp.arange(b.shape[1]) < lb[:, None])[:, None]

    def row(prev, xs):
        m, live = xs  # [B, Lb], [B]
        diag = jnp.pad(prev, ((0, 0), (1, 0)))[:, :-1] + m
        new = lax.cummax(jnp.maximum(prev, diag), axis=1)
        new = jnp.where(live[:, None], new, prev)  # padding rows change nothing
        return new, None

    live = jnp.arange(a.shape[1])[None, :] < la[:, None]
    init = jnp.zeros(b.shape, jnp.int32)
    last, _ = lax.scan(row, init, (jnp.swapaxes(match, 0, 1).astype(jnp.int32), live.T))
    return last[:, -1]


def rouge_l(hyp_ids, ref_ids, *, pad_id: int = 0):
    """ROUGE-L F1: P = LCS / |hyp|, R = LCS / |ref| (rouge-score's sentence-level rougeL)."""
    h, lh = _compact(hyp_ids, pad_id)
    r, lr = _compact(ref_ids, pad_id)
    lcs = lcs_length(h, lh, r, lr).astype(jnp.float32)
    return _f1(lcs, lh, lr).astype(jnp.float32)


REWARDS = {
    "bleu": sentence_bleu,
    "rouge1": lambda h, r, pad_id=0: rouge_n(h, r, 1, pad_id=pad_id),
    "rouge2": lambda h, r, pad_id=0: rouge_n(h, r, 2, pad_id=pad_id),
    "rougeL": rouge_l,
}


def reward(name: str):
    """The reward function of a name in REWARDS (for configs)."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; allowed: {', '.join(REWARDS)}")
    return REWARDS[name]
