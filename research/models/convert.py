"""Import Hugging Face BERT and GPT-2 checkpoints (config.json + model.safetensors) into our models.

safetensors only: no pickle and no `torch.load`. Every tensor of the checkpoint must land in a
parameter of the model and every parameter must be filled; otherwise the error lists the names.
"""

import json
import pathlib

import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from research.models import stack
from research.models.config import ModelConfig
from research.models.transformer import Bert, DecoderLM

HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
# Buffers some checkpoints carry that are not parameters: position ids and GPT-2's causal masks.
BUFFER_SUFFIXES = ("embeddings.position_ids", ".attn.bias", ".attn.masked_bias")


def _read(path):
    path = pathlib.Path(path)
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} not found; expected a Hugging Face model dir")
    config = json.loads((path / "config.json").read_text())
    return config, {_legacy(k): v for k, v in load_file(str(path / "model.safetensors")).items()}


def _legacy(name: str) -> str:
    """TensorFlow-era BERT checkpoints name LayerNorm's scale and shift gamma and beta
    (bert-base-uncased among them); transformers renames them to weight and bias on load."""
    for old, new in (
        (".LayerNorm.gamma", ".LayerNorm.weight"),
        (".LayerNorm.beta", ".LayerNorm.bias"),
    ):
        if name.endswith(old):
            return name.removesuffix(old) + new
    return name


def _strip(tensors: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix): v for k, v in tensors.items()}


def _activation(config: dict, key: str) -> str:
    act = config.get(key, "gelu")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"unsupported {key}={act!r}; supported: {', '.join(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[act]


def _assign(assignments, tensors: dict, ignore_prefixes=()):
    """Fills every (checkpoint name, nnx.Variable, transform) or raises listing the names."""
    missing = [name for name, _, _ in assignments if name not in tensors]
    used = {name for name, _, _ in assignments}
    unexpected = [
        k
        for k in tensors
        if k not in used and not k.endswith(BUFFER_SUFFIXES) and not k.startswith(ignore_prefixes)
    ]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the model: missing {sorted(missing)}; "
            f"unexpected {sorted(unexpected)}"
        )
    mismatched, values = [], []
    for name, var, transform in assignments:
        value = np.asarray(transform(tensors[name]), np.float32)
        if value.shape != var.get_value().shape:
            mismatched.append(f"{name}: checkpoint {value.shape} vs model {var.get_value().shape}")
        values.append(value)
    if mismatched:
        raise ValueError("shape mismatch: " + "; ".join(mismatched))
    for (_, var, _), value in zip(assignments, values, strict=True):
        var.set_value(value)


def _same(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)


def _linear_pt(prefix, module, pt_layout=True):
    """nn.Linear stores weight [out, in] (transpose); GPT-2's Conv1D stores [in, out]."""
    t = (lambda w: w.T) if pt_layout else (lambda w: w)
    return [(f"{prefix}.weight", module.kernel, t), (f"{prefix}.bias", module.bias, lambda b: b)]


def _norm(prefix, module, names=("weight", "bias")):
    ident = lambda x: x  # noqa: E731
    return [
        (f"{prefix}.{names[0]}", module.scale, ident),
        (f"{prefix}.{names[1]}", module.bias, ident),
    ]


def bert_config(config: dict, **overrides) -> ModelConfig:
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"unsupported position_embedding_type {config['position_embedding_type']!r}"
        )
    return ModelConfig(
        vocab_size=config["vocab_size"],
        d_model=config["hidden_size"],
        num_heads=config["num_attention_heads"],
        num_layers=config["num_hidden_layers"],
        d_ff=config["intermediate_size"],
        max_length=config["max_position_embeddings"],
        num_segments=config.get("type_vocab_size", 2),
        layer_norm_eps=config.get("layer_norm_eps", 1e-12),  # transformers' BertConfig default
        activation=_activation(config, "hidden_act"),
        norm="post",
        positions="learned",
        **overrides,
    )


def load_bert(path, *, ignore_prefixes=(), **overrides) -> Bert:
    """Hugging Face BERT directory -> our `Bert` (post-LN, learned positions, segments).

    Heads follow the checkpoint: an MLM head if it has `cls.predictions.*`, a pooler if it has
    `pooler.*`. `ignore_prefixes` skips named tensors on purpose (for example
    ("cls.seq_relationship",), the NSP head). `overrides` change config fields, for instance
    attention="linear" to start a linear-attention model from softmax weights.
    """
    config, tensors = _read(path)
    tensors = _strip(tensors, "bert.")
    has_mlm = any(k.startswith("cls.predictions.") for k in tensors)
    has_pooler = "pooler.dense.weight" in tensors
    cfg = bert_config(config, mlm_head=has_mlm, pooler=has_pooler, **overrides)
    model = Bert(cfg.replace(scan_layers=False), rngs=nnx.Rngs(0))  # stacked after loading
    ident = lambda x: x  # noqa: E731
    e = model.embed
    a = [
        ("embeddings.word_embeddings.weight", e.token.embedding, ident),
        ("embeddings.position_embeddings.weight", e.position.embedding, ident),
        ("embeddings.token_type_embeddings.weight", e.segment.embedding, ident),
        *_norm("embeddings.LayerNorm", e.norm),
    ]
    for i, layer in enumerate(model.layers):
        p = f"encoder.layer.{i}"
        a += _linear_pt(f"{p}.attention.self.query", layer.attn.q)
        a += _linear_pt(f"{p}.attention.self.key", layer.attn.k)
        a += _linear_pt(f"{p}.attention.self.value", layer.attn.v)
        a += _linear_pt(f"{p}.attention.output.dense", layer.attn.o)
        a += _norm(f"{p}.attention.output.LayerNorm", layer.attn_norm)
        a += _linear_pt(f"{p}.intermediate.dense", layer.ffn.wi)
        a += _linear_pt(f"{p}.output.dense", layer.ffn.wo)
        a += _norm(f"{p}.output.LayerNorm", layer.ffn_norm)
    if has_pooler:
        a += _linear_pt("pooler.dense", model.pooler)
    if has_mlm:
        a += _linear_pt("cls.predictions.transform.dense", model.mlm_transform)
        a += _norm("cls.predictions.transform.LayerNorm", model.mlm_norm)
        a.append(("cls.predictions.bias", model.mlm_bias, ident))
        # The decoder is tied to the word embeddings; a stored copy must be that same matrix.
        for name, ref in (
            ("cls.predictions.decoder.weight", "embeddings.word_embeddings.weight"),
            ("cls.predictions.decoder.bias", "cls.predictions.bias"),
        ):
            if name in tensors:
                if not _same(tensors[name], tensors[ref]):
                    raise ValueError(f"{name} differs from {ref}; only tied MLM decoders load")
                tensors.pop(name)
    _assign(a, tensors, tuple(ignore_prefixes))
    return stack.convert(model, scan=cfg.scan_layers)


def gpt2_config(config: dict, **overrides) -> ModelConfig:
    d = config["n_embd"]
    return ModelConfig(
        vocab_size=config["vocab_size"],
        d_model=d,
        num_heads=config["n_head"],
        num_layers=config["n_layer"],
        d_ff=config.get("n_inner") or 4 * d,
        max_length=config["n_positions"],
        layer_norm_eps=config["layer_norm_epsilon"],
        activation=_activation(config, "activation_function"),
        norm="pre",
        positions="learned",
        **overrides,
    )


def load_gpt2(path, *, ignore_prefixes=(), **overrides) -> DecoderLM:
    """Hugging Face GPT-2 directory -> our pre-LN `DecoderLM` with tied output embedding."""
    config, tensors = _read(path)
    tensors = _strip(tensors, "transformer.")
    cfg = gpt2_config(config, **overrides)
    model = DecoderLM(cfg.replace(scan_layers=False), rngs=nnx.Rngs(0))  # stacked after loading
    ident = lambda x: x  # noqa: E731
    d = cfg.d_model
    a = [
        ("wte.weight", model.embed.token.embedding, ident),
        ("wpe.weight", model.embed.position.embedding, ident),
        *_norm("ln_f", model.final_norm),
    ]
    for i, layer in enumerate(model.layers):
        p = f"h.{i}"
        for j, proj in enumerate((layer.attn.q, layer.attn.k, layer.attn.v)):
            cols = slice(j * d, (j + 1) * d)
            a.append((f"{p}.attn.c_attn.weight", proj.kernel, lambda w, c=cols: w[:, c]))
            a.append((f"{p}.attn.c_attn.bias", proj.bias, lambda b, c=cols: b[c]))
        a += _linear_pt(f"{p}.attn.c_proj", layer.attn.o, pt_layout=False)
        a += _norm(f"{p}.ln_1", layer.attn_norm)
        a += _norm(f"{p}.ln_2", layer.ffn_norm)
        a += _linear_pt(f"{p}.mlp.c_fc", layer.ffn.wi, pt_layout=False)
        a += _linear_pt(f"{p}.mlp.c_proj", layer.ffn.wo, pt_layout=False)
    if "lm_head.weight" in tensors:
        if not _same(tensors["lm_head.weight"], tensors["wte.weight"]):
            raise ValueError("lm_head.weight differs from wte.weight; only tied GPT-2 heads load")
        tensors.pop("lm_head.weight")
    _assign(a, tensors, tuple(ignore_prefixes))
    return stack.convert(model, scan=cfg.scan_layers)
