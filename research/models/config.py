"""Model configuration: one frozen dataclass, every field documented, validated on construction."""

import dataclasses

from research.models.partitioning import check_remat
from research.ops import attention as att
from research.ops import feature_maps as fm
from research.ops.checks import check_positive_int, is_positive_int

ATTENTION_KINDS = ("softmax", "linear", "linformer")
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
    linear_form: str = "chunked"  # causal linear attention: chunked, scan or cumsum
    chunk_size: int = 64  # chunked linear attention
    linformer_k: int = 64  # Linformer projected length m
    # Width of a causal depthwise convolution over time on the keys' input in self-attention,
    # k_t = W_k sum_s c_s * x_{t-s} (s < short_conv), initialised near the identity: H3's shift
    # (Fu et al. 2023), Based's short convolution. 0 = none.
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
    # (save those `checkpoint_name` tags) | qkv_proj_offloaded (q/k/v kept in pinned host
    # memory); MaxText's policies, research.models.partitioning.REMAT_POLICIES.
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
