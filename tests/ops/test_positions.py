import numpy as np
import pytest

from research.ops import positions


def test_sinusoidal_matches_the_paper_formula():
    table = np.asarray(positions.sinusoidal_positions(7, 6))
    p, i = np.arange(7)[:, None], np.arange(3)[None, :]
    np.testing.assert_allclose(table[:, 0::2], np.sin(p / 10000 ** (2 * i / 6)), atol=1e-6)
    np.testing.assert_allclose(table[:, 1::2], np.cos(p / 10000 ** (2 * i / 6)), atol=1e-6)


def test_rotary_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 1, 1, 1, 8)).astype(np.float32)

    def score(m, n):
        qm = positions.apply_rotary(q, np.array([m]))
        kn = positions.apply_rotary(k, np.array([n]))
        return float(np.sum(np.asarray(qm) * np.asarray(kn)))

    assert abs(score(3, 1) - score(12, 10)) < 1e-5
    assert abs(score(3, 1) - score(3, 2)) > 1e-3
    # Position 0 is the identity; rotation keeps norms.
    np.testing.assert_allclose(positions.apply_rotary(q, np.array([0])), q, atol=1e-7)
    r = np.asarray(positions.apply_rotary(q, np.array([5])))
    np.testing.assert_allclose(np.linalg.norm(r), np.linalg.norm(q), rtol=1e-6)


def test_odd_dims_are_rejected():
    with pytest.raises(ValueError, match="even dim, got 5"):
        positions.sinusoidal_positions(4, 5)
    with pytest.raises(ValueError, match="even head_dim, got 3"):
        positions.apply_rotary(np.zeros((1, 2, 1, 3)), np.arange(2))


def test_rotary_equals_the_rotate_half_formula_in_numpy():
    """Pair (x_i, x_{i + D/2}) rotated by p * base^(-2i / D), written out in float64 NumPy
    (GPT-NeoX's rotate-half), for positions per row and a base other than the default."""
    rng = np.random.default_rng(0)
    b, length, h, d, base = 2, 7, 3, 8, 500.0
    x = rng.standard_normal((b, length, h, d)).astype(np.float32)
    pos = rng.integers(0, 1000, (b, length))
    theta = pos[..., None] * base ** (-2.0 * np.arange(d // 2) / d)  # [B, L, D/2]
    cos, sin = np.cos(theta)[:, :, None], np.sin(theta)[:, :, None]
    x1, x2 = x[..., : d // 2].astype(np.float64), x[..., d // 2 :].astype(np.float64)
    want = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    got = positions.apply_rotary(x, pos, base=base)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
