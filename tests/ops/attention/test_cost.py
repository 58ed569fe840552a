"""FLOP models of the gated families (`research.ops.attention.cost.attention_flops`) against a
hand count and against XLA's own cost analysis of the code they model."""

import jax
import jax.numpy as jnp
import pytest

from research.ops.attention.cost import FLOP_IMPLS, attention_flops
from research.ops.attention.delta import chunk, recurrent
from research.ops.attention.gated import chunk as gla_chunk


def _sd(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def _xla_flops(fn, *args) -> float:
    return float(jax.jit(fn).lower(*args).compile().cost_analysis()["flops"])


def test_gated_families_have_flop_models():
    assert {"gla-chunked", "gla-scan", "delta-chunked", "delta-scan"} <= set(FLOP_IMPLS)
    kw = dict(batch=2, length=256, heads=3, head_dim=64)
    for impl in ("gla-chunked", "gla-scan", "delta-chunked", "delta-scan"):
        fwd = attention_flops(impl, **kw)
        # forward+backward = 3.5 x forward, FlashAttention's convention, for every impl
        assert fwd > 0 and attention_flops(impl, backward=True, **kw) == 3.5 * fwd


def test_hand_counts():
    # B1 H1, L = 128, Dk = 16, Dv = 8, chunks of 32 (4 chunks).
    kw = dict(batch=1, length=128, heads=1, head_dim=16, value_dim=8, chunk_size=32)
    assert attention_flops("gla-scan", **kw) == 128 * 4 * 16 * 8
    assert attention_flops("delta-scan", **kw) == 128 * 6 * 16 * 8
    scalar = attention_flops("gla_scalar-chunked", **kw)
    assert scalar == attention_flops("linear-chunked", **kw)  # the same matmuls, F = Dk
    # The per-key-dim gate adds its cumulative log-gates: a [C, C] x [C, Dk] matmul per chunk.
    assert attention_flops("gla-chunked", **kw) == scalar + 4 * 2 * 32 * 32 * 16
    c, dk, dv = 32, 16, 8
    per_chunk = (
        2 * c * c * dk  # K K^T
        + 2 * c**3 / 3  # T = (I + A)^{-1}
        + 2 * c * c * (dk + dv)  # W = T [K | V]
        + 2 * c * c * dk  # Q K^T
        + 2 * c * c * (dk + dv)  # P W
        + 2 * c * dk * (dk + dv)  # Kend^T W
        + 2 * dk * dk * dv  # M S
        + 2 * c * dk * dv  # Q' S
    )
    assert attention_flops("delta-chunked", **kw) == pytest.approx(4 * per_chunk)
    # The chunk is clamped to the length, as the ops do.
    short = dict(kw, length=8)
    assert attention_flops("delta-chunked", **short) == pytest.approx(
        attention_flops("delta-chunked", **dict(short, chunk_size=8))
    )


def test_delta_chunked_model_matches_xla_cost_analysis_of_one_chunk():
    """One chunk of 64 tokens, B1 H2 Dk = Dv = 64: XLA's count of the block forward (every
    product, plus the gates, masks and exponentials the model leaves out) is within 10%. One
    chunk, because XLA counts a loop body once whatever its trip count."""
    b, t, h, d = 1, 64, 2, 64
    qkv = _sd(b, t, h, d)

    def block(q, k, v, beta, g, s):
        reset = jnp.zeros((b, t), bool)
        return chunk._block_forward(s, q, k, v, beta, g, reset, d**-0.5, t)

    xla = _xla_flops(block, qkv, qkv, qkv, _sd(b, t, h), _sd(b, t, h), _sd(b, h, d, d))
    model = attention_flops("delta-chunked", batch=b, length=t, heads=h, head_dim=d)
    assert model <= xla <= 1.1 * model, (xla, model)


def test_delta_scan_model_matches_xla_cost_analysis_of_one_step():
    """One token of the recurrence: the model's 6 Dk Dv (k^T S, k u^T, S^T q) plus XLA's
    count of the gate and reset (elementwise, Dk Dv each, left out of the model)."""
    b, h, dk, dv = 1, 2, 64, 32
    args = (
        _sd(b, h, dk, dv),
        _sd(b, h, dk),
        _sd(b, h, dk),
        _sd(b, h, dv),
        _sd(b, h),
        _sd(b, h),
        _sd(b, dtype=bool),
    )
    xla = _xla_flops(recurrent.recurrence, *args)
    model = attention_flops("delta-scan", batch=b, length=1, heads=h, head_dim=dk, value_dim=dv)
    assert model <= xla <= model + 4.5 * b * h * dk * dv, (xla, model)


@pytest.mark.parametrize("gate", ["per_key_dim", "scalar"])
def test_gla_chunked_model_matches_xla_cost_analysis_of_one_chunk(gate):
    """One chunk of 64 tokens, B1 H2 Dk = Dv = 64, the per-key-dim gate on its usual (factored)
    path and the scalar gate: XLA's count of the block (every product, plus the gates, masks and
    exponentials the model leaves out) is within 10% above the model's. The per-key-dim count
    once left out the cumulative log-gates' matmul (XLA: 1.27 x the model then)."""
    b, t, h, d = 1, 64, 2, 64
    qkv = _sd(1, 1, t, h, d)  # [B, N, C, H, D]: one block of one chunk
    dg = d if gate == "per_key_dim" else 1

    def block(s, q, k, v, g):
        p = jnp.zeros((b,), jnp.int32)
        sub = gla_chunk.sub_chunk_size(t)
        factored = gate == "per_key_dim"
        return gla_chunk.block_step(s, p, q, k, v, g, None, scale=1.0, sub=sub, factored=factored)

    xla = _xla_flops(block, _sd(b, h, d, d), qkv, qkv, qkv, _sd(1, 1, t, h, dg))
    impl = "gla-chunked" if gate == "per_key_dim" else "gla_scalar-chunked"
    model = attention_flops(impl, batch=b, length=t, heads=h, head_dim=d)
    assert model <= xla <= 1.1 * model, (xla, model)
