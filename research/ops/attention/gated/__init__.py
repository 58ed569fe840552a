"""Gated linear attention (GLA, Yang et al. 2024): the public API, input checks and dispatch.

Modules:
  chunk.py      chunkwise-parallel form, blocks of chunks at once (the default form)
  recurrent.py  the token recurrence: scan form (rematerialised blocks) and decode step
  naive.py      readable reference: a Python loop over tokens
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
from research.ops.attention.gated import chunk, naive, recurrent
from research.ops.attention.pallas import check_implementation
from research.ops.attention.pallas import gla as pallas_gla
from research.ops.attention.segments import (
    check_reset,
    check_segment_ids,
    check_state,
    check_step_state,
    segment_starts,
)
from research.ops.checks import check_bool, check_positive_int

GATED_FORMS = ("chunked", "scan", "naive")


def check_log_gate(log_gate, lead: tuple[int, ...], heads: tuple[int, ...], key_dim: int):
    """`log_gate` [*lead, H] (a scalar gate per head) or [*lead, H, key_dim] (per key dim), H
    one of `heads`; when concrete, every value finite and <= 0. Returns it as fp32 [*lead, H,
    key_dim or 1] (the scalar gate broadcasts over key_dim)."""
    shape = tuple(jnp.shape(log_gate))
    n = len(lead)
    ok_scalar = len(shape) == n + 1 and shape[:n] == lead and shape[n] in heads
    ok_vector = len(shape) == n + 2 and shape[:n] == lead and shape[n] in heads
    if not (ok_scalar or (ok_vector and shape[-1] == key_dim)):
        allowed = " or ".join(f"{(*lead, h)} or {(*lead, h, key_dim)}" for h in heads)
        raise ValueError(
            f"log_gate must be {allowed} (a scalar or per-key-dim gate per head), got shape {shape}"
        )
    if not isinstance(log_gate, jax.core.Tracer):
        x = np.asarray(log_gate)
        bad = ~(np.isfinite(x) & (x <= 0))
        if bad.any():
            raise ValueError(
                f"log_gate must be finite and <= 0 (the decay exp(log_gate) in (0, 1]); got "
                f"{float(x[bad].flat[0])} at index {tuple(int(i) for i in np.argwhere(bad)[0])}"
            )
    g = jnp.asarray(log_gate, jnp.float32)
    return g[..., None] if ok_scalar else g


def gated_linear_attention(
    q: Float[Array, "B L H Dk"],
    k: Float[Array, "B L Hkv Dk"],
    v: Float[Array, "B L Hkv Dv"],
    log_gate: Float[Array, "B L H Dk"] | Float[Array, "B L H"],
    *,
    scale: float | None = None,
    initial_state: Float[Array, "B H Dk Dv"] | None = None,
    return_state: bool = False,
    segment_ids: Int[Array, "B L"] | None = None,
    form: str = "chunked",
    chunk_size: int = 64,
    implementation: str = "xla",
) -> Float[Array, "B L H Dv"] | tuple[Float[Array, "B L H Dv"], Float[Array, "B H Dk Dv"]]:
    """Causal gated linear attention: S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = S_t^T
    (scale q_t) (Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient
    Training"). The op does not normalise: no denominator, and q, k are used as given.

    Args:
      q: [B, L, H, Dk]; k: [B, L, Hkv, Dk]; v: [B, L, Hkv, Dv] (H % Hkv == 0: grouped-query
        attention repeats each k/v head).
      log_gate: g_t <= 0 (finite), [B, L, H, Dk] per key dim (fla's chunk_gla /
        fused_recurrent_gla) or [B, L, H] one per head and step, broadcast over Dk (Mamba2/SSD
        style, fla's chunk_simple_gla / fused_recurrent_simple_gla). H may also be Hkv. A
        constant per-head decay such as RetNet's g = log(1 - 2^(-5 - h)) is a [B, L, H] input;
        g = 0 is plain unnormalised linear attention with the identity feature map.
      scale: multiplies q (default Dk ** -0.5).
      initial_state: [B, H, Dk, Dv], the state before the first token (zeros if None).
      return_state: also return the final state [B, H, Dk, Dv] (fp32).
      segment_ids: [B, L] int, non-decreasing along L (packed sequences): the state restarts
        from zero at the first token of each segment after the first (the first segment starts
        from `initial_state`); fla's `cu_seqlens`.
      form: "chunked" (chunk_size tokens per chunk; decays factored at the chunk start when
        every chunk's log-gates sum to >= -40, else by a tree or sub-chunks; `gated/chunk.py`),
        "scan" (the token recurrence, rematerialised every chunk_size tokens), "naive" (a
        Python loop over tokens; tests only).
      chunk_size: tokens per chunk (chunked; with implementation="xla" an input shorter than
        it is one chunk, its length rounded up to a multiple of the sub-chunk) or per
        rematerialised block (scan).
      implementation: for form="chunked", "xla" (the jnp form in `gated/chunk.py`, the
        reference) or "pallas" (the Pallas TPU kernel in `pallas/gla.py`, forward and backward;
        the Pallas interpreter off TPU, slow; chunk_size a power of two from 16 to 128).

    Returns:
      out [B, L, H, Dv] in the dtype of q, or (out, final_state) with return_state. The state is
      accumulated in fp32. Backward memory is O(L d + L / chunk_size * Dk Dv) in both fast forms.
    """
    check_bool("return_state", return_state)
    check_qkv(q, k, v)
    check_form(form, GATED_FORMS)
    check_implementation(implementation, form)
    check_positive_int("chunk_size", chunk_size)
    check_causal_lengths("gated linear attention", q, k)
    batch, length, heads, dk = q.shape
    kv_heads, dv = k.shape[2], v.shape[3]
    g = check_log_gate(log_gate, (batch, length), tuple({heads, kv_heads}), dk)
    seg = check_segment_ids(segment_ids, batch, length)
    check_state("initial_state", initial_state, (batch, heads, dk, dv))
    scale = resolve_scale(scale, dk)
    s0 = (
        jnp.zeros((batch, heads, dk, dv), jnp.float32)
        if initial_state is None
        else jnp.asarray(initial_state, jnp.float32)
    )
    k, v, g = repeat_kv(k, heads), repeat_kv(v, heads), repeat_kv(g, heads)
    if implementation == "pallas":
        out, state = pallas_gla.chunked(q, k, v, g, seg, s0, scale=scale, chunk=chunk_size)
    elif form == "chunked":
        out, state = chunk.chunked(q, k, v, g, seg, s0, scale=scale, chunk=chunk_size)
    else:
        f32 = jnp.float32
        keep = None if seg is None else 1.0 - segment_starts(seg).astype(f32)
        args = (q.astype(f32) * scale, k.astype(f32), v.astype(f32), g, keep, s0)
        if form == "scan":
            out, state = recurrent.scan(*args, block=chunk_size)
        else:
            out, state = naive.loop(*args)
    out = out.astype(q.dtype)
    return (out, state) if return_state else out


def gated_linear_attention_step(
    state: Float[Array, "B H Dk Dv"],
    q_t: Float[Array, "B H Dk"],
    k_t: Float[Array, "B Hkv Dk"],
    v_t: Float[Array, "B Hkv Dv"],
    log_gate_t: Float[Array, "B H Dk"] | Float[Array, "B H"],
    *,
    scale: float | None = None,
    reset_t: Bool[Array, " B"] | None = None,
) -> tuple[Float[Array, "B H Dk Dv"], Float[Array, "B H Dv"]]:
    """One decoding step of gated linear attention in O(1) time and memory per token (fla's
    fused_recurrent_gla / fused_recurrent_simple_gla with one token): S = diag(exp(g_t)) S +
    k_t v_t^T, o_t = S^T (scale q_t). The op does not normalise.

    Args:
      state: [B, H, Dk, Dv] (fp32; zeros, or `gated_linear_attention(..., return_state=True)`'s
        final state after a prefill).
      q_t: [B, H, Dk]; k_t: [B, Hkv, Dk]; v_t: [B, Hkv, Dv]; log_gate_t: [B, H, Dk] or [B, H]
        (finite, <= 0).
      scale: as in `gated_linear_attention`.
      reset_t: [B] bool, True where this token starts a new segment (the state restarts from 0).

    Returns:
      (new_state [B, H, Dk, Dv] in the dtype of state, out_t [B, H, Dv] in the dtype of q_t).
    """
    check_step_ranks(q_t=q_t, k_t=k_t, v_t=v_t)
    check_qkv(q_t[:, None], k_t[:, None], v_t[:, None])
    batch, heads, dk = q_t.shape
    kv_heads, dv = k_t.shape[1], v_t.shape[2]
    check_step_state(state, (batch, heads, dk, dv))
    g = check_log_gate(log_gate_t, (batch,), tuple({heads, kv_heads}), dk)
    reset_t = check_reset(reset_t, batch)
    keep = None if reset_t is None else 1.0 - reset_t.astype(jnp.float32)
    scale = resolve_scale(scale, dk)
    rep = lambda x: repeat_kv(x[:, None], heads)[:, 0].astype(jnp.float32)  # noqa: E731
    new, out = recurrent.decode_step(
        jnp.asarray(state, jnp.float32),
        q_t.astype(jnp.float32) * scale,
        rep(k_t),
        rep(v_t),
        rep(g),
        keep,
    )
    return new.astype(state.dtype), out.astype(q_t.dtype)


__all__ = [
    "GATED_FORMS",
    "check_log_gate",
    "gated_linear_attention",
    "gated_linear_attention_step",
]
