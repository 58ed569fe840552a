"""A run's vocabulary saved beside its checkpoints, so a workdir decodes on any machine.

Files in the workdir: `vocab.json` (which kind, and the special ids of a seq2seq vocabulary),
and `tokenizer.model` (the sentencepiece model, when the data has text) or `tokenizer.json` (a
BERT WordPiece vocabulary, Hugging Face format). MQAR has neither: its tokens are integers.
"""

import json
import pathlib

import sentencepiece as spm

from research.data.sources import Seq2seqVocab
from research.data.wordpiece import BertVocab


def save(directory, vocab) -> None:
    """Write `vocab` (a SentencePieceProcessor, a Seq2seqVocab, a BertVocab or None)."""
    directory = pathlib.Path(directory)
    if isinstance(vocab, BertVocab):
        _write(directory / "tokenizer.json", vocab.to_json().encode())
        _write(directory / "vocab.json", json.dumps({"kind": "wordpiece"}, indent=1).encode())
        return
    tok = vocab.tok if isinstance(vocab, Seq2seqVocab) else vocab
    if tok is not None:
        _write(directory / "tokenizer.model", tok.serialized_model_proto())
    info = {"kind": "none" if vocab is None else "sentencepiece"}
    if isinstance(vocab, Seq2seqVocab):
        info = {
            "kind": "seq2seq",
            "size": vocab.size,
            "pad": vocab.pad,
            "bos": vocab.bos,
            "eos": vocab.eos,
            "keys": list(vocab.keys),
            "text": tok is not None,
        }
    _write(directory / "vocab.json", json.dumps(info, indent=1).encode())


def load(directory):
    """The vocabulary `save` wrote: a SentencePieceProcessor, a Seq2seqVocab, a BertVocab or
    None."""
    directory = pathlib.Path(directory)
    info = json.loads((directory / "vocab.json").read_text())
    if info["kind"] == "wordpiece":
        return BertVocab.from_json((directory / "tokenizer.json").read_text(encoding="utf-8"))
    tok = None
    if info["kind"] == "sentencepiece" or info.get("text"):
        tok = spm.SentencePieceProcessor(model_proto=(directory / "tokenizer.model").read_bytes())
    if info["kind"] == "seq2seq":
        return Seq2seqVocab(
            info["size"], info["pad"], info["bos"], info["eos"], tok, tuple(info["keys"])
        )
    return tok


def _write(path: pathlib.Path, data: bytes) -> None:
    """Write via a temporary file and rename: a crash never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
