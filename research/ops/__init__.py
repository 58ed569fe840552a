"""Pure JAX functions: attention, feature maps, activations, losses, masks."""

from research.ops.activations import fit_gelu_constants, gelu
from research.ops.attention import (
    LinearAttentionState,
    delta_rule_attention,
    delta_rule_step,
    gated_linear_attention,
    gated_linear_attention_step,
    linear_attention,
    linear_attention_init_state,
    linear_attention_state,
    linear_attention_step,
    linformer_attention,
    softmax_attention,
)
from research.ops.embedding import min_embedding_dim
from research.ops.feature_maps import favor, favor_projection, feature_dim
from research.ops.losses import cross_entropy, mlm_corrupt, mlm_loss
from research.ops.masks import causal_mask, packed_mask, padding_mask, unilm_mask
from research.ops.pet import label_scores, pet_loss
from research.ops.positions import apply_rotary, sinusoidal_positions

__all__ = [
    "LinearAttentionState",
    "apply_rotary",
    "causal_mask",
    "cross_entropy",
    "delta_rule_attention",
    "delta_rule_step",
    "favor",
    "favor_projection",
    "feature_dim",
    "fit_gelu_constants",
    "gated_linear_attention",
    "gated_linear_attention_step",
    "gelu",
    "label_scores",
    "linear_attention",
    "linear_attention_init_state",
    "linear_attention_state",
    "linear_attention_step",
    "linformer_attention",
    "min_embedding_dim",
    "mlm_corrupt",
    "mlm_loss",
    "packed_mask",
    "padding_mask",
    "pet_loss",
    "sinusoidal_positions",
    "softmax_attention",
    "unilm_mask",
]
