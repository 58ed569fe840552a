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
