"""Model configuration: one frozen dataclass, every field documented, validated on construction."""

import dataclasses

import jax
from absl import logging

from research.models.partitioning import check_remat
from research.ops import attention as att
from research.ops import feature_maps as fm
from research.ops.attention.pallas import IMPLEMENTATIONS as LINEAR_IMPLEMENTATIONS
from research.ops.attention.pallas.driver import check_chunk as check_pallas_chunk
from research.ops.checks import check_positive_int, is_positive_int

# The gated / delta-rule kinds (research.models.recurrent_attention): causal self-attention only.
RECURRENT_KINDS = ("gla", "retnet", "deltanet", "gated_deltanet")
ATTENTION_KINDS = ("softmax", "linear", "linformer", *RECURRENT_KINDS)
# One name per causal kind, as experiments and benchmarks take it: softmax, the feature map of
# causal linear attention (research.ops.feature_maps), or a gated / delta-rule kind.
CAUSAL_FEATURE_MAPS = ("elu", "relu", "taylor", "favor")
ATTENTION_NAMES = ("softmax", *CAUSAL_FEATURE_MAPS, *RECURRENT_KINDS)


# Options of one or two kinds only: any other kind refuses a value other than the default.
KIND_OPTIONS = {
    "gla_gate_rank": ("gla",),
    "gla_gate_temperature": ("gla",),
    "qkv_conv": ("deltanet", "gated_deltanet"),
}


def attention_overrides(name: str) -> dict:
    """ModelConfig keys for an attention name of ATTENTION_NAMES, as a sweep over kinds sets
    them on one model config. The delta kinds convolve q, k, v themselves (qkv_conv), so they
    take no key convolution (short_conv 0); every other kind keeps the config's. Options of other
    kinds (KIND_OPTIONS) go back to their defaults, so a sweep may set qkv_conv for its delta
    points."""
    if name in CAUSAL_FEATURE_MAPS:
        keys = {"attention": "linear", "feature_map": name}
    elif name in ("deltanet", "gated_deltanet"):
        keys = {"attention": name, "short_conv": 0}
    else:
        keys = {"attention": name}
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    return keys | {
        o: defaults[o] for o, kinds in KIND_OPTIONS.items() if keys["attention"] not in kinds
    }


POSITIONS = ("learned", "sinusoidal", "rotary", "none")
ACTIVATIONS = ("gelu", "gelu_tanh", "gelu_sigmoid", "relu", "swiglu")
NORMS = ("pre", "post")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters shared by `DecoderLM`, `Bert` and `EncoderDecoder`.

    Validated in `__post_init__`: a bad value raises ValueError naming the field, the value and
    what is allowed, before any parameter is created.
    """

    vocab_size: int = 1000
    d_model: int = 128  # hidden size
    num_heads: int = 4  # query heads; head_dim = d_model // num_heads
    num_kv_heads: int | None = None  # grouped-query attention; None = num_heads
    num_layers: int = 2  # decoder layers (DecoderLM), encoder layers (Bert, EncoderDecoder)
    num_decoder_layers: int | None = None  # EncoderDecoder only; None = num_layers
    d_ff: int = 512  # feed-forward hidden size
    max_length: int = 512  # longest sequence (learned/sinusoidal tables, Linformer, KV cache)
    positions: str = "learned"  # one of POSITIONS
    rope_base: float = 10000.0  # rotary base
    num_segments: int = 0  # segment (token-type) vocabulary; 0 = no segment embedding
    attention: str = "softmax"  # one of ATTENTION_KINDS, for self- and cross-attention
    # "xla" (dense, [B, H, L, L] scores), "blockwise" (O(L) memory, any backend), "cudnn"
    # (cuDNN flash attention, GPU only) or "tpu_flash" (Pallas flash attention, TPU only; per
    # device under shard_map); research.ops.attention.softmax_attention
    softmax_implementation: str = "xla"
    feature_map: str = "elu"  # linear attention: elu, relu, taylor, softmax (non-causal), favor
    favor_features: int = 64  # random features for feature_map="favor"
    # causal linear attention: chunked, scan or cumsum; the RECURRENT_KINDS: chunked or scan
    linear_form: str = "chunked"
    chunk_size: int = 64  # chunked linear attention and the RECURRENT_KINDS
    # the chunked form of causal linear attention and the RECURRENT_KINDS: "xla" (the jnp form)
    # or "pallas" (the Pallas TPU kernels, research/ops/attention/pallas; per device under
    # shard_map on TPU, the Pallas interpreter on CPU, refused on GPU)
    linear_implementation: str = "xla"
    # attention="gla": rank of the low-rank gate projection and the temperature dividing its
    # log-sigmoid (fla's gate_low_rank_dim and gate_logit_normalizer)
    gla_gate_rank: int = 16
    gla_gate_temperature: float = 16.0
    # attention="deltanet" / "gated_deltanet": width of the causal depthwise convolutions on the
    # q, k, v projections (fla's conv_size)
    qkv_conv: int = 4
    linformer_k: int = 64  # Linformer projected length m
    # Width of a causal depthwise convolution over time on the keys' input in self-attention,
    # k_t = W_k sum_s c_s * x_{t-s} (s < short_conv), initialised near the identity: H3's shift
    # (Fu et al. 2023), Based's short convolution. 0 = none. Also gla and retnet; the delta kinds
    # take qkv_conv instead.
    short_conv: int = 0
    activation: str = "gelu"  # one of ACTIVATIONS
    norm: str = "pre"  # "pre" (GPT-2) or "post" (BERT) layer norm placement
    layer_norm_eps: float = 1e-5
    use_bias: bool = True  # biases in projections and feed-forward
    dropout: float = 0.0
    tie_embeddings: bool = True  # output projection shares the token embedding
    mlm_head: bool = True  # Bert: transform + tied decoder for masked-LM logits
    pooler: bool = False  # Bert: tanh dense layer on [CLS]
    num_labels: int = 0  # Bert: classes of a softmax head on the pooled [CLS] (0 = no head)
    dtype: str = "float32"  # compute dtype; parameters are always float32
    # Rematerialise each layer in the backward pass: none | full (save nothing) | minimal (save
    # matmuls without batch dims) | save_qkv_proj | save_dot_except_mlp | save_dot_except_mlpwi
    # (save those `checkpoint_name` tags; q/k/v include the gated kinds' gate projections) |
    # qkv_proj_offloaded (q/k/v kept in pinned host memory); MaxText's policies,
    # research.models.partitioning.REMAT_POLICIES.
    remat: str = "none"
    # Stack the layers' variables on a leading "layers" axis and run them with jax.lax.scan: one
    # compiled layer body (compile time flat in depth), remat applied to it; MaxText's
    # scan_layers. Same parameters and outputs as the unrolled loop; research.models.stack.
    scan_layers: bool = False

    def __post_init__(self):
        for name in (
            "vocab_size",
            "d_model",
            "num_heads",
            "num_layers",
            "d_ff",
            "max_length",
            "favor_features",
            "chunk_size",
            "linformer_k",
            "gla_gate_rank",
            "qkv_conv",
        ):
            check_positive_int(name, getattr(self, name))
        for name in ("num_kv_heads", "num_decoder_layers"):
            value = getattr(self, name)
            if value is not None and not is_positive_int(value):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        choices = {
            "positions": POSITIONS,
            "attention": ATTENTION_KINDS,
            "softmax_implementation": att.SOFTMAX_IMPLEMENTATIONS,
            "feature_map": (*fm.FEATURE_MAP_NAMES, "favor"),
            "linear_form": att.LINEAR_FORMS,
            "linear_implementation": LINEAR_IMPLEMENTATIONS,
            "activation": ACTIVATIONS,
            "norm": NORMS,
            "dtype": DTYPES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not allowed; "
                    f"choose one of {', '.join(allowed)}"
                )
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.kv_heads})"
            )
        self._check_recurrent_kind()
        self._check_linear_implementation()
        check_remat(self.remat)
        if not isinstance(self.scan_layers, bool):
            raise ValueError(f"scan_layers must be True or False, got {self.scan_layers!r}")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.head_dim}")
        if self.positions == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        labels = self.num_labels
        if not isinstance(labels, int) or isinstance(labels, bool) or labels < 0 or labels == 1:
            raise ValueError(f"num_labels must be 0 (no head) or an int >= 2, got {labels!r}")
        if self.num_labels and not self.pooler:
            raise ValueError("num_labels > 0 needs pooler=True (the head reads the pooled [CLS])")
        conv = self.short_conv
        if not isinstance(conv, int) or isinstance(conv, bool) or conv < 0:
            raise ValueError(f"short_conv must be an int >= 0, got {conv!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("layer_norm_eps", "rope_base"):  # else NaN losses, found after compiling
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")

    def _check_recurrent_kind(self) -> None:
        """The gated / delta kinds take no feature map and no cumsum form; the delta kinds no
        key conv (they have qkv_conv); a kind's own options (KIND_OPTIONS) no other kind."""
        temperature = self.gla_gate_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise ValueError(f"gla_gate_temperature must be a number > 0, got {temperature!r}")
        if not temperature > 0:
            raise ValueError(f"gla_gate_temperature must be > 0, got {temperature!r}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, kinds in KIND_OPTIONS.items():
            default = defaults[name]
            if self.attention not in kinds and getattr(self, name) != default:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} does not apply to attention="
                    f"{self.attention!r} (only {', '.join(kinds)}); leave it at {default!r}"
                )
        if self.attention not in RECURRENT_KINDS:
            return
        kind = f"attention={self.attention!r}"
        if self.feature_map != "elu":
            raise ValueError(
                f"feature_map={self.feature_map!r} does not apply to {kind} (no feature map: "
                "the kind has its own gates); leave feature_map at its default 'elu'"
            )
        if self.short_conv and self.attention in ("deltanet", "gated_deltanet"):
            raise ValueError(
                f"short_conv={self.short_conv} does not apply to {kind}; leave it at 0 "
                "(deltanet and gated_deltanet convolve q, k, v with width qkv_conv)"
            )
        if self.linear_form not in ("chunked", "scan"):
            raise ValueError(
                f"linear_form={self.linear_form!r} is not allowed with {kind}; choose one of "
                "chunked, scan"
            )

    def _check_linear_implementation(self) -> None:
        if self.linear_implementation == "xla":
            return
        if self.attention not in ("linear", *RECURRENT_KINDS):
            raise ValueError(
                f"linear_implementation={self.linear_implementation!r} applies to attention "
                f"linear, {', '.join(RECURRENT_KINDS)}; got attention={self.attention!r} "
                "(leave linear_implementation at 'xla')"
            )
        if self.linear_form != "chunked":
            raise ValueError(
                f"linear_implementation='pallas' is a kernel of linear_form='chunked'; got "
                f"linear_form={self.linear_form!r}"
            )
        check_pallas_chunk(self.chunk_size)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def decoder_layers(self) -> int:
        return self.num_decoder_layers or self.num_layers

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def runnable_here(mcfg: ModelConfig) -> ModelConfig:
    """`mcfg` with kernels this backend has: a model trained with cuDNN, the TPU flash kernel or
    the Pallas linear kernels runs elsewhere (a laptop's CPU) with the XLA forms of the same
    functions (other rounding), and a warning says so. Blockwise softmax from
    DENSE_SOFTMAX_MAX_LEN positions."""
    backend = jax.default_backend()
    changes = {}
    try:
        att.softmax.check_backend(mcfg.softmax_implementation, backend)
    except ValueError:
        dense = mcfg.max_length < att.softmax.DENSE_SOFTMAX_MAX_LEN
        changes["softmax_implementation"] = "xla" if dense else "blockwise"
    if mcfg.linear_implementation == "pallas" and backend != "tpu":
        changes["linear_implementation"] = "xla"
    for k, v in changes.items():
        logging.warning("%s=%r has no kernel on %s: using %r", k, getattr(mcfg, k), backend, v)
    return mcfg.replace(**changes)
