"""MQAR sequences (multi-query associative recall; Zoology, Arora et al. 2023), drawn from a
NumPy generator: `research.data.builders.Mqar` writes them as a tfds dataset."""

import numpy as np


def mqar_example(rng: np.random.Generator, *, vocab_size: int, seq_len: int, num_kv_pairs: int):
    """One MQAR sequence (Zoology, Arora et al. 2023).

    Keys from [1, V/2), values from [V/2, V); the sequence starts k1 v1 ... kn vn, then each key
    is queried once at a random later position; the label at a query is its value; every other
    label is ignored (weight 0). Filler tokens are 0. Needs 4 * num_kv_pairs <= seq_len.
    Returns inputs [L], targets [L] (next-token labels), weights [L].
    """
    half = vocab_size // 2
    keys = rng.choice(np.arange(1, half), size=num_kv_pairs, replace=False)
    values = rng.choice(np.arange(half, vocab_size), size=num_kv_pairs, replace=True)
    seq = np.zeros(seq_len + 1, np.int32)
    seq[0 : 2 * num_kv_pairs : 2], seq[1 : 2 * num_kv_pairs : 2] = keys, values
    # Query slots are pairs (key, value) after the context; value positions get the labels.
    slots = rng.choice(np.arange(2 * num_kv_pairs, seq_len, 2) // 2, num_kv_pairs, replace=False)
    order = rng.permutation(num_kv_pairs)
    pos = 2 * np.sort(slots)
    seq[pos], seq[pos + 1] = keys[order], values[order]
    weights = np.zeros(seq_len, np.float32)
    weights[pos] = 1.0  # predicting seq[pos + 1] (the value) from the query key at pos
    return {"inputs": seq[:-1], "targets": seq[1:], "weights": weights}


ZOOLOGY_POWER_A = 0.01  # Zoology's power_a: query gap g (0-based) drawn with p ~ (g + 1)^(a - 1)


def mqar_zoology_example(
    rng: np.random.Generator, *, vocab_size: int, seq_len: int, num_kv_pairs: int
):
    """One MQAR sequence as Zoology's `multiquery_ar` draws it (Arora et al. 2023,
    zoology/data/associative_recall.py, power_a=0.01, random_non_queries=True).

    Keys from [1, V/2) and values from [V/2, V), both without replacement; the sequence starts
    k1 v1 ... kn vn; key i is queried once, at position 2n + 2 g_i, the gaps g_i distinct in
    [0, (L - 2n) / 2) with p(g) ~ (g + 1)^(a - 1): most queries come soon after the context. The
    value is not shown after its query; every other position holds a random token of [0, V).
    The label at a query is its value (weight 1); every other label is ignored (weight 0).
    Returns inputs [L], targets [L], weights [L].
    """
    half = vocab_size // 2
    keys = rng.choice(np.arange(1, half), size=num_kv_pairs, replace=False)
    values = rng.choice(np.arange(half, vocab_size), size=num_kv_pairs, replace=False)
    context = 2 * num_kv_pairs
    space = (seq_len - context) // 2
    p = ZOOLOGY_POWER_A * np.arange(1, space + 1) ** (ZOOLOGY_POWER_A - 1)
    gaps = rng.choice(space, size=num_kv_pairs, replace=False, p=p / p.sum())
    inputs = np.zeros(seq_len, np.int32)
    inputs[0:context:2], inputs[1:context:2] = keys, values
    pos = context + 2 * gaps
    inputs[pos] = keys
    filler = np.ones(seq_len, bool)
    filler[:context] = filler[pos] = False
    inputs[filler] = rng.integers(0, vocab_size, size=int(filler.sum()))
    targets = np.zeros(seq_len, np.int32)
    targets[pos] = values
    weights = np.zeros(seq_len, np.float32)
    weights[pos] = 1.0
    return {"inputs": inputs, "targets": targets, "weights": weights}


MQAR_EXAMPLES = {"seqlab": mqar_example, "zoology": mqar_zoology_example}
