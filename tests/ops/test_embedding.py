import math

import pytest

from research.ops.embedding import EXACT_CONSTANT, min_embedding_dim


def test_published_values():
    assert min_embedding_dim(100_000) == 96  # the note: N = 100k gives 96
    assert abs(min_embedding_dim(5_000_000) - 128) <= 1  # the note: "about 128"
    assert abs(EXACT_CONSTANT - 2 / 0.2406) < 1e-3  # 1/2 ln((sqrt5 + 1)/2) = 0.2406


@pytest.mark.parametrize("n", [2, 30_000, 50_257, 250_000])
def test_formula(n):
    assert min_embedding_dim(n) == math.ceil(8.33 * math.log(n))
    assert min_embedding_dim(n, exact=True) == math.ceil(8.3123 * math.log(n))


@pytest.mark.parametrize("bad", [1, 0, -5, 2.5, True, "100"])
def test_bad_vocab(bad):
    with pytest.raises(ValueError, match="vocab_size must be an int >= 2"):
        min_embedding_dim(bad)
