"""How many dimensions a word embedding needs (Su 2020; RESEARCH.md section 7)."""

import math

# 2 / 0.24 from the note; exact: 2 / (1/2 ln((sqrt5 + 1)/2)) = 4 / ln(golden ratio) = 8.3123...
APPROX_CONSTANT = 8.33
EXACT_CONSTANT = 4.0 / math.log((math.sqrt(5.0) + 1.0) / 2.0)


def min_embedding_dim(vocab_size: int, exact: bool = False) -> int:
    """Smallest n with n > c ln N: ceil(8.33 ln N), or ceil(8.3123 ln N) with exact=True.

    From the entropy of a skip-gram-like model with vectors uniform on the sphere of radius
    sqrt(n): H ~ 2 ln N + h_n with h_n / n -> -1/2 ln((sqrt5+1)/2); capacity needs H < 0.
    N = 100k gives 96.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
    c = EXACT_CONSTANT if exact else APPROX_CONSTANT
    return math.ceil(c * math.log(vocab_size))
