"""Analytic costs of attention: FLOPs and communicated bytes, shared by research.bench and plan.

FLOPs count multiply-adds as 2 and ignore softmax / normalisation arithmetic. Forward, per
batch and head, with L tokens, D = head_dim, Dv = value_dim, F = feature_dim, C = chunk_size:
  softmax (any implementation): Lq Lk (D + Dv) x 2, halved when causal (only the lower triangle
    of QK^T and PV is needed); 2 L^2 D for causal self-attention with Dv = D.
  linear chunked (causal): L (2 C F + 2 C Dv + 4 F Dv): the C x C intra-chunk scores and their
    product with V, plus phi(Q) S and the state update phi(K)^T V.
  linear scan / cumsum, and every non-causal linear form: L 4 F Dv.
  gla chunked (gated linear attention, `research.ops.attention.gated`), per-key-dim gate:
    L (4 C Dk + 2 C Dv + 4 Dk Dv), the path the op takes whenever every chunk's log-gates sum
    to >= -40 (always at GLA's initialisation): linear chunked's matmuls with F = Dk, plus the
    chunk's cumulative log-gates as a [C, C] x [C, Dk] triangular matmul (2 C Dk a token).
    A chunk decaying further takes the pairwise tree, L ((C - 1)(Dk + Dv) + 4 Dk Dv): about
    0.6 x the count above at C = D = 64, so for such inputs the count is an upper bound.
    "gla_scalar-chunked" (one gate per head and step): L (2 C Dk + 2 C Dv + 4 Dk Dv), its
    partial sums of scalar gates left out. gla scan (either gate): L 4 Dk Dv (the rank-1
    update k v^T and the readout S^T q; the gate's elementwise decay of S is not counted).
  delta scan (the delta rule's token recurrence): L 6 Dk Dv (k^T S, the rank-1 update k u^T,
    the readout).
  delta chunked (the WY form as `research.ops.attention.delta.chunk` computes it), per chunk of
    C tokens: K K^T 2 C^2 Dk, the unit-lower-triangular inverse T = (I + A)^{-1} 2 C^3 / 3,
    W = T [K | V] 2 C^2 (Dk + Dv), Q K^T 2 C^2 Dk, P W 2 C^2 (Dk + Dv), Kend^T W
    2 C Dk (Dk + Dv), the chunk recurrence M S 2 Dk^2 Dv and the readout Q' S 2 C Dk Dv; i.e.
    L (4 C Dk + 4 C (Dk + Dv) + 2 C^2 / 3 + 2 Dk (Dk + Dv) + 2 Dk^2 Dv / C + 2 Dk Dv).
    At C = Dk = Dv = 64 that is 2.6 x linear chunked. For the gated families C is
    min(chunk_size, length), as the ops clamp it; gates, masks and exponentials are not counted
    (XLA's own count of one chunk of the delta form is about 3% higher:
    tests/ops/attention/test_cost.py).
Forward+backward is counted as 3.5 x forward (the FlashAttention convention), for every impl.

Communication (context parallelism, `research.ops.attention.context_parallel`), fp32 bytes each
device sends in one forward:
  linear: ceil(log2 P) x B H (F Dv + F) x 4 (a log-depth prefix of the d_k x d_v states);
  ring:   (P - 1) x B (L/P) Hkv (D + Dv) x 4 (K/V blocks passed around the ring; its backward
          sends them again with their gradients: research.plan.attention.comm_bytes).
"""

import math

# Forward+backward FLOPs as a multiple of the forward's.
BACKWARD_FLOP_FACTOR = 3.5

FLOP_IMPLS = (
    "softmax",
    "softmax-xla",
    "softmax-blockwise",
    "linear-chunked",
    "linear-scan",
    "linear-cumsum",
    "gla-chunked",
    "gla-scan",
    "gla_scalar-chunked",
    "gla_scalar-scan",
    "delta-chunked",
    "delta-scan",
)


def attention_flops(
    impl: str,
    *,
    batch: int,
    length: int,
    heads: int,
    head_dim: int,
    value_dim: int | None = None,
    feature_dim: int | None = None,
    chunk_size: int = 64,
    causal: bool = True,
    backward: bool = False,
) -> float:
    """FLOPs of one self-attention call over `length` tokens (see the module docstring).

    impl: one of FLOP_IMPLS ("softmax" covers every softmax implementation, e.g. torch SDPA;
    "gla-*" and "delta-*" are always causal, and head_dim is their key dim Dk). value_dim and
    feature_dim default to head_dim. backward=True returns forward+backward.
    """
    if impl not in FLOP_IMPLS:
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(FLOP_IMPLS)}")
    dv = head_dim if value_dim is None else value_dim
    f = head_dim if feature_dim is None else feature_dim
    c = min(chunk_size, length)
    if impl.startswith("softmax"):
        per_row = length * (head_dim + dv) * (1 if causal else 2)
    elif impl == "gla-chunked":
        per_row = 4 * c * head_dim + 2 * c * dv + 4 * head_dim * dv
    elif impl == "gla_scalar-chunked":
        per_row = 2 * c * head_dim + 2 * c * dv + 4 * head_dim * dv
    elif impl in ("gla-scan", "gla_scalar-scan"):
        per_row = 4 * head_dim * dv
    elif impl == "delta-scan":
        per_row = 6 * head_dim * dv
    elif impl == "delta-chunked":
        dk = head_dim
        per_row = (
            4 * c * dk
            + 4 * c * (dk + dv)
            + 2 * c * c / 3
            + 2 * dk * (dk + dv)
            + 2 * dk * dk * dv / c
            + 2 * dk * dv
        )
    else:
        per_row = 4 * f * dv
        if impl == "linear-chunked" and causal:  # non-causal is always the two-matmul form
            per_row += 2 * chunk_size * f + 2 * chunk_size * dv
    forward = float(batch * heads * length * per_row)
    return forward * BACKWARD_FLOP_FACTOR if backward else forward


def bytes_communicated(
    kind: str,
    *,
    batch: int,
    length: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    value_dim: int,
    feature_dim: int,
    devices: int,
) -> int:
    """fp32 bytes each device sends for one context-parallel forward (module docstring).

    kind: "linear" (`linear_attention_cp`) or "ring" (`ring_attention`).
    """
    if devices == 1:
        return 0
    if kind == "linear":
        steps = math.ceil(math.log2(devices))
        return 4 * steps * batch * heads * (feature_dim * value_dim + feature_dim)
    if kind == "ring":
        return 4 * (devices - 1) * batch * (length // devices) * kv_heads * (head_dim + value_dim)
    raise ValueError(f"unknown kind {kind!r}; allowed: linear, ring")
