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
