"""Masked-language-model corruption of one example, in NumPy (the data side of BERT pretraining).

BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding") predicts 15% of the tokens; of those, 80% are replaced by [MASK], 10% by a random
token and 10% left unchanged. Whole-word masking (Cui et al. 2019, "Pre-Training with Whole Word
Masking for Chinese BERT") chooses words rather than tokens, and predicts every token (here every
character) of a chosen word.
"""

import numpy as np

from research.data import DataError


def mlm_mask(
    ids,
    word_index,
    rng: np.random.Generator,
    *,
    mask_id: int,
    vocab_size: int,
    random_low: int,
    rate: float = 0.15,
    mask_prob: float = 0.8,
    random_prob: float = 0.1,
    maskable=None,
):
    """(inputs, targets, weights) of one sequence, masked at whole words.

    ids: [L] int token ids. word_index: [L] int, tokens of one word share it; -1 marks tokens
    never masked ([CLS], [SEP], padding); token-level masking is word_index = arange(L).
    maskable: optional [L] bool, False also excludes a token. Let n be the number of maskable
    tokens; the budget is k = max(1, round_half_up(rate * n)) (BERT's create_pretraining_data).
    Words are taken in a random order and a word is chosen if all its maskable tokens still fit
    in the budget, else skipped (Google's whole-word rule), until k tokens are covered or the
    words run out: so exactly k tokens unless only words too long for the rest remain.
    Each chosen token independently becomes mask_id with probability mask_prob, a uniform id
    from [random_low, vocab_size) with probability random_prob (pass the first non-special id,
    `BertVocab.first_regular_id`), and stays itself otherwise.

    Returns inputs [L] int32 (the corrupted ids), targets [L] int32 (the original ids) and
    weights [L] float32 (1.0 at the chosen tokens, else 0).
    """
    ids = np.array(ids, np.int32)  # a copy: targets never alias the caller's array
    word_index = np.asarray(word_index)
    if ids.ndim != 1 or word_index.shape != ids.shape:
        raise DataError(f"mlm_mask: ids {ids.shape} and word_index {word_index.shape} must be [L]")
    if not (0 < rate <= 1 and mask_prob >= 0 and random_prob >= 0 and mask_prob + random_prob <= 1):
        raise DataError(
            f"mlm_mask: need 0 < rate <= 1 and mask_prob, random_prob >= 0 summing to <= 1; "
            f"got rate={rate}, mask_prob={mask_prob}, random_prob={random_prob}"
        )
    if not 0 <= random_low < vocab_size:
        raise DataError(f"mlm_mask: random_low={random_low} not in [0, vocab_size={vocab_size})")
    ok = word_index >= 0
    if maskable is not None:
        ok &= np.asarray(maskable, bool)
    positions = np.flatnonzero(ok)
    weights = np.zeros(len(ids), np.float32)
    inputs = ids.copy()
    if len(positions) == 0:
        return inputs, ids, weights
    budget = max(1, int(np.floor(rate * len(positions) + 0.5)))
    words, of_position = np.unique(word_index[positions], return_inverse=True)
    sizes = np.bincount(of_position, minlength=len(words)).tolist()
    chosen = np.zeros(len(words), bool)
    covered = 0
    for w in rng.permutation(len(words)).tolist():
        if covered + sizes[w] <= budget:
            chosen[w] = True
            covered += sizes[w]
            if covered == budget:
                break
    targets_at = positions[chosen[of_position]]
    weights[targets_at] = 1.0
    u = rng.random(len(targets_at))
    masked = targets_at[u < mask_prob]
    randomised = targets_at[(u >= mask_prob) & (u < mask_prob + random_prob)]
    inputs[masked] = mask_id
    inputs[randomised] = rng.integers(random_low, vocab_size, len(randomised))
    return inputs, ids, weights
