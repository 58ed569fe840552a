"""Analytic model FLOPs of a layer's attention, per token, from its ModelConfig: what the
planner's MFU bound (research.plan.train.model_flops) and the training benchmark count."""

import jax.numpy as jnp

from research.models.config import ModelConfig
from research.ops import feature_maps as fm
from research.ops.attention.cost import attention_flops

# The analytic FLOP model of each attention kind's token mixing (research.ops.attention.cost).
_MIXING_IMPL = {
    "linear": "linear-chunked",
    "gla": "gla-chunked",
    "retnet": "gla_scalar-chunked",
    "deltanet": "delta-chunked",
    "gated_deltanet": "delta-chunked",
}


def mixing_flops(m: ModelConfig, seq: int) -> float:
    """Forward FLOPs per token and layer of the attention's token mixing at `seq` tokens of a
    causal decoder: softmax 2 S H Dh, QK^T and PV (4 S H Dh) halved for the causal mask, as
    MaxText, Megatron-LM and NeMo count since 2025 and `research.ops.attention.cost` does (the
    flash and blockwise kernels skip the masked blocks; the dense XLA form computes them, which
    XLA's own count, the planner's other term, sees); Linformer 4 m H Dh for attention
    over its m = linformer_k projected positions plus 4 m Hkv Dh for projecting K and V along
    the sequence (E k, F v); the linear and gated / delta kinds their chunked forms' count
    (`research.ops.attention.cost.attention_flops`: what the XLA code computes, so it grows with
    chunk_size)."""
    if m.attention == "linformer":
        return 4 * m.linformer_k * (m.num_heads + m.kv_heads) * m.head_dim
    if m.attention not in _MIXING_IMPL:
        return 2 * seq * m.num_heads * m.head_dim
    fdim = None
    if m.attention == "linear":  # FAVOR+'s features come from its projection's rows
        proj = jnp.zeros((m.favor_features, m.head_dim)) if m.feature_map == "favor" else None
        fdim = fm.feature_dim(m.feature_map, m.head_dim, favor_projection=proj)
    total = attention_flops(
        _MIXING_IMPL[m.attention],
        batch=1,
        length=seq,
        heads=m.num_heads,
        head_dim=m.head_dim,
        feature_dim=fdim,
        chunk_size=m.chunk_size,
    )
    return total / seq


def attention_params(m: ModelConfig) -> int:
    """Matmul parameters of one attention layer: q, k, v, o, plus the gated / delta kinds'
    output gate (d x H Dh), GLA's low-rank gate (d r + r H Dh) and the delta kinds' beta and
    decay projections (d x H each)."""
    d, h, dh = m.d_model, m.num_heads, m.head_dim
    n = d * dh * (2 * h + 2 * m.kv_heads)
    if m.attention in _MIXING_IMPL and m.attention != "linear":
        n += d * h * dh
    if m.attention == "gla":
        n += d * m.gla_gate_rank + m.gla_gate_rank * h * dh
    n += {"deltanet": d * h, "gated_deltanet": 2 * d * h}.get(m.attention, 0)
    return n
