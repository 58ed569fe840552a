"""The vocabulary interface (`Vocab`), and a run's vocabulary saved beside its checkpoints, so a
workdir decodes on any machine.

Three vocabularies implement `Vocab`: a sentencepiece model (`research.data.tokenizer.
SentencePieceVocab`: pad, bos, eos), a BERT WordPiece vocabulary (`research.data.wordpiece.
BertVocab`: pad, [CLS], [SEP]) and the seq2seq ids (`research.data.sources.Seq2seqVocab`: pad,
bos, eos, and its tokenizer's [CLS] / [SEP]; `encode` takes text, `encode_record` a {source,
target} record).

Files in the workdir: `vocab.json` (which kind, and the special ids of a seq2seq vocabulary),
and `tokenizer.model` (the sentencepiece model, when the data has text) or `tokenizer.json` (a
BERT WordPiece vocabulary, Hugging Face format). MQAR has neither: its tokens are integers.
"""

import json
import pathlib
from collections.abc import Sequence
from typing import Protocol

from research.data.sources import Seq2seqVocab
from research.data.tokenizer import SentencePieceVocab
from research.data.wordpiece import BertVocab


class Vocab(Protocol):
    """Token ids <-> text, and the special ids (None where the vocabulary has no such token)."""

    pad_id: int | None
    bos_id: int | None
    eos_id: int | None
    cls_id: int | None
    sep_id: int | None

    def vocab_size(self) -> int:
        """The number of ids (the model's embedding rows)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`."""
        ...

    def files(self) -> dict[str, bytes]:
        """File name -> contents that `save` writes (vocab.json names the kind)."""
        ...


# vocab.json's kind -> the class whose `from_files` reads the directory back.
KINDS = {"sentencepiece": SentencePieceVocab, "wordpiece": BertVocab, "seq2seq": Seq2seqVocab}


def save(directory, vocab: Vocab | None) -> None:
    """Write `vocab` (its `files`; None: a vocab.json of kind none)."""
    directory = pathlib.Path(directory)
    files = {"vocab.json": json.dumps({"kind": "none"}, indent=1).encode()}
    for name, data in (files if vocab is None else vocab.files()).items():
        _write(directory / name, data)


def load(directory) -> Vocab | None:
    """The vocabulary `save` wrote (None for kind none)."""
    directory = pathlib.Path(directory)
    kind = json.loads((directory / "vocab.json").read_text())["kind"]
    return None if kind == "none" else KINDS[kind].from_files(directory)


def _write(path: pathlib.Path, data: bytes) -> None:
    """Write via a temporary file and rename: a crash never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
