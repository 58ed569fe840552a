"""Delta-rule linear attention (DeltaNet) and its gated form (Gated DeltaNet): the public API,
input checks and dispatch to the forms.

Modules:
  chunk.py      the chunked form: WY representation / UT transform per chunk, lax.scan across
                chunks (fla: chunk_delta_rule, chunk_gated_delta_rule)
  recurrent.py  the token recurrence: scan form and decode step
                (fla: fused_recurrent_delta_rule, fused_recurrent_gated_delta_rule)
  naive.py      the readable step-by-step reference
"""

# jaxtyping shape strings ("B L H D") are not forward references.

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from research.ops.attention.common import (
    check_causal_lengths,
    check_form,
    check_qkv,
    check_step_ranks,
    repeat_kv,
    resolve_scale,
)
from research.ops.attention.delta import chunk, naive, recurrent
from research.ops.attention.pallas import check_implementation
from research.ops.attention.pallas import delta as pallas_delta
from research.ops.attention.segments import (
    check_reset,
    check_segment_ids,
    check_state,
    check_step_state,
    segment_starts,
)
from research.ops.checks import check_bool, check_positive_int

DELTA_FORMS = ("chunked", "scan", "naive")


def _check_range(name: str, x, shape: tuple[int, ...], low: float | None, high: float) -> None:
    """`x` must have `shape`; concrete (non-traced) values must lie in [low, high] (low None:
    finite and <= high)."""
    if tuple(jnp.shape(x)) != tuple(shape):
        raise ValueError(
            f"{name} must be [batch, length, heads] = {tuple(shape)}, got {tuple(jnp.shape(x))}"
        )
    if isinstance(x, jax.core.Tracer):
        return
    a = np.asarray(x, np.float64)
    ok = (np.isfinite(a) & (a <= high)) if low is None else ((a >= low) & (a <= high))
    bad = ~ok  # NaN is bad too
    if bad.any():
        allowed = f"finite and <= {high}" if low is None else f"in [{low}, {high}]"
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must be {allowed}, got {a[idx]} at [batch, length, heads] = {idx}"
        )


def check_delta_inputs(q, k, v, beta, log_gate, segment_ids, initial_state):
    """Shapes and (where concrete) values of `delta_rule_attention`'s inputs, else ValueError.
    Returns the segment ids as int32 [B, L] (or None)."""
    check_qkv(q, k, v)
    check_causal_lengths("delta rule attention", q, k)
    batch, length, heads, dk = q.shape
    _check_range("beta", beta, (batch, length, heads), 0.0, 1.0)
    if log_gate is not None:
        _check_range("log_gate", log_gate, (batch, length, heads), None, 0.0)
    check_state("initial_state", initial_state, (batch, heads, dk, v.shape[-1]))
    return check_segment_ids(segment_ids, batch, length)


def delta_rule_forms(q, k, v, beta, log_gate, reset, s0, scale, form, chunk_size):
    """The shared core of `delta_rule_attention` and context parallelism, after the checks:
    repeats k/v heads and runs `form` in fp32 with q scaled. `reset` [B, L] bool (True: the
    state restarts from zero before that token). Returns (o [B, L, H, Dv] (the dtype of q for
    "chunked", else fp32), final state [B, H, Dk, Dv] fp32)."""
    heads = q.shape[2]
    k, v = repeat_kv(k, heads), repeat_kv(v, heads)
    g = jnp.zeros(beta.shape, jnp.float32) if log_gate is None else log_gate
    s0 = s0.astype(jnp.float32)
    if form == "chunked":  # token-major in, blocks transposed one at a time
        chunk_size = max(1, min(chunk_size, q.shape[1]))
        return chunk.chunked(q, k, v, beta, g, reset, s0, scale, chunk_size, None)
    qh, kh, vh, bh, gh = (jnp.swapaxes(x, 1, 2).astype(jnp.float32) for x in (q, k, v, beta, g))
    fn = recurrent.scan if form == "scan" else naive.loop
    o, s = fn(qh * scale, kh, vh, bh, gh, reset, s0)
    return jnp.swapaxes(o, 1, 2), s


def delta_rule_attention(
    q: Float[Array, "B L H Dk"],
    k: Float[Array, "B L Hkv Dk"],
    v: Float[Array, "B L Hkv Dv"],
    beta: Float[Array, "B L H"],
    *,
    log_gate: Float[Array, "B L H"] | None = None,
    scale: float | None = None,
    initial_state: Float[Array, "B H Dk Dv"] | None = None,
    return_state: bool = False,
    segment_ids: Int[Array, "B L"] | None = None,
    form: str = "chunked",
    chunk_size: int = 64,
    implementation: str = "xla",
):
    """Causal delta-rule attention (DeltaNet; Gated DeltaNet with `log_gate`):

      S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,  o_t = S_t^T (scale q_t),

    a_t = exp(log_gate_t) (1 without a gate), state S [Dk, Dv] per batch row and head, fp32.
    Schlag et al. 2021; Yang et al., NeurIPS 2024 (DeltaNet); Yang et al., ICLR 2025 (Gated
    DeltaNet). fla: chunk_delta_rule / chunk_gated_delta_rule (form="chunked"),
    fused_recurrent_delta_rule / fused_recurrent_gated_delta_rule (form="scan").

    The op does not normalise q or k: the recurrence is stable for |k_t| <= 1 (DeltaNet layers
    L2-normalise q and k first; so should callers).

    Args:
      q: [B, L, H, Dk]; k: [B, L, Hkv, Dk], v: [B, L, Hkv, Dv] with H % Hkv == 0 (grouped-query:
        each k/v head is repeated to its H / Hkv query heads, and every query head keeps its own
        state, as `linear_attention` does; fla's grouped *value* heads are the other way round).
      beta: [B, L, H] writing strength in [0, 1].
      log_gate: [B, L, H] scalar log-decay g_t <= 0 per head and step, or None (plain DeltaNet).
      scale: applied to q; default Dk ** -0.5.
      initial_state: [B, H, Dk, Dv] state before the first token (zeros if None).
      return_state: also return the state after the last token.
      segment_ids: [B, L] int, non-decreasing: packed documents. At the first token of each new
        segment the state restarts from zero (from `initial_state` only for the first segment).
      form: "chunked" (WY representation, `delta/chunk.py`), "scan" (the token recurrence,
        lax.scan), or "naive" (a Python loop over tokens; tests only).
      chunk_size: tokens per chunk for form="chunked".
      implementation: for form="chunked", "xla" (the jnp form in `delta/chunk.py`, the
        reference) or "pallas" (the Pallas TPU kernel in `pallas/delta.py`, forward and
        backward; the Pallas interpreter off TPU, slow; chunk_size a power of two from 16 to
        128).

    Returns:
      o [B, L, H, Dv] in the dtype of q; with return_state, (o, final_state [B, H, Dk, Dv] fp32).

    Raises ValueError (before compiling when the inputs are concrete) for beta outside [0, 1],
    log_gate > 0, decreasing segment_ids, and mismatched shapes.
    """
    check_bool("return_state", return_state)
    check_form(form, DELTA_FORMS)
    check_implementation(implementation, form)
    check_positive_int("chunk_size", chunk_size)
    segment_ids = check_delta_inputs(q, k, v, beta, log_gate, segment_ids, initial_state)
    batch, length, heads, dk = q.shape
    scale = resolve_scale(scale, dk)
    s0 = jnp.zeros((batch, heads, dk, v.shape[-1]), jnp.float32)
    s0 = s0 if initial_state is None else initial_state
    if implementation == "pallas":
        reset = None if segment_ids is None else segment_starts(segment_ids)
        k, v = repeat_kv(k, heads), repeat_kv(v, heads)
        o, s = pallas_delta.chunked(
            q, k, v, beta, log_gate, reset, s0, scale=scale, chunk=chunk_size
        )
        o = o.astype(q.dtype)
        return (o, s) if return_state else o
    reset = jnp.zeros((batch, length), bool) if segment_ids is None else segment_starts(segment_ids)
    o, s = delta_rule_forms(q, k, v, beta, log_gate, reset, s0, scale, form, chunk_size)
    o = o.astype(q.dtype)
    return (o, s) if return_state else o


def delta_rule_step(
    state: Float[Array, "B H Dk Dv"],
    q_t: Float[Array, "B H Dk"],
    k_t: Float[Array, "B Hkv Dk"],
    v_t: Float[Array, "B Hkv Dv"],
    beta_t: Float[Array, "B H"],
    *,
    log_gate_t: Float[Array, "B H"] | None = None,
    scale: float | None = None,
    reset_t: Bool[Array, " B"] | None = None,
) -> tuple[Float[Array, "B H Dk Dv"], Float[Array, "B H Dv"]]:
    """One decoding step of the (gated) delta rule in O(Dk Dv) per head (fla:
    fused_recurrent_delta_rule / fused_recurrent_gated_delta_rule with one token):
    S = exp(g_t) (I - beta_t k_t k_t^T) S + beta_t k_t v_t^T, out_t = S^T (scale q_t).

    state [B, H, Dk, Dv] (zeros, or the final state of `delta_rule_attention(...,
    return_state=True)`); q_t [B, H, Dk], k_t [B, Hkv, Dk], v_t [B, Hkv, Dv], beta_t and
    log_gate_t [B, H]; reset_t [B] bool, True where this token starts a new segment (the
    state restarts from zero first, as `segment_ids` do in the full op). Returns (new state
    fp32, out_t [B, H, Dv] in the dtype of q_t).
    """
    check_step_ranks(q_t=q_t, k_t=k_t, v_t=v_t)
    batch, heads, dk = q_t.shape
    check_step_state(state, (batch, heads, dk, v_t.shape[2]))
    # The sequence checks on a length-1 sequence give the same messages as the full op.
    one = lambda x: None if x is None else x[:, None]  # noqa: E731
    check_delta_inputs(one(q_t), one(k_t), one(v_t), one(beta_t), one(log_gate_t), None, None)
    reset_t = check_reset(reset_t, batch)
    scale = resolve_scale(scale, dk)
    groups = heads // k_t.shape[1]
    k_t, v_t = (jnp.repeat(x, groups, axis=1) if groups > 1 else x for x in (k_t, v_t))
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    g_t = jnp.zeros(beta_t.shape, jnp.float32) if log_gate_t is None else f32(log_gate_t)
    reset = jnp.zeros((batch,), bool) if reset_t is None else reset_t
    s, out = recurrent.recurrence(
        f32(state), f32(q_t) * scale, f32(k_t), f32(v_t), f32(beta_t), g_t, reset
    )
    return s, out.astype(q_t.dtype)


__all__ = [
    "DELTA_FORMS",
    "check_delta_inputs",
    "delta_rule_attention",
    "delta_rule_forms",
    "delta_rule_step",
]
