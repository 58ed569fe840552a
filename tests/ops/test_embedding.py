import math

import pytest

from research.ops.embedding import (
    EXACT_CONSTANT,
    min_embedding_dim,
    sphere_entropy,
    sphere_entropy_monte_carlo,
    threshold_constant,
)


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


def test_the_constant_rederived_numerically():
    """h_n / n -> -1/2 ln((sqrt5 + 1)/2) = -0.2406 with a 1/n finite-size term (about -0.074/n
    at these n), and the threshold constant 2 / (-h_n/n) -> 8.31 (the note rounds it to 8.33)."""
    limit = -0.5 * math.log((math.sqrt(5) + 1) / 2)
    per_dim = {n: sphere_entropy(n) / n for n in (32, 64, 128, 256, 512)}
    for n, v in per_dim.items():
        assert v < limit and abs(v - limit) < 0.08 / n, (n, v)  # approaches from below as 1/n
    assert abs(per_dim[512] - (-0.2406)) < 2e-4
    assert abs(threshold_constant(512) - 8.31) < 0.01
    assert abs(threshold_constant(512) - EXACT_CONSTANT) < 0.006
    # Richardson: 2 h_{2n}/(2n) - h_n/n cancels the 1/n term and lands on the limit.
    assert abs(2 * per_dim[512] - per_dim[256] - limit) < 2e-6


def test_monte_carlo_agrees_where_it_can():
    for n in (2, 4, 8):
        assert abs(sphere_entropy_monte_carlo(n, 400_000) - sphere_entropy(n)) < 4e-3 * n
    with pytest.raises(ValueError, match="n=1: must be an int >= 2"):
        sphere_entropy(1)
