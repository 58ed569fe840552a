"""SentencePiece tokenizers trained on a split's text on first use, saved beside the data, reused.

In a multi-process run, process 0 trains while the others wait at a barrier, then all load the
same file, so every process tokenizes identically.
"""

import json
import os
import pathlib
import re
from collections.abc import Iterable

import jax
import sentencepiece as spm
from jax.experimental import multihost_utils

from research.data import DataError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def _lines(texts: Iterable[str], max_lines: int):
    n = 0
    for text in texts:
        text = text.decode("utf-8") if isinstance(text, bytes) else text  # tfds Text is bytes
        for line in text.split("\n"):
            if line.strip():
                yield line
                n += 1
                if n >= max_lines:
                    return


def train_or_load(texts_fn, path: str, *, vocab_size: int, max_lines: int = 300_000):
    """Returns a SentencePieceProcessor for `path` (a .model file), training it if missing.

    texts_fn() yields the training texts (only called on process 0, only when training). Code
    settings: whitespace kept as is (indentation matters), byte fallback for unseen characters,
    "\\n" a single piece, digits split. Ids: pad 0, unk 1, bos 2, eos 3. `vocab_size` is an upper
    bound: a corpus too small for it gets fewer pieces (read the size from the processor).
    """
    model = pathlib.Path(path)
    if jax.process_index() == 0 and not model.is_file():
        model.parent.mkdir(parents=True, exist_ok=True)
        tmp_prefix = str(model.with_suffix("")) + f".tmp{os.getpid()}"
        try:
            _train(texts_fn, tmp_prefix, vocab_size, max_lines)
        except RuntimeError as e:
            needed = re.search(r"(\d+) vs (\d+)", str(e))
            if needed and "smaller than required" in str(e):
                raise DataError(
                    f"data.vocab_size={vocab_size} is too small for this corpus: sentencepiece "
                    f"needs at least {needed.group(2)} (256 byte pieces, specials, characters)"
                ) from None
            raise
        # Rename last, so a crash never leaves a half-written model that later runs would trust.
        os.replace(tmp_prefix + ".model", model)
        os.remove(tmp_prefix + ".vocab")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"sentencepiece:{model.name}")
    return spm.SentencePieceProcessor(model_file=str(model))


def _train(texts_fn, tmp_prefix: str, vocab_size: int, max_lines: int):
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(texts_fn(), max_lines),
        model_prefix=tmp_prefix,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        split_digits=True,
        user_defined_symbols=["\n"],
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
        hard_vocab_limit=False,  # a small corpus may support fewer pieces; the model reads the size
    )


class SentencePieceVocab:
    """A sentencepiece model as a `research.data.vocab.Vocab`: pad, bos and eos ids (this
    module's PAD_ID, BOS_ID, EOS_ID), no [CLS] / [SEP]."""

    pad_id, bos_id, eos_id, cls_id, sep_id = PAD_ID, BOS_ID, EOS_ID, None, None

    def __init__(self, processor: spm.SentencePieceProcessor):
        self.processor = processor

    def vocab_size(self) -> int:
        return self.processor.vocab_size()

    def encode(self, text) -> list[int]:
        """Token ids of `text` (str or UTF-8 bytes)."""
        return self.processor.encode(text)

    def decode(self, ids) -> str:
        return self.processor.decode([int(i) for i in ids])

    def files(self) -> dict[str, bytes]:
        """What `research.data.vocab.save` writes: the model and vocab.json."""
        info = json.dumps({"kind": "sentencepiece"}, indent=1).encode()
        return {"tokenizer.model": self.processor.serialized_model_proto(), "vocab.json": info}

    @classmethod
    def from_files(cls, directory: pathlib.Path) -> "SentencePieceVocab":
        """The vocabulary `files` wrote into `directory`."""
        proto = (directory / "tokenizer.model").read_bytes()
        return cls(spm.SentencePieceProcessor(model_proto=proto))
