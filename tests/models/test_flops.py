"""research.models.flops: the per-token mixing count against XLA's count of the op it models."""

import jax
import jax.numpy as jnp

from research.models import ModelConfig
from research.models.flops import mixing_flops
from research.ops.attention.linformer import linformer_attention


def test_linformer_mixing_counts_its_projected_positions_not_the_length():
    """Linformer attends over m = linformer_k projected positions: 4 m H Dh for the scores and
    their product with V, 4 m Hkv Dh for projecting K and V along the sequence. It was counted
    as softmax's 4 S H Dh (8 x too high at S = 1,024, m = 64, Hkv = H). Against XLA's count of
    the op (softmax arithmetic on top): within 10% above."""
    seq, m = 1024, 64
    cfg = ModelConfig(
        vocab_size=64, d_model=128, num_heads=4, num_layers=1, d_ff=256, max_length=seq,
        attention="linformer", linformer_k=m,
    )  # fmt: skip
    x = jax.ShapeDtypeStruct((1, seq, 4, 32), jnp.float32)
    ef = jax.ShapeDtypeStruct((m, seq), jnp.float32)
    compiled = jax.jit(linformer_attention).lower(x, x, x, ef, ef).compile()
    xla = float(compiled.cost_analysis()["flops"])
    model = mixing_flops(cfg, seq) * seq
    assert model <= xla <= 1.1 * model, (xla, model)
    assert mixing_flops(cfg, seq) * 8 == 4 * seq * 4 * 32


def test_causal_softmax_mixing_is_half_of_qk_and_pv():
    """2 S H Dh per token: QK^T and PV (2 x 2 S H Dh) halved for the causal mask, MaxText's
    count (maxtext_utils.calculate_tflops_training_per_device: causal_attention_flops =
    noncausal_attention_flops / 2, after Megatron-LM and NeMo)."""
    cfg = ModelConfig(
        vocab_size=64, d_model=128, num_heads=4, num_layers=1, d_ff=256, max_length=512
    )
    assert mixing_flops(cfg, 512) * 512 == (4 * 512 * 512 * 4 * 32) / 2


def test_favor_mixing_counts_its_random_features():
    """FAVOR+'s state has favor_features rows (the feature map needs its projection to say so:
    the planner failed after compiling); its count equals elu's at a head_dim as wide."""
    from research.ops.attention.cost import attention_flops

    shape = dict(vocab_size=64, d_model=64, num_heads=2, num_layers=1, d_ff=128, max_length=256)
    cfg = ModelConfig(**shape, attention="linear", feature_map="favor", favor_features=48)
    want = attention_flops(
        "linear-chunked", batch=1, length=256, heads=2, head_dim=32, feature_dim=48,
        chunk_size=cfg.chunk_size,
    )  # fmt: skip
    assert mixing_flops(cfg, 256) * 256 == want
    assert mixing_flops(cfg, 256) > mixing_flops(cfg.replace(favor_features=16), 256)
