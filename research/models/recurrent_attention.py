"""The gated and delta-rule attention layers: GLA, RetNet, DeltaNet and Gated DeltaNet.

Each is causal self-attention whose memory is a fixed-size state S [H, Dk, Dv] per sequence,
following its paper and flash-linear-attention's (fla) layer of the same name:

  gla             Yang et al. 2024 (fla `GatedLinearAttention`): a per-key-dim decay from a
                  low-rank projection, log_gate = logsigmoid(W_up W_down x + b) / temperature
                  (`gla_gate_rank`, `gla_gate_temperature`; fla's gate_low_rank_dim=16,
                  gate_logit_normalizer=16); `research.ops.gated_linear_attention`.
  retnet          Sun et al. 2023 (fla `MultiScaleRetention`): a fixed decay per head,
                  log_gate_h = log(1 - 2^(-5 - h)); the same op with a scalar gate.
  deltanet        Yang et al. 2024 (fla `DeltaNet`): short causal depthwise convolutions
                  (width `qkv_conv`) and SiLU on q, k, v, L2-normalised q and k, beta =
                  sigmoid(W_beta x); `research.ops.delta_rule_attention`.
  gated_deltanet  Yang et al. 2025 (fla `GatedDeltaNet`): DeltaNet's inputs plus the Mamba2
                  decay log_gate = -exp(A_log) softplus(W_a x + dt_bias).

All four read out as fla does: per-head RMSNorm of the attention output times an output gate
swish(W_g x), then W_o. (fla's DeltaNet leaves the output gate off by default; here both delta
kinds have it, so deltanet and gated_deltanet differ only by the decay.) Rotary positions apply
to q and k when `positions="rotary"`, as for the other kinds (fla rotates only RetNet's).
Differences from fla's defaults, by design: Dk = Dv = head_dim for every kind (fla: expand_k
0.5 for GLA, expand_v 2 for RetNet and Gated DeltaNet), q/k/v/o biases follow `use_bias`, and
with GQA the gates and beta stay per query head while k and v are shared. Also: RetNet's
output norm is fla's per-head RMSNorm, not the paper's GroupNorm (no mean, no bias); the norm's
eps is `layer_norm_eps` (default 1e-5, fla's layer default; fla's model configs pass 1e-6);
the q/k/v convolutions start from PyTorch Conv1d's default, uniform +-1/sqrt(width) (fla's
models re-initialise every Conv1d as normal(0, 0.02)); a convolution tap w[s] multiplies
x_{t-s} (fla's Conv1d weight is the reverse, w[K-1-s]).

Right padding (a key-padding mask [B, L], True = real, pads after the real tokens, as the
models make it) and packed documents (`document_ids` [B, L]) are exact: a padded token has
k = v = 0, no decay and beta = 0, so it leaves the state as it is, and the state restarts from
zero at each document's first token. (A pad *before* real tokens would still reach the next
few tokens through the convolutions: the delta kinds' q/k/v ones, gla's and retnet's key one.)

gla and retnet take `short_conv` (the key convolution of H3 / Based that softmax and linear
attention take); the delta kinds have their own q, k, v convolutions instead (`qkv_conv`).

Decode caches: {"state": [B, H, Dk, Dv] fp32} and the conv windows, {"conv": {"q", "k", "v":
[B, qkv_conv - 1, H(kv) * D]}} for the delta kinds (the projections of the last tokens), {"conv":
{"x": [B, short_conv - 1, d_model]}} for gla / retnet with a key convolution.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from research import ops
from research.models.attention import (
    Attention,
    _after_history,
    _conv_history,
    _key_padding_only,
    axes,
    causal_conv,
    dense,
)
from research.models.config import ModelConfig
from research.models.partitioning import BATCH, HEADS, LENGTH, per_device, platform, tag


def head_rms_norm(o, weight, eps: float):
    """RMSNorm over the last axis of o [..., Dv] (each head on its own), in and out fp32."""
    x = o.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _gate_proj(y, *, heads: bool = True):
    """A gate, beta or decay projection's output [B, L, n], tagged "gate_proj": the remat
    policies that keep q/k/v keep it too (the planner counts these projections as q/k/v's kin);
    with `heads` its last dim (heads x head_dim) is sharded as the heads are."""
    return tag(y, "gate_proj", BATCH, LENGTH, HEADS if heads else None)


def l2_normalise(x, eps: float = 1e-6):
    """x / |x| over the last axis (fla's l2norm), fp32 inside."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


class RecurrentAttention(Attention):
    """Base of the four kinds: q/k/v/o projections from `Attention`, the output gate and norm,
    padding and documents, prefill and the O(1) decode step. Each kind defines `_init_inputs`
    (its own parameters) and `_inputs(x, q, k, v) -> (q, k, v, log_gate, beta)`, log_gate /
    beta None where unused; the delta kinds also convolve q, k, v (`conv_width`)."""

    conv_width = 0  # the delta kinds: cfg.qkv_conv

    def __init__(self, cfg: ModelConfig, *, causal: bool, cross: bool = False, rngs: nnx.Rngs):
        if cross or not causal:
            raise ValueError(
                f"attention={cfg.attention!r} is causal self-attention only (a recurrence over "
                "tokens); use softmax or linear attention for bidirectional or cross-attention"
            )
        super().__init__(cfg, causal=causal, cross=cross, rngs=rngs)

    def _init_kind(self, rngs: nnx.Rngs) -> None:
        cfg = self.cfg
        h, dh = cfg.num_heads, cfg.head_dim
        self.gate = dense(cfg, cfg.d_model, h * dh, "embed", "heads", rngs, bias=False)
        self.norm = nnx.Param(jnp.ones((dh,), jnp.float32), **axes(None))
        self._init_inputs(rngs)

    def _init_inputs(self, rngs: nnx.Rngs) -> None:
        """The kind's own parameters (gate or beta projections, convolutions)."""

    # -- the kind's inputs ---------------------------------------------------------------------
    def _windows(self) -> dict[str, tuple[int, int]]:
        """The conv windows a decode cache keeps: name -> (width, channels). The delta kinds
        keep their q, k, v projections ("q", "k", "v"); gla / retnet with `short_conv` keep the
        layer input ("x") of the key convolution."""
        cfg = self.cfg
        if self.conv_width:
            kv = cfg.kv_heads * cfg.head_dim
            heads = {"q": cfg.num_heads * cfg.head_dim, "k": kv, "v": kv}
            return {n: (self.conv_width, c) for n, c in heads.items()}
        return {"x": (self.short_conv, cfg.d_model)} if self.short_conv else {}

    def _projections(self, x, history=None, document_ids=None):
        """-> (seqs, q, k, v): seqs {window name: the sequence it keeps} (see `_windows`), q, k,
        v [B, L, H(kv), D] before rotary. The delta kinds convolve the q, k, v projections and
        apply SiLU; gla / retnet with short_conv project k from the key convolution of x. Every
        convolution continues `history` (the previous tokens' windows) and stays within each
        document."""
        cfg = self.cfg
        history = history or {}
        # Through `_heads`, as every other kind: the projections are tagged for the remat
        # policies (save_qkv_proj and its kin keep these dot outputs) and their heads sharded.
        heads = {"q": cfg.num_heads, "k": cfg.kv_heads, "v": cfg.kv_heads}
        names = {"q": "query_proj", "k": "key_proj", "v": "value_proj"}

        def project(n, t):
            return self._heads(t, getattr(self, n), heads[n], names[n])

        if self.conv_width:
            # The convolutions run on the flat [B, L, H * D] projections (a free reshape).
            seqs = {n: project(n, x).reshape(*x.shape[:2], -1) for n in ("q", "k", "v")}
            weights = {n: getattr(self, f"{n}_conv").get_value() for n in seqs}
            q, k, v = (
                jax.nn.silu(causal_conv(t, weights[n], history.get(n), document_ids))
                for n, t in seqs.items()
            )
        else:
            seqs = {"x": x} if self.short_conv else {}
            kx = x
            if self.short_conv:
                kx = causal_conv(x, self.key_conv.get_value(), history.get("x"), document_ids)
            return seqs, project("q", x), project("k", kx), project("v", x)
        shape = (*x.shape[:2], -1, cfg.head_dim)
        return seqs, q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def _all_inputs(self, x, positions, valid, history=None, document_ids=None):
        """-> (window sequences, (q, k, v, log_gate, beta)): everything the op needs for tokens
        x [B, L, d]; padded tokens (valid False) made no-ops: k = v = 0, log_gate = 0, beta = 0."""
        cfg = self.cfg
        raw, q, k, v = self._projections(x, history, document_ids)
        q, k, v, g, beta = self._inputs(x, q, k, v)
        if cfg.positions == "rotary":
            q = ops.apply_rotary(q, positions, base=cfg.rope_base)
            k = ops.apply_rotary(k, positions, base=cfg.rope_base)
        if valid is not None:
            on = valid[:, :, None, None]
            k, v = jnp.where(on, k, 0), jnp.where(on, v, 0)
            if g is not None:
                g = jnp.where(on if g.ndim == 4 else on[..., 0], g, 0.0)
            if beta is not None:
                beta = jnp.where(on[..., 0], beta, 0.0)
        return raw, (q, k, v, g, beta)

    def _mix(self, q, k, v, g, beta, *, document_ids=None, initial_state=None, step=False):
        """The op: the whole sequence (returns (o, final state)) or one decode step (returns
        (o_t [B, 1, H, Dv], new state))."""
        if step:
            q_t, k_t, v_t = q[:, 0], k[:, 0], v[:, 0]
            if beta is None:
                s, o = ops.gated_linear_attention_step(initial_state, q_t, k_t, v_t, g[:, 0])
            else:
                log_gate_t = None if g is None else g[:, 0]
                s, o = ops.delta_rule_step(
                    initial_state, q_t, k_t, v_t, beta[:, 0], log_gate_t=log_gate_t
                )
            return o[:, None], s
        cfg = self.cfg
        kw = dict(
            return_state=True,
            form=cfg.linear_form,
            chunk_size=cfg.chunk_size,
            implementation=cfg.linear_implementation,
        )

        def fn(q, k, v, g, beta, document_ids, initial_state):
            call = dict(kw, initial_state=initial_state, segment_ids=document_ids)
            if beta is None:
                return ops.gated_linear_attention(q, k, v, g, **call)
            return ops.delta_rule_attention(q, k, v, beta, log_gate=g, **call)

        args = (q, k, v, g, beta, document_ids, initial_state)
        if cfg.linear_implementation != "pallas" or platform() != "tpu":
            return fn(*args)
        # The Mosaic kernel per device (as tpu_flash): batch and heads split, whole sequences;
        # grouped k/v (and gates) repeated first, so each device's k/v heads are its own.
        k, v = self._repeat_kv(k, v)
        if g is not None and g.shape[2] != q.shape[2]:
            g = jnp.repeat(g, q.shape[2] // g.shape[2], axis=2)
        tokens = (BATCH, None, HEADS, None)
        names = (
            tokens,
            tokens,
            tokens,
            None if g is None else tokens[: g.ndim],
            tokens[:3],  # beta
            (BATCH, None),  # document ids
            (BATCH, HEADS, None, None),  # initial state
        )
        out = (tokens, (BATCH, HEADS, None, None))
        return per_device(fn, *names, out=out)(q, k, v, g, beta, document_ids, initial_state)

    def _readout(self, x, o):
        """Per-head RMSNorm times swish(W_g x), then W_o; the norm, the swish and their
        product in fp32, rounded to the model's dtype once (fla's fused norm-gate does the
        same)."""
        cfg = self.cfg
        normed = head_rms_norm(o, self.norm.get_value(), cfg.layer_norm_eps)
        gate = jax.nn.silu(_gate_proj(self.gate(x)).astype(jnp.float32)).reshape(o.shape)
        return self._out((normed * gate).astype(o.dtype))

    # -- full sequence -------------------------------------------------------------------------
    def __call__(self, x, *, mask=None, positions=None, context=None, document_ids=None):
        """x [B, L, d]; mask: key padding [B, L] (True = real); document_ids [B, L] int,
        non-decreasing: packed documents (the state restarts at each one)."""
        del context  # never cross-attention (refused in __init__)
        _key_padding_only(self.cfg, mask)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
        _, inputs = self._all_inputs(x, positions, mask, document_ids=document_ids)
        o, _ = self._mix(*inputs, document_ids=document_ids)
        return self._readout(x, o)

    # -- decoding ------------------------------------------------------------------------------
    def init_cache(self, batch: int, max_length: int):
        del max_length  # the state does not grow with the context
        cfg = self.cfg
        state = jnp.zeros((batch, cfg.num_heads, cfg.head_dim, cfg.head_dim), jnp.float32)
        windows = self._windows()
        if not windows:
            return {"state": state}
        dtype = jnp.dtype(cfg.dtype)
        conv = {n: jnp.zeros((batch, w - 1, c), dtype) for n, (w, c) in windows.items()}
        return {"state": state, "conv": conv}

    def prefill(self, x, layer_cache, *, mask, valid, positions):
        """The prompt x [B, P, d] (right-padded; `valid` [B, P] marks real tokens) through the
        layer, leaving the state after each row's last real token and its conv windows."""
        _key_padding_only(self.cfg, mask)
        raw, inputs = self._all_inputs(x, positions, valid)
        o, state = self._mix(*inputs, initial_state=layer_cache["state"])
        cache = {"state": state}
        windows = self._windows()
        if windows:
            lengths = jnp.sum(valid, axis=1).astype(jnp.int32)
            cache["conv"] = {n: _conv_history(t, lengths, windows[n][0]) for n, t in raw.items()}
        return self._readout(x, o), cache

    def decode(self, x_t, layer_cache, *, index, valid):
        """One token x_t [B, 1, d] at positions `index` [B]: O(1) in the context length."""
        del valid  # the state holds the whole history
        history = layer_cache.get("conv")
        raw, inputs = self._all_inputs(x_t, index[:, None], None, history)
        o, state = self._mix(*inputs, initial_state=layer_cache["state"], step=True)
        cache = {"state": state}
        windows = self._windows()
        if windows:
            cache["conv"] = {
                n: _after_history(t.astype(history[n].dtype), history[n], windows[n][0])[:, 1:]
                for n, t in raw.items()
            }
        return self._readout(x_t, o), cache


class GLAAttention(RecurrentAttention):
    """Gated linear attention: a per-key-dim decay from a low-rank projection of x."""

    def _init_inputs(self, rngs):
        cfg = self.cfg
        rank, h, dh = cfg.gla_gate_rank, cfg.num_heads, cfg.head_dim
        self.gate_down = dense(cfg, cfg.d_model, rank, "embed", None, rngs, bias=False)
        self.gate_up = dense(cfg, rank, h * dh, None, "heads", rngs, bias=True)

    def _inputs(self, x, q, k, v):
        cfg = self.cfg
        logit = _gate_proj(self.gate_up(_gate_proj(self.gate_down(x), heads=False)))
        logit = logit.astype(jnp.float32)
        g = jax.nn.log_sigmoid(logit) / cfg.gla_gate_temperature
        return q, k, v, g.reshape(*x.shape[:2], cfg.num_heads, cfg.head_dim), None


def retnet_log_decays(num_heads: int):
    """RetNet's fixed per-head decays, log(1 - 2^(-5 - h)) for h = 0 .. H-1 (fp32 [H])."""
    return jnp.log1p(-jnp.exp2(-5.0 - jnp.arange(num_heads, dtype=jnp.float32)))


class RetNetAttention(RecurrentAttention):
    """Retention: a fixed scalar decay per head (multi-scale: head h forgets at 2^(-5-h))."""

    def _inputs(self, x, q, k, v):
        g = jnp.broadcast_to(retnet_log_decays(self.cfg.num_heads), (*x.shape[:2], q.shape[2]))
        return q, k, v, g, None


class DeltaNetAttention(RecurrentAttention):
    """The delta rule: short convolutions and SiLU on q, k, v; q, k L2-normalised;
    beta = sigmoid(W_beta x)."""

    def __init__(self, cfg: ModelConfig, *, causal: bool, cross: bool = False, rngs: nnx.Rngs):
        self.conv_width = cfg.qkv_conv
        super().__init__(cfg, causal=causal, cross=cross, rngs=rngs)

    def _init_inputs(self, rngs):
        cfg = self.cfg
        h, hk, dh, width = cfg.num_heads, cfg.kv_heads, cfg.head_dim, self.conv_width
        # Depthwise convolutions, PyTorch Conv1d's default init (uniform, fan-in = width).
        bound = 1.0 / math.sqrt(width)
        for name, channels in (("q", h * dh), ("k", hk * dh), ("v", hk * dh)):
            w = jax.random.uniform(rngs.params(), (width, channels), minval=-bound, maxval=bound)
            setattr(self, f"{name}_conv", nnx.Param(w, **axes(None, "heads")))
        self.beta = dense(cfg, cfg.d_model, h, "embed", None, rngs, bias=False)
        self._init_decay(rngs)

    def _init_decay(self, rngs):
        """Gated DeltaNet's decay parameters (none for DeltaNet)."""

    def _decay(self, x):
        """log_gate [B, L, H] or None (no decay)."""
        del x

    def _inputs(self, x, q, k, v):
        beta = jax.nn.sigmoid(_gate_proj(self.beta(x), heads=False).astype(jnp.float32))
        return l2_normalise(q), l2_normalise(k), v, self._decay(x), beta


class GatedDeltaNetAttention(DeltaNetAttention):
    """The gated delta rule: DeltaNet plus Mamba2's decay -exp(A_log) softplus(W_a x + dt_bias)."""

    def _init_decay(self, rngs):
        cfg = self.cfg
        h = cfg.num_heads
        self.decay_proj = dense(cfg, cfg.d_model, h, "embed", None, rngs, bias=False)
        # fla's GatedDeltaNet init: A ~ U(0, 16) (from 1e-4 here, so log A stays finite); dt
        # log-uniform in [1e-3, 0.1], dt_bias its softplus inverse.
        a = jax.random.uniform(rngs.params(), (h,), minval=1e-4, maxval=16.0)
        self.a_log = nnx.Param(jnp.log(a), **axes(None))
        u = jax.random.uniform(rngs.params(), (h,))
        dt = jnp.maximum(jnp.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)), 1e-4)
        self.dt_bias = nnx.Param(dt + jnp.log(-jnp.expm1(-dt)), **axes(None))

    def _decay(self, x):
        a = _gate_proj(self.decay_proj(x), heads=False).astype(jnp.float32)
        a = a + self.dt_bias.get_value()
        return -jnp.exp(self.a_log.get_value()) * jax.nn.softplus(a)


RECURRENT_CLASSES = {  # one per research.models.config.RECURRENT_KINDS
    "gla": GLAAttention,
    "retnet": RetNetAttention,
    "deltanet": DeltaNetAttention,
    "gated_deltanet": GatedDeltaNetAttention,
}
