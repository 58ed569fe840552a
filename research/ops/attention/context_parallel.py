"""Context parallelism: attention with the sequence axis sharded over a mesh axis.

Call these inside `jax.shard_map` with q, k, v split along length over `axis_name` (device i
holds positions [i L/P, (i+1) L/P), N = L/P of them); each returns this device's outputs. Both
equal the single-device causal result (tests/ops/attention/test_context_parallel.py).
`axis_size` is read from the mesh when omitted; a given one must match it.

linear: each device sums its keys into a d_k x d_v state, an exclusive prefix of those states
  over devices (Hillis-Steele, log2 P `ppermute`s of one state each) gives the sums of all earlier
  devices, and local causal linear attention starts from it. Communication per device:
  ceil(log2 P) x B H (F Dv + F) floats, independent of the length.
softmax: ring attention (Liu et al. 2023): K/V blocks travel around the ring with `ppermute`
  for P - 1 steps while each device merges their contributions into an online softmax.
  Communication per device: (P - 1) x B (L/P) Hkv (D + Dv) elements in the inputs' dtype. The
  backward is a second ring (FlashAttention-2's backward per block): the K/V blocks go round
  again with their fp32 gradients beside them, which take one more hop home in the inputs'
  dtype; it keeps O(L/P) per device, not every step's blocks.
gated (GLA): each device's block maps the state entering it to the state leaving it,
  S -> diag(a) S + b, with a = exp(sum of its log-gates) (0 if a segment starts in the block)
  and b its own final state from zero (keys decayed by the gates after them, one einsum). An
  exclusive prefix of these diagonal affine maps over devices ("decay then add", Hillis-Steele:
  log2 P `ppermute`s of (a, b)) gives each device its entering state, and the local chunked
  form starts from it. Communication per device: (ceil(log2 P) + 1) x B H (Dk Dv + Dk) floats,
  plus one segment id per row with segment_ids.
delta (DeltaNet, Gated DeltaNet): each device's block maps the carried state S to A S + B, A the
  product over its tokens of a_t (I - beta_t k_t k_t^T), B its state from zero. Both come from one
  run of the chunked form with the identity as initial state and zeros beside v (the WY form
  applies A to a state; no per-token Dk x Dk matrix is formed); an exclusive prefix of those
  affine maps over devices (Hillis-Steele, log2 P `ppermute`s of one [Dk, Dk + Dv] map each)
  gives each device its incoming state. Communication per device: ceil(log2 P) + 1 maps, plus
  one segment id per row with segment_ids.
The byte counts are `cost.bytes_communicated`.
"""

# jaxtyping shape strings ("B L H D") are not forward references.

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int

from research.ops import feature_maps as fm
from research.ops.attention import gated
from research.ops.attention.common import (
    check_causal_lengths,
    check_form,
    check_qkv,
    mesh_axis_size,
    repeat_kv,
    resolve_scale,
)
from research.ops.attention.delta import DELTA_FORMS, check_delta_inputs, delta_rule_forms
from research.ops.attention.linear import (
    LinearAttentionState,
    linear_attention,
    linear_attention_state,
)
from research.ops.attention.ring import ring_attention  # noqa: F401 - cp.ring_attention
from research.ops.attention.segments import check_segment_ids, check_state, segment_starts
from research.ops.checks import check_bool, check_causal_allowed, check_positive_int


def _exclusive_prefix(x, axis_name: str, size: int):
    """sum of x over devices with a smaller index on `axis_name` (log2(size) ppermutes)."""
    idx = lax.axis_index(axis_name)
    inclusive = x
    offset = 1
    while offset < size:
        perm = [(i, i + offset) for i in range(size - offset)]
        received = jax.tree.map(lambda t, p=perm: lax.ppermute(t, axis_name, p), inclusive)
        inclusive = jax.tree.map(
            lambda a, r, o=offset: a + jnp.where(idx >= o, r, 0.0), inclusive, received
        )
        offset *= 2
    return jax.tree.map(jnp.subtract, inclusive, x)


def linear_attention_cp(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B N Hkv D"],
    v: Float[Array, "B N Hkv Dv"],
    *,
    axis_name: str,
    axis_size: int | None = None,
    feature_map="elu",
    favor_projection: Float[Array, "M D"] | None = None,
    form: str = "chunked",
    chunk_size: int = 64,
    block_bytes: int | None = None,
) -> Float[Array, "B N H Dv"]:
    """Causal linear attention on this device's sequence block; see the module docstring.

    q [B, L/P, H, D], k [B, L/P, Hkv, D], v [B, L/P, Hkv, Dv] (this device's block).
    feature_map, favor_projection (the same [M, D] matrix on every device), form: as in
    `linear_attention`.
    """
    feature_map = fm.with_projection(feature_map, favor_projection)
    check_causal_allowed(feature_map=feature_map)
    axis_size = mesh_axis_size(axis_name, axis_size)
    heads = q.shape[2]
    kr, vr = repeat_kv(k, heads), repeat_kv(v, heads)
    local = linear_attention_state(kr, vr, feature_map=feature_map)
    s_prev, z_prev = _exclusive_prefix((local.s, local.z), axis_name, axis_size)
    return linear_attention(
        q,
        k,
        v,
        feature_map=feature_map,
        causal=True,
        form=form,
        chunk_size=chunk_size,
        block_bytes=block_bytes,
        initial_state=LinearAttentionState(s_prev, z_prev),
    )


def _shift_right(x, axis_name: str, size: int, first):
    """Device i gets device i-1's x; device 0 gets `first`."""
    received = lax.ppermute(x, axis_name, [(i, i + 1) for i in range(size - 1)])
    return jnp.where(lax.axis_index(axis_name) > 0, received, first)


def _exclusive_affine_prefix(a, b, axis_name: str, size: int):
    """The composition of the maps S -> a S + b of all devices with a smaller index (identity on
    device 0), in device order: (A, B) with S_in = A S_0 + B. a [.., K, K], b [.., K, V]."""
    idx = lax.axis_index(axis_name)
    offset = 1
    while offset < size:  # Hillis-Steele: (a, b) becomes the map of devices idx-2o+1 .. idx
        perm = [(i, i + offset) for i in range(size - offset)]
        ra, rb = (lax.ppermute(t, axis_name, perm) for t in (a, b))
        take = idx >= offset
        a, b = (
            jnp.where(take, jnp.einsum("...ij,...jk->...ik", a, ra), a),
            jnp.where(take, jnp.einsum("...ij,...jv->...iv", a, rb) + b, b),
        )
        offset *= 2
    eye = jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)
    return _shift_right(a, axis_name, size, eye), _shift_right(b, axis_name, size, 0.0 * b)


def delta_rule_attention_cp(
    q: Float[Array, "B N H Dk"],
    k: Float[Array, "B N Hkv Dk"],
    v: Float[Array, "B N Hkv Dv"],
    beta: Float[Array, "B N H"],
    *,
    axis_name: str,
    axis_size: int | None = None,
    log_gate: Float[Array, "B N H"] | None = None,
    scale: float | None = None,
    initial_state: Float[Array, "B H Dk Dv"] | None = None,
    return_state: bool = False,
    segment_ids: Int[Array, "B N"] | None = None,
    form: str = "chunked",
    chunk_size: int = 64,
):
    """(Gated) delta-rule attention on this device's sequence block; see the module docstring.

    q [B, L/P, H, Dk], k [B, L/P, Hkv, Dk], v [B, L/P, Hkv, Dv], beta, log_gate [B, L/P, H],
    segment_ids [B, L/P] (this device's block of the global ids); initial_state [B, H, Dk, Dv]
    (replicated: the state before the whole sequence). Other arguments as in
    `delta_rule_attention`. With return_state, also returns the state after this device's block
    (the last device's is the final state of the whole sequence).
    """
    check_bool("return_state", return_state)
    check_form(form, DELTA_FORMS)
    check_positive_int("chunk_size", chunk_size)
    segment_ids = check_delta_inputs(q, k, v, beta, log_gate, segment_ids, initial_state)
    axis_size = mesh_axis_size(axis_name, axis_size)
    b, n, h, dk = q.shape
    dv = v.shape[-1]
    scale = resolve_scale(scale, dk)
    reset = jnp.zeros((b, n), bool)
    if segment_ids is not None:
        # A block's first token restarts the state if its id differs from the previous block's last.
        before = _shift_right(segment_ids[:, -1], axis_name, axis_size, segment_ids[:, 0])
        reset = segment_starts(segment_ids).at[:, 0].set(segment_ids[:, 0] != before)
    # This block's map S -> A S + B: run it on [I | 0] with [0 | v] as values.
    eye = jnp.broadcast_to(jnp.eye(dk, dtype=jnp.float32), (b, h, dk, dk))
    v_aug = jnp.concatenate([jnp.zeros((*v.shape[:-1], dk), v.dtype), v], axis=-1)
    s_aug = jnp.concatenate([eye, jnp.zeros((b, h, dk, dv), jnp.float32)], axis=-1)
    _, m = delta_rule_forms(q, k, v_aug, beta, log_gate, reset, s_aug, scale, form, chunk_size)
    a_in, b_in = _exclusive_affine_prefix(m[..., :dk], m[..., dk:], axis_name, axis_size)
    s0 = b_in if initial_state is None else a_in @ initial_state.astype(jnp.float32) + b_in
    o, s = delta_rule_forms(q, k, v, beta, log_gate, reset, s0, scale, form, chunk_size)
    o = o.astype(q.dtype)
    return (o, s) if return_state else o


def _exclusive_diagonal_prefix(a, b, axis_name: str, size: int):
    """As `_exclusive_affine_prefix` for diagonal maps S -> diag(a) S + b (GLA: a [B, H, Dk or
    1], b [B, H, Dk, Dv]): "decay then add", (a1, b1) then (a2, b2) is (a2 a1, a2 b1 + b2)."""
    idx = lax.axis_index(axis_name)
    offset = 1
    while offset < size:
        perm = [(i, i + offset) for i in range(size - offset)]
        ra, rb = (lax.ppermute(t, axis_name, perm) for t in (a, b))
        take = idx >= offset
        a, b = jnp.where(take, ra * a, a), jnp.where(take, a[..., None] * rb + b, b)
        offset *= 2
    return (
        _shift_right(a, axis_name, size, jnp.ones_like(a)),
        _shift_right(b, axis_name, size, jnp.zeros_like(b)),
    )


def gated_linear_attention_cp(
    q: Float[Array, "B N H Dk"],
    k: Float[Array, "B N Hkv Dk"],
    v: Float[Array, "B N Hkv Dv"],
    log_gate: Float[Array, "B N H Dk"] | Float[Array, "B N H"],
    *,
    axis_name: str,
    axis_size: int | None = None,
    scale: float | None = None,
    initial_state: Float[Array, "B H Dk Dv"] | None = None,
    return_state: bool = False,
    segment_ids: Int[Array, "B N"] | None = None,
    form: str = "chunked",
    chunk_size: int = 64,
):
    """Gated linear attention on this device's sequence block; see the module docstring.

    q [B, L/P, H, Dk], k [B, L/P, Hkv, Dk], v [B, L/P, Hkv, Dv], log_gate [B, L/P, H, Dk] or
    [B, L/P, H] (H or Hkv heads), segment_ids [B, L/P] (this device's block of the [B, L] ids;
    a segment may span devices); initial_state [B, H, Dk, Dv] (replicated: the state before the
    whole sequence). scale, form ("chunked" or "scan"), chunk_size: as in
    `gated_linear_attention`. With return_state, also returns the state after this device's
    block (the last device's is the final state of the whole sequence). Values of traced inputs
    cannot be checked here.
    """
    check_bool("return_state", return_state)
    if form not in ("chunked", "scan"):
        raise ValueError(f"form={form!r}: context parallelism runs 'chunked' or 'scan'")
    check_positive_int("chunk_size", chunk_size)
    check_qkv(q, k, v)
    check_causal_lengths("gated linear attention", q, k)
    axis_size = mesh_axis_size(axis_name, axis_size)
    batch, n, heads, dk = q.shape
    dv = v.shape[-1]
    g = gated.check_log_gate(log_gate, (batch, n), tuple({heads, k.shape[2]}), dk)
    seg = check_segment_ids(segment_ids, batch, n)
    check_state("initial_state", initial_state, (batch, heads, dk, dv))
    scale = resolve_scale(scale, dk)
    f32 = jnp.float32
    k, v, g = (repeat_kv(x, heads).astype(f32) for x in (k, v, g))
    # This block's map S -> diag(a) S + b: b sums the keys of its last segment, each decayed by
    # the gates after it (a reverse exclusive prefix of log-gates, all <= 0: no overflow).
    after = jnp.concatenate(
        [lax.cumsum(g, axis=1, reverse=True)[:, 1:], jnp.zeros_like(g[:, :1])], axis=1
    )
    kd = k * jnp.exp(after)
    a = jnp.exp(jnp.sum(g, axis=1))  # [B, H, Dk or 1]
    keep = p0 = None
    if seg is not None:
        p0 = _shift_right(seg[:, -1], axis_name, axis_size, seg[:, 0])  # the entering state's id
        kd = jnp.where((seg == seg[:, -1:])[:, :, None, None], kd, 0.0)
        a = jnp.where((seg[:, -1] == p0)[:, None, None], a, 0.0)
        keep = 1.0 - segment_starts(seg).at[:, 0].set(seg[:, 0] != p0).astype(f32)
    b = jnp.einsum("bnhd,bnhv->bhdv", kd, v)
    a_in, b_in = _exclusive_diagonal_prefix(a, b, axis_name, axis_size)
    s_in = b_in
    if initial_state is not None:
        s_in = a_in[..., None] * jnp.asarray(initial_state, f32) + b_in
    if form == "chunked":
        out, s = gated.chunk.chunked(q, k, v, g, seg, s_in, scale=scale, chunk=chunk_size, p0=p0)
    else:
        out, s = gated.recurrent.scan(q.astype(f32) * scale, k, v, g, keep, s_in, block=chunk_size)
    out = out.astype(q.dtype)
    return (out, s) if return_state else out
