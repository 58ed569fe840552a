"""Attention as pure functions: softmax (dense and blockwise), linear (kernel) and Linformer.

Layout (after flash-linear-attention):
  common.py            input checks, mask/bias normalisation, GQA `repeat_kv`, padding, the
                       guarded `divide`, per-backend default block sizes
  softmax.py           dense and blockwise softmax attention (custom VJP), online_softmax_update
  linear/              linear attention: chunk.py (chunked kernel), recurrent.py (scan form,
                       decode step, prefix state), naive.py (readable references)
  delta/               delta-rule attention (DeltaNet, Gated DeltaNet): chunk.py (WY / UT
                       transform), recurrent.py (scan form, decode step), naive.py (reference)
  gated/               gated linear attention (GLA, RetNet, Mamba2-style scalar decay):
                       chunk.py (chunks: factored, tree or sub-chunks), recurrent.py (scan,
                       decode step), naive.py (reference)
  segments.py          packed sequences: segment_ids checks, reset indicators, state shapes
  linformer.py         Linformer
  context_parallel.py  sequence-sharded linear attention and ring attention (inside shard_map)
  cost.py              analytic FLOPs and communicated bytes (research.bench, research.plan)

Shapes follow `jax.nn.dot_product_attention`: q `[batch, q_length, heads, head_dim]`,
k `[batch, kv_length, kv_heads, head_dim]`, v `[batch, kv_length, kv_heads, value_dim]`, with
`heads % kv_heads == 0` (grouped-query attention repeats each k/v head). Outputs are
`[batch, q_length, heads, value_dim]` in the dtype of q. Signatures spell these with jaxtyping
as "B Lq H D" etc. (annotations only, not checked at run time).

Masks are boolean, True = attend: a key-padding mask `[batch, kv_length]` or a full mask
broadcastable to `[batch, heads, q_length, kv_length]`. A query that may attend to no key
outputs zeros (and gets zero gradient) in every implementation. `causal=True` lets query i see
keys j <= i (top-left aligned, as in `jax.nn.dot_product_attention`).
"""

from research.ops.attention.delta import DELTA_FORMS, delta_rule_attention, delta_rule_step
from research.ops.attention.gated import (
    GATED_FORMS,
    gated_linear_attention,
    gated_linear_attention_step,
)
from research.ops.attention.linear import (
    LINEAR_FORMS,
    LinearAttentionState,
    linear_attention,
    linear_attention_init_state,
    linear_attention_state,
    linear_attention_step,
)
from research.ops.attention.linformer import linformer_attention
from research.ops.attention.softmax import (
    PORTABLE_SOFTMAX_IMPLEMENTATIONS,
    SOFTMAX_IMPLEMENTATIONS,
    online_softmax_update,
    softmax_attention,
)

__all__ = [
    "DELTA_FORMS",
    "GATED_FORMS",
    "LINEAR_FORMS",
    "PORTABLE_SOFTMAX_IMPLEMENTATIONS",
    "SOFTMAX_IMPLEMENTATIONS",
    "LinearAttentionState",
    "delta_rule_attention",
    "delta_rule_step",
    "gated_linear_attention",
    "gated_linear_attention_step",
    "linear_attention",
    "linear_attention_init_state",
    "linear_attention_state",
    "linear_attention_step",
    "linformer_attention",
    "online_softmax_update",
    "softmax_attention",
]
