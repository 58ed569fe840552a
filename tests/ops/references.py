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


def np_favor(w):
    """FAVOR+ positive random features for projection w [m, d] (Choromanski et al. 2021, eq. in
    section 2.3): phi(x) = exp(w x' - |x'|^2 / 2) / sqrt(m), x' = x d^-1/4."""
    w = np.asarray(w, np.float64)
    m, d = w.shape

    def phi(x):
        x = np.asarray(x, np.float64) * d**-0.25
        return np.exp(x @ w.T - 0.5 * np.sum(x * x, -1, keepdims=True)) / np.sqrt(m)

    return phi


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


def np_delta_rule(
    q, k, v, beta, *, log_gate=None, scale=None, initial_state=None, segment_ids=None
):
    """(Gated) delta rule token by token: S_t = a_t (I - beta_t k_t k_t^T) S_{t-1}
    + beta_t k_t v_t^T, o_t = S_t^T (scale q_t), a_t = exp(log_gate_t); the state restarts from
    zero where segment_ids changes. q [B, L, H, Dk], k [B, L, Hkv, Dk], v [B, L, Hkv, Dv]
    (k/v heads repeated), beta, log_gate [B, L, H]. Returns (o [B, L, H, Dv], S [B, H, Dk, Dv])."""
    q, k, v, beta = (np.asarray(x, np.float64) for x in (q, k, v, beta))
    b, length, h, dk = q.shape
    k, v = np.repeat(k, h // k.shape[2], axis=2), np.repeat(v, h // v.shape[2], axis=2)
    scale = dk**-0.5 if scale is None else scale
    g = np.zeros((b, length, h)) if log_gate is None else np.asarray(log_gate, np.float64)
    s = np.zeros((b, h, dk, v.shape[-1]))
    if initial_state is not None:
        s = np.array(initial_state, np.float64)
    out = np.zeros((b, length, h, v.shape[-1]))
    for i in range(b):
        for t in range(length):
            if segment_ids is not None and t > 0 and segment_ids[i][t] != segment_ids[i][t - 1]:
                s[i] = 0.0
            for j in range(h):
                kt, vt = k[i, t, j], v[i, t, j]
                eye = np.eye(dk)
                s[i, j] = np.exp(g[i, t, j]) * (eye - beta[i, t, j] * np.outer(kt, kt)) @ s[i, j]
                s[i, j] += beta[i, t, j] * np.outer(kt, vt)
                out[i, t, j] = s[i, j].T @ (scale * q[i, t, j])
    return out, s


def np_delta_rule_grads(
    q,
    k,
    v,
    beta,
    d_out,
    *,
    d_state=None,
    log_gate=None,
    scale=None,
    initial_state=None,
    segment_ids=None,
):
    """Gradients of sum(o * d_out) + sum(S_L * d_state) for `np_delta_rule`, by the reverse
    recurrence: with dS the cotangent of S_t, M = I - beta k k^T and P the state before token t,
      dq = scale S_t do,  dv = beta dS^T k,  dbeta = k^T dS v - a k^T dS P^T k,
      dk = beta dS v - a beta (dS P^T k + P dS^T k),  dg = a <dS, M P>,  dP = a M dS.
    Returns a dict with q, k, v (summed over each k/v head's query heads), beta, log_gate,
    initial_state."""
    q, k, v, beta, d_out = (np.asarray(x, np.float64) for x in (q, k, v, beta, d_out))
    b, length, h, dk = q.shape
    hkv = k.shape[2]
    k, v = np.repeat(k, h // hkv, axis=2), np.repeat(v, h // hkv, axis=2)
    scale = dk**-0.5 if scale is None else scale
    g = np.zeros((b, length, h)) if log_gate is None else np.asarray(log_gate, np.float64)
    s0 = np.zeros((b, h, dk, v.shape[-1]))
    if initial_state is not None:
        s0 = np.array(initial_state, np.float64)
    reset = np.zeros((b, length), bool)
    if segment_ids is not None:
        ids = np.asarray(segment_ids)
        reset[:, 1:] = ids[:, 1:] != ids[:, :-1]
    eye = np.eye(dk)
    states = np.zeros((b, length + 1, h, dk, v.shape[-1]))  # states[t + 1] = S_t
    states[:, 0] = s0
    for i in range(b):
        for t in range(length):
            for j in range(h):
                p = 0.0 * s0[i, j] if reset[i, t] else states[i, t, j]
                kt = k[i, t, j]
                m = eye - beta[i, t, j] * np.outer(kt, kt)
                states[i, t + 1, j] = np.exp(g[i, t, j]) * m @ p + beta[i, t, j] * np.outer(
                    kt, v[i, t, j]
                )
    grads = {
        n: np.zeros_like(x)
        for n, x in (("q", q), ("k", k), ("v", v), ("beta", beta), ("log_gate", g))
    }
    grads["initial_state"] = np.zeros_like(s0)
    for i in range(b):
        for j in range(h):
            ds = np.zeros_like(s0[i, j]) if d_state is None else np.array(d_state[i, j], float)
            for t in reversed(range(length)):
                kt, vt, bt, a = k[i, t, j], v[i, t, j], beta[i, t, j], np.exp(g[i, t, j])
                st = states[i, t + 1, j]
                p = 0.0 * st if reset[i, t] else states[i, t, j]
                do = d_out[i, t, j]
                ds = ds + np.outer(scale * q[i, t, j], do)
                grads["q"][i, t, j] = scale * st @ do
                grads["v"][i, t, j] = bt * ds.T @ kt
                grads["beta"][i, t, j] = kt @ ds @ vt - a * kt @ ds @ p.T @ kt
                grads["k"][i, t, j] = bt * ds @ vt - a * bt * (ds @ p.T @ kt + p @ ds.T @ kt)
                m = eye - bt * np.outer(kt, kt)
                grads["log_gate"][i, t, j] = a * np.sum(ds * (m @ p))
                ds = 0.0 * ds if reset[i, t] else a * m @ ds
            grads["initial_state"][i, j] = ds
    for n in ("k", "v"):
        x = grads[n]
        grads[n] = x.reshape(b, length, hkv, h // hkv, x.shape[-1]).sum(3)
    return grads


def _np_gla_inputs(q, k, v, log_gate, scale, initial_state, segment_ids):
    """Shared setup of the GLA references: float64, k/v/gates repeated to q's heads, the gate
    broadcast to [B, L, H, Dk], the reset indicator [B, L] (True where a new segment starts)."""
    q, k, v, g = (np.asarray(x, np.float64) for x in (q, k, v, log_gate))
    b, length, h, dk = q.shape
    scalar = g.ndim == 3
    g = g[..., None] if scalar else g
    k, v, g = (np.repeat(x, h // x.shape[2], axis=2) for x in (k, v, g))
    g = np.broadcast_to(g, (b, length, h, dk))
    scale = dk**-0.5 if scale is None else scale
    s0 = np.zeros((b, h, dk, v.shape[-1]))
    if initial_state is not None:
        s0 = np.array(initial_state, np.float64)
    reset = np.zeros((b, length), bool)
    if segment_ids is not None:
        ids = np.asarray(segment_ids)
        reset[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return q * scale, k, v, g, s0, reset, scale, scalar


def np_gated_linear_attention(
    q, k, v, log_gate, *, scale=None, initial_state=None, segment_ids=None
):
    """GLA token by token: S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t), the
    state restarting from zero where segment_ids changes. q [B, L, H, Dk], k [B, L, Hkv, Dk],
    v [B, L, Hkv, Dv], log_gate [B, L, H(kv), Dk] or [B, L, H(kv)] (broadcast over Dk).
    Returns (o [B, L, H, Dv], final S [B, H, Dk, Dv])."""
    qs, k, v, g, s, reset, _, _ = _np_gla_inputs(
        q, k, v, log_gate, scale, initial_state, segment_ids
    )
    b, length, h, _ = qs.shape
    out = np.zeros((b, length, h, v.shape[-1]))
    for t in range(length):
        a = np.where(reset[:, t, None, None, None], 0.0, np.exp(g[:, t])[..., None])
        s = a * s + np.einsum("bhd,bhv->bhdv", k[:, t], v[:, t])
        out[:, t] = np.einsum("bhd,bhdv->bhv", qs[:, t], s)
    return out, s


def np_gated_linear_attention_grads(
    q, k, v, log_gate, d_out, *, d_state=None, scale=None, initial_state=None, segment_ids=None
):
    """Gradients of sum(o * d_out) + sum(S_L * d_state) for `np_gated_linear_attention`, by the
    reverse recurrence: with dS the cotangent of S_t, a = exp(g_t) (0 at a reset) and P the
    state before token t,
      dS += scale q_t do_t^T,  dq_t = scale S_t do_t,  dk_t = dS v_t,  dv_t = dS^T k_t,
      dg_t = a * sum_v dS P (per key dim; summed over Dk for a scalar gate),  dP = a dS.
    Returns a dict q, k, v, log_gate (summed over each k/v head's query heads), initial_state."""
    hkv, hg = np.shape(k)[2], np.shape(log_gate)[2]
    qs, k, v, g, s0, reset, scale, scalar = _np_gla_inputs(
        q, k, v, log_gate, scale, initial_state, segment_ids
    )
    b, length, h, dk = qs.shape
    a = np.where(reset[:, :, None, None], 0.0, np.exp(g))  # [B, L, H, Dk]
    states = np.zeros((length + 1, *s0.shape))  # states[t + 1] = S_t
    states[0] = s0
    for t in range(length):
        states[t + 1] = a[:, t, ..., None] * states[t] + np.einsum(
            "bhd,bhv->bhdv", k[:, t], v[:, t]
        )
    do = np.asarray(d_out, np.float64)
    ds = np.zeros_like(s0) if d_state is None else np.array(d_state, np.float64)
    dq, dk_, dv, dg = (np.zeros_like(x) for x in (qs, k, v, g))
    for t in reversed(range(length)):
        ds = ds + np.einsum("bhd,bhv->bhdv", qs[:, t], do[:, t])
        dq[:, t] = scale * np.einsum("bhdv,bhv->bhd", states[t + 1], do[:, t])
        dk_[:, t] = np.einsum("bhdv,bhv->bhd", ds, v[:, t])
        dv[:, t] = np.einsum("bhdv,bhd->bhv", ds, k[:, t])
        dg[:, t] = a[:, t] * np.sum(ds * states[t], axis=-1)
        ds = a[:, t, ..., None] * ds
    dg = dg.sum(-1) if scalar else dg

    def fold(x, heads):  # gradients of repeated heads add up
        return x.reshape(b, length, heads, h // heads, *x.shape[3:]).sum(3)

    return {
        "q": dq,
        "k": fold(dk_, hkv),
        "v": fold(dv, hkv),
        "log_gate": fold(dg, hg),
        "initial_state": ds,
    }
