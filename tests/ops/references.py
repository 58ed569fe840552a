"""Independent float64 NumPy references for the attention tests (no JAX inside)."""

import numpy as np


def np_elu1(x):
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def np_relu(x):
    return np.maximum(x, 0.0)


def np_taylor(x):
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.concatenate([np.ones_like(n), np.divide(x, n, out=np.zeros_like(x), where=n > 0)], -1)


NP_FEATURE_MAPS = {"elu": np_elu1, "relu": np_relu, "taylor": np_taylor}


def np_linear_attention(q, k, v, phi, *, causal, key_mask=None):
    """Quadratic kernel form: out_i = sum_j s_ij v_j / sum_j s_ij, s_ij = phi(q_i).phi(k_j)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    fq, fk = phi(q), phi(k)
    sim = np.einsum("bihf,bjhf->bhij", fq, fk)
    keep = np.ones(sim.shape, bool)
    if causal:
        keep &= np.tril(np.ones(sim.shape[-2:], bool))
    if key_mask is not None:
        keep &= np.asarray(key_mask)[:, None, None, :]
    sim = np.where(keep, sim, 0.0)
    num = np.einsum("bhij,bjhv->bihv", sim, v)
    den = np.swapaxes(sim.sum(-1), 1, 2)[..., None]
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def np_softmax_attention(q, k, v, *, causal=False, mask=None, bias=None, scale=None):
    """Dense softmax attention; `mask` broadcastable to [B, H, Lq, Lk]; empty rows give 0."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if bias is not None:
        s = s + np.asarray(bias, np.float64)
    keep = np.ones(s.shape, bool)
    if causal:
        keep &= np.tril(np.ones(s.shape[-2:], bool))
    if mask is not None:
        keep &= np.asarray(mask)
    s = np.where(keep, s, -np.inf)
    m = np.max(s, -1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m)
    den = p.sum(-1, keepdims=True)
    p = np.divide(p, den, out=np.zeros_like(p), where=den > 0)
    return np.einsum("bhqk,bkhd->bqhd", p, v)
