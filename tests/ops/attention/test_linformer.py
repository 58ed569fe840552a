"""Linformer attention against softmax attention over the projected keys."""

import numpy as np

from research.ops import attention as att
from tests.ops.attention.cases import key_mask, qkv
from tests.ops.references import np_softmax_attention


def test_linformer_equals_softmax_over_projected_keys():
    q, k, v = qkv(13, 2, 10, 16, 2, 4)
    rng = np.random.default_rng(0)
    e, f = (rng.standard_normal((5, 16)).astype(np.float32) / 4 for _ in range(2))
    mask = key_mask(13, 2, 16)
    km, vm = (np.where(mask[:, :, None, None], x, 0.0) for x in (k, v))
    want = np_softmax_attention(
        q, np.einsum("mn,bnhd->bmhd", e, km), np.einsum("mn,bnhd->bmhd", f, vm)
    )
    np.testing.assert_allclose(att.linformer_attention(q, k, v, e, f, mask=mask), want, atol=1e-5)
