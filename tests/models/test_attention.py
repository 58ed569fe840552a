"""One attention class per kind, chosen once by `make_attention`; parameter paths unchanged."""

import pytest
from flax import nnx

from research.models import Bert, DecoderLM, EncoderDecoder, ModelConfig
from research.models.attention import LinearAttention, LinformerAttention, SoftmaxAttention
from research.models.layers import make_attention

TINY = dict(
    vocab_size=40,
    d_model=16,
    num_heads=2,
    num_layers=1,
    d_ff=32,
    max_length=24,
    chunk_size=4,
    linformer_k=8,
    favor_features=16,
)
PROJECTIONS = {f"{p}/{w}" for p in "qkvo" for w in ("kernel", "bias")}


def _block(prefix, attn, cross=False):
    """The state paths of one `Block` at `prefix` whose self-attention holds `attn` extras."""
    paths = {f"{prefix}/attn/{p}" for p in PROJECTIONS | set(attn)}
    paths |= {f"{prefix}/{n}/{w}" for n in ("attn_norm", "ffn_norm") for w in ("bias", "scale")}
    paths |= {f"{prefix}/ffn/{n}/{w}" for n in ("wi", "wo") for w in ("kernel", "bias")}
    paths |= {
        f"{prefix}/{d}/rngs/{r}" for d in ("dropout", "ffn/dropout") for r in ("count", "key")
    }
    if cross:  # cross-attention never has the key convolution
        paths |= {f"{prefix}/cross_attn/{p}" for p in PROJECTIONS}
        paths |= {f"{prefix}/cross_norm/{w}" for w in ("bias", "scale")}
    return paths


EMBED = {
    "embed/dropout/rngs/count",
    "embed/dropout/rngs/key",
    "embed/position/embedding",
    "embed/token/embedding",
}
NORMS = {f"{n}/{w}" for n in ("final_norm", "encoder_norm") for w in ("bias", "scale")}
MLM = {"mlm_bias", "mlm_norm/bias", "mlm_norm/scale", "mlm_transform/bias", "mlm_transform/kernel"}

# (model, config, attention class, the attention's extra variables beside q/k/v/o)
CASES = {
    "softmax": (DecoderLM, dict(attention="softmax"), SoftmaxAttention, ()),
    "linear-elu": (DecoderLM, dict(attention="linear"), LinearAttention, ()),
    "linear-favor-conv": (
        DecoderLM,
        dict(attention="linear", feature_map="favor", short_conv=2),
        LinearAttention,
        ("favor", "key_conv"),
    ),
    "linformer": (Bert, dict(attention="linformer"), LinformerAttention, ("e", "f")),
}


def _paths(model):
    return {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model))}


@pytest.mark.parametrize("kind", CASES)
def test_factory_picks_the_class_and_parameter_paths_are_unchanged(kind):
    model_cls, kw, attn_cls, extras = CASES[kind]
    model = model_cls(ModelConfig(**{**TINY, **kw}), rngs=nnx.Rngs(0))
    assert type(model.layers[0].attn) is attn_cls
    want = EMBED | {"final_norm/bias", "final_norm/scale"} | _block("layers/0", extras)
    assert _paths(model) == (want | MLM if model_cls is Bert else want)


def test_encoder_decoder_paths_with_cross_attention():
    model = EncoderDecoder(ModelConfig(**TINY, short_conv=2), rngs=nnx.Rngs(0))
    layer = model.layers[0]
    assert type(layer.attn) is SoftmaxAttention and type(layer.cross_attn) is SoftmaxAttention
    want = (
        EMBED | NORMS | _block("encoder/0", ["key_conv"]) | _block("layers/0", ["key_conv"], True)
    )
    assert _paths(model) == want


def test_make_attention_checks_causality_and_linformer_has_no_decode():
    rngs = nnx.Rngs(0)
    for kind, cls in (("softmax", SoftmaxAttention), ("linear", LinearAttention)):
        assert (
            type(make_attention(ModelConfig(**TINY, attention=kind), causal=True, rngs=rngs)) is cls
        )
    cfg = ModelConfig(**TINY, attention="linformer")
    with pytest.raises(ValueError, match="linformer' cannot be causal"):
        make_attention(cfg, causal=True, rngs=rngs)
    with pytest.raises(ValueError, match="feature_map='softmax'.*cannot be causal"):
        make_attention(
            cfg.replace(attention="linear", feature_map="softmax"), causal=True, rngs=rngs
        )
    attn = make_attention(cfg, causal=False, rngs=rngs)
    assert type(attn) is LinformerAttention
    with pytest.raises(ValueError, match="linformer' has no incremental decoding"):
        attn.init_cache(2, 8)
