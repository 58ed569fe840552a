"""seq2seq.init: a UniLM seq2seq run on the Chinese titles (inews_titles) starts from seqlab's
Chinese MLM, with its character vocabulary, as qagen does; bad values are one-line ConfigErrors."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from configs import seq2seq as seq2seq_config
from research.config import ConfigError
from research.data.wordpiece import BertVocab
from research.tasks import seq2seq
from research.tasks.seq2seq.metrics import text_scores
from research.train import loop
from research.train.config import parse
from research.train.trained import load_trained

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config(ddir, init, **seq):
    c = seq2seq_config.get_config("smoke")
    c.data.update(source="inews_titles", data_dir=ddir)
    c.seq2seq.update(layout="unilm", init=init, src_len=23, tgt_len=8, eval_beams=(1,), **seq)
    c.update(num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2)
    return c


def _params(model) -> dict:
    return {
        "/".join(map(str, k)): np.asarray(v)
        for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def test_unilm_starts_from_the_mlm_with_its_character_vocabulary(mlm_workdir, data_dir):
    pre = load_trained(mlm_workdir)
    run = parse(_config(data_dir, f"workdir:{mlm_workdir}"))
    task = seq2seq.Seq2seqTask()
    data = task.build_data(run)
    # The BERT's vocabulary, not a sentencepiece model trained on the titles.
    assert isinstance(data.vocab, BertVocab) and data.vocab.to_json() == pre.vocab.to_json()
    assert not list((pathlib.Path(data_dir) / "tokenizers").glob("inews*"))
    mcfg = task.model_config(run, vocab_size=data.vocab_size, max_length=data.max_length)
    assert (mcfg.d_model, mcfg.num_layers, mcfg.vocab_size) == (
        pre.model.cfg.d_model,
        pre.model.cfg.num_layers,
        pre.model.cfg.vocab_size,
    )
    assert mcfg.mlm_head and mcfg.num_segments == 2
    model = task.build_model(run, mcfg, rngs=nnx.Rngs(params=5, dropout=6))
    before = _params(model)
    task.initialize(run, model)
    got, want = _params(model), _params(pre.model)
    copied = [k for k in want if k in got and got[k].shape == want[k].shape]
    assert "embed/token/embedding" in copied and len(copied) >= len(want) - 1
    for k in copied:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert not np.array_equal(before["embed/token/embedding"], got["embed/token/embedding"])
    # Rows are [CLS] text [SEP] title [SEP], in the BERT's character ids.
    batch = next(iter(data.make_iterator(False)))
    v = pre.vocab
    assert np.all(batch["inputs"][:, 0] == v.cls_id)
    p = batch["prompt_length"]
    assert np.all(batch["inputs"][np.arange(len(p)), p - 1] == v.sep_id)
    first = seq2seq.seq2seq_vocab(data.vocab).decode(batch["inputs"][0, 1 : p[0] - 1])
    assert first and " " not in first and any("\u4e00" <= ch <= "\u9fff" for ch in first)


def test_trained_run_scores_the_decoded_titles_on_characters(mlm_workdir, data_dir, tmp_path):
    c = _config(data_dir, f"workdir:{mlm_workdir}", remedy="gradient_penalty")
    run = parse(c)
    summary = loop.train_and_evaluate(run, str(tmp_path / "wd"))
    assert np.isfinite(summary.final_train_loss)
    last = json.loads((tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["split"] == "eval"
    # The run is itself a BERT workdir with the MLM's vocabulary.
    trained = load_trained(tmp_path / "wd")
    assert trained.vocab.to_json() == load_trained(mlm_workdir).vocab.to_json()
    # Recompute beam-1 scores from the same eval batches: the references are Chinese titles
    # (no spaces between characters), scored per character by text_scores.
    task, s = seq2seq.Seq2seqTask(), run.task_config
    data = task.build_data(run)
    v = seq2seq.seq2seq_vocab(data.vocab)
    it = iter(data.make_iterator(False))
    hyps, refs = [], []
    for _ in range(run.train.eval_steps):
        b = next(it)
        out = seq2seq.generate(
            trained.model,
            jax.tree.map(jax.numpy.asarray, b),
            layout="unilm",
            method="beam",
            beam_size=1,
            max_new=s.tgt_len,
            src_len=s.src_len,
            bos=v.bos,
            eos=v.eos,
            pad=v.pad,
        )
        hyps += [v.decode(h) for h in np.asarray(out)]
        refs += [v.decode(r) for r in np.where(b["weights"] > 0, b["targets"], v.pad)]
    assert all(r and " " not in r for r in refs)
    assert sum("\u4e00" <= ch <= "\u9fff" for r in refs for ch in r) > 0.5 * sum(map(len, refs))
    mine = text_scores(hyps, refs)
    for k in ("rougeL", "rouge1", "rouge2", "bleu", "sentence_bleu"):
        assert last[f"beam1_{k}"] == pytest.approx(mine[k], abs=1e-6), k
    # A perfect hypothesis scores 100 on these character units.
    assert text_scores(refs, refs)["rougeL"] == pytest.approx(100.0)
    # research.generate decodes a source with the BERT's vocabulary ([CLS] source [SEP]).
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "research.generate",
            f"--workdir={tmp_path / 'wd'}",
            "--prompt=新华社北京一月一日电",
            "--max_new_tokens=4",
        ],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    # The same greedy decode without a cache: [CLS] source [SEP] as training lays it out, then
    # the whole row run again (UniLM mask, new tokens in segment 1) for every token.
    ids, tok, _, eos, pad = task.text_prompt(run, trained.vocab, "新华社北京一月一日电")
    assert ids[0] == trained.vocab.cls_id and ids[-1] == trained.vocab.sep_id
    seq, new = list(ids), []
    for _ in range(4):
        seg = [0] * len(ids) + [1] * len(new)
        logits = trained.model(
            jax.numpy.asarray([seq]), segment_ids=jax.numpy.asarray([seg]), unilm=True
        )
        nxt = int(np.argmax(np.asarray(logits.logits)[0, -1]))
        if nxt == eos:
            break
        seq.append(nxt)
        new.append(nxt)
    want = tok.decode([t for t in new if t not in (eos, pad)])
    assert new and want.strip()  # the model says something: the comparison is not of nothing
    assert r.stdout.strip() == want.strip() and " " not in want.strip()


def _fake_workdir(src: pathlib.Path, dst: pathlib.Path, *, vocab_kind=None, vocab_size=None):
    shutil.copytree(src, dst)
    if vocab_kind is not None:
        (dst / "vocab.json").write_text(json.dumps({"kind": vocab_kind}))
    if vocab_size is not None:
        m = json.loads((dst / "model.json").read_text())
        (dst / "model.json").write_text(json.dumps({**m, "vocab_size": vocab_size}))
    return dst


def test_bad_init_values_are_one_line_config_errors(mlm_workdir, data_dir, tmp_path):
    not_bert = _fake_workdir(mlm_workdir, tmp_path / "not_bert", vocab_kind="none")
    small = _fake_workdir(mlm_workdir, tmp_path / "small", vocab_size=10)
    cases = [
        (_config(data_dir, "s3:/x"), "use '', 'workdir:PATH' or 'hf:PATH'"),
        (_config(data_dir, "workdir:"), "use '', 'workdir:PATH' or 'hf:PATH'"),
        (_config(data_dir, f"workdir:{tmp_path / 'none'}"), "no model.json"),
        (_config(data_dir, f"hf:{tmp_path}"), "no config.json"),
        (_config(data_dir, f"workdir:{not_bert}"), "no WordPiece vocabulary"),
        (_config(data_dir, f"workdir:{small}"), "its model only 10 embeddings"),
    ]
    encdec = _config(data_dir, f"workdir:{mlm_workdir}")
    encdec.seq2seq.layout = "encdec"
    cases.append((encdec, "needs seq2seq.layout='unilm'"))
    synthetic = _config(data_dir, f"workdir:{mlm_workdir}")
    synthetic.data.source = "seq2seq_synthetic"
    cases.append((synthetic, "has its own digit vocabulary"))
    for c, message in cases:
        with pytest.raises(ConfigError, match="seq2seq.init") as e:
            parse(c)
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    # From the command line: exit 2, one line, no traceback, with the way to train the MLM.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [
        sys.executable,
        "-m",
        "research.main",
        "--config=configs/seq2seq.py:smoke",
        f"--workdir={tmp_path / 'wd'}",
        "--config.seq2seq.layout=unilm",
        "--config.data.source=inews_titles",
        f"--config.seq2seq.init=workdir:{tmp_path / 'missing'}",
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no model.json" in r.stderr and "configs/mlm.py" in r.stderr


def test_unilm_starts_from_a_hugging_face_bert(mlm_workdir, data_dir, tmp_path):
    """init=hf:PATH: a BertForMaskedLM directory with our characters' vocab.txt trains a few
    steps; its first weights are the checkpoint's, its rows the HF vocabulary's ids."""
    torch = pytest.importorskip("torch", reason="parity tests need the test extra (torch==2.13.0)")
    transformers = pytest.importorskip("transformers", reason="parity tests need the test extra")
    from research.models.convert import load_bert

    vocab = load_trained(mlm_workdir).vocab
    tokens = sorted(vocab.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "vocab.txt").write_text("".join(t + "\n" for t, _ in tokens))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertForMaskedLM(cfg).eval().save_pretrained(hf_dir, safe_serialization=True)
    run = parse(_config(data_dir, f"hf:{hf_dir}"))
    task = seq2seq.Seq2seqTask()
    data = task.build_data(run)
    assert data.vocab.encode("中国人民") == vocab.encode("中国人民")
    mcfg = task.model_config(run, vocab_size=data.vocab_size, max_length=data.max_length)
    assert mcfg.positions == "learned" and mcfg.num_segments == 2
    model = task.build_model(run, mcfg, rngs=nnx.Rngs(params=1, dropout=2))
    task.initialize(run, model)
    got, want = _params(model), _params(load_bert(hf_dir))
    for k in ("embed/token/embedding", "layers/0/attn/q/kernel"):
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    summary = loop.train_and_evaluate(run, str(tmp_path / "wd"))
    assert np.isfinite(summary.final_train_loss) and "beam1_rougeL" in summary.eval
