import numpy as np
import pytest

from research.ops import masks


def test_padding_and_causal():
    np.testing.assert_array_equal(masks.padding_mask(np.array([[5, 3, 0, 0]])), [[1, 1, 0, 0]])
    c = np.asarray(masks.causal_mask(3, 4))
    assert c.shape == (1, 1, 3, 4)
    np.testing.assert_array_equal(c[0, 0], [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]])


def test_unilm_mask_against_explicit_loops():
    seg = np.array([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])
    valid = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], bool)
    got = np.asarray(masks.unilm_mask(seg, valid))[:, 0]
    for b in range(2):
        for i in range(7):
            for j in range(7):
                want = (seg[b, j] == 0 or (seg[b, i] == 1 and j <= i)) and valid[b, j]
                assert got[b, i, j] == want, (b, i, j)
    # Same as bert4keras' construction for contiguous segments: cumsum(seg)_j <= cumsum(seg)_i.
    c = np.cumsum(seg, 1)
    np.testing.assert_array_equal(
        np.asarray(masks.unilm_mask(seg))[:, 0], c[:, None, :] <= c[:, :, None]
    )


def test_packed_mask_is_block_diagonal():
    ids = np.array([[1, 1, 2, 2, 2, 0]])
    m = np.asarray(masks.packed_mask(ids))[0, 0]
    want = (ids[0][:, None] == ids[0][None, :]) & (ids[0][None, :] != 0)
    np.testing.assert_array_equal(m, want)
    mc = np.asarray(masks.packed_mask(ids, causal=True))[0, 0]
    np.testing.assert_array_equal(mc, want & np.tril(np.ones((6, 6), bool)))


def test_bad_ids():
    with pytest.raises(ValueError, match=r"segment_ids must be an integer array \[batch, length\]"):
        masks.unilm_mask(np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="q_length must be a positive int, got 0"):
        masks.causal_mask(0)
