"""BERT WordPiece vocabularies (`tokenizers` library): a character-level one built from our text,
or a Hugging Face one read from a model directory, behind one class, `BertVocab`.

The character-level vocabulary follows bert4keras and Google's Chinese BERT: the BERT normalizer
(lower case, accents stripped, spaces around CJK characters), then every character is its own
token; whitespace is dropped; characters outside the vocabulary become [UNK]. Ids: [PAD] 0,
[UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4 (bert4keras order), then the characters, most frequent first.
A Hugging Face vocabulary keeps its own ids; `BertVocab` looks the special tokens up by name.
"""

import collections
import hashlib
import json
import os
import pathlib
import re
import unicodedata
from collections.abc import Iterable

import jax
from jax.experimental import multihost_utils
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.implementations import BertWordPieceTokenizer
from tokenizers.models import WordPiece

from research.data import DataError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _normalizer():
    # Google's Chinese BERT (do_lower_case=True): NFD + accents stripped, lower case.
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )


def _char_pre_tokenizer():
    # Whitespace separates and is dropped; then each remaining character is its own pre-token.
    return pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), "isolated")]
    )


_CHAR_STATE = [_normalizer().__getstate__(), _char_pre_tokenizer().__getstate__()]


def build_char_tokenizer(
    texts: Iterable[str], *, vocab_size: int, min_frequency: int = 1
) -> Tokenizer:
    """A character-level WordPiece tokenizer of `texts` (str or UTF-8 bytes).

    Keeps the (vocab_size - 5) most frequent characters seen at least `min_frequency` times,
    after normalisation (ties broken by code point, so the vocabulary is the same on every
    machine); the rest map to [UNK]. `vocab_size` is an upper bound: a small corpus gives fewer.
    The characters are counted here rather than by `WordPieceTrainer`: that trainer keeps every
    character of the corpus whatever vocab_size says (min_frequency applies to merges only), and
    cuts ties in a hash-map order that varies between runs.
    """
    if vocab_size <= len(SPECIALS):
        raise DataError(f"vocab_size={vocab_size}: must exceed the {len(SPECIALS)} special tokens")
    normalizer, pre_tokenizer = _normalizer(), _char_pre_tokenizer()
    counts = collections.Counter()
    for text in texts:
        counts.update(normalizer.normalize_str(_str(text)))
    # Whitespace (as the pre-tokenizer defines it) never becomes a token.
    chars = [
        c for c, n in counts.items() if n >= min_frequency and pre_tokenizer.pre_tokenize_str(c)
    ]
    chars.sort(key=lambda c: (-counts[c], c))
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    vocab.update((c, len(SPECIALS) + i) for i, c in enumerate(chars[: vocab_size - len(SPECIALS)]))
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.add_special_tokens(list(SPECIALS))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    # As in Hugging Face BERT files: encode(text) alone adds [CLS] ... [SEP].
    tok.post_processor = processors.BertProcessing(
        ("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"])
    )
    tok.decoder = decoders.WordPiece()
    return tok


def load_hf_tokenizer(path) -> Tokenizer:
    """WordPiece tokenizer of a Hugging Face directory: tokenizer.json, else vocab.txt (with
    do_lower_case, strip_accents and tokenize_chinese_chars from tokenizer_config.json, defaults
    as BertTokenizer's). encode(text) adds [CLS]/[SEP]."""
    from tokenizers.implementations import BertWordPieceTokenizer

    path = pathlib.Path(path)
    if (path / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        # Some files pad every sequence to a fixed length, or cut it (all-MiniLM-L6-v2's at 128
        # tokens): batching pads, and each pipeline cuts to its own seq_len.
        tok.no_padding()
        tok.no_truncation()
        return tok
    if not (path / "vocab.txt").is_file():
        raise FileNotFoundError(f"neither tokenizer.json nor vocab.txt in {path}")
    cfg = {}
    if (path / "tokenizer_config.json").is_file():
        cfg = json.loads((path / "tokenizer_config.json").read_text())
    # The implementation class only assembles a Tokenizer (normalizer, pre-tokenizer, [CLS]/[SEP]
    # post-processor); keep that object. BertTokenizer's options, with its defaults (strip_accents
    # None: follow lowercasing).
    return BertWordPieceTokenizer(
        str(path / "vocab.txt"),
        lowercase=cfg.get("do_lower_case", True),
        strip_accents=cfg.get("strip_accents"),
        handle_chinese_chars=cfg.get("tokenize_chinese_chars", True),
    )._tokenizer


def _str(text) -> str:
    return text.decode("utf-8") if isinstance(text, bytes) else text  # tfds Text is bytes


def _is_cjk(ch: str) -> bool:
    """A CJK ideograph, as BERT's tokenizer defines it (`_is_chinese_char`)."""
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class BertVocab:
    """A BERT WordPiece tokenizer with the ids tasks need (a `research.data.vocab.Vocab`).

    encode(text) -> ids without [CLS]/[SEP]; encode_words(words) -> (ids, word_index) for whole-
    word masking; decode(ids) -> text. pad_id, unk_id, cls_id, sep_id, mask_id are looked up by
    name; ids from `first_regular_id` up to vocab_size() are ordinary tokens (MLM draws random
    replacements there: in Hugging Face vocabularies [unused*] tokens come before the specials).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        ids = {token: tokenizer.token_to_id(token) for token in SPECIALS}
        missing = [token for token, i in ids.items() if i is None]
        if missing:
            raise DataError(f"the WordPiece vocabulary lacks {', '.join(missing)}")
        self._ids = ids
        added = tokenizer.get_added_tokens_decoder()
        self._special = frozenset(ids.values()) | {i for i, t in added.items() if t.special}
        self.first_regular_id = max(ids.values()) + 1
        # A character vocabulary (ours) has no "##" continuation pieces: its tokens are glued.
        self._spaced = any(t.startswith("##") for t in tokenizer.get_vocab())
        # Our character pipeline maps each character on its own (the BERT normalizer works
        # character by character), so its ids are memoised per character: ~20x faster than
        # `Tokenizer.encode`. Characters that could start an added token ("[MASK]") or that
        # NFD may reorder (combining marks) send the text through the tokenizer instead.
        pipeline = (tokenizer.normalizer, tokenizer.pre_tokenizer)
        ours = None not in pipeline and [x.__getstate__() for x in pipeline] == _CHAR_STATE
        self._memo = {} if ours else None
        self._unsafe = {t.content[0] for t in added.values() if t.content}

    pad_id = property(lambda self: self._ids["[PAD]"])
    unk_id = property(lambda self: self._ids["[UNK]"])
    cls_id = property(lambda self: self._ids["[CLS]"])
    sep_id = property(lambda self: self._ids["[SEP]"])
    mask_id = property(lambda self: self._ids["[MASK]"])
    bos_id = eos_id = None  # BERT starts a row with [CLS] and separates with [SEP]

    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(self, text) -> list[int]:
        """Token ids of `text` (str or UTF-8 bytes), without [CLS]/[SEP]."""
        text = _str(text)
        ids = None if self._memo is None else self._char_ids(text)
        return self.tokenizer.encode(text, add_special_tokens=False).ids if ids is None else ids

    def _char_ids(self, text: str) -> list[int] | None:
        """The ids of `text` from the per-character memo; None if a character is unsafe."""
        out, memo = [], self._memo
        for c in text:
            ids = memo.get(c)
            if ids is None:
                if c in self._unsafe or unicodedata.combining(c):
                    return None
                ids = memo[c] = self.tokenizer.encode(c, add_special_tokens=False).ids
            out += ids
        return out

    def encode_words(self, words: list[str]) -> tuple[list[int], list[int]]:
        """(ids, word_index): the tokens of the words in order, and for each token the index of
        the word it came from (all the characters of a word share it)."""
        if not words:
            return [], []
        if self._memo is not None:
            pieces = [self._char_ids(w) for w in words]
            if all(p is not None for p in pieces):
                return [i for p in pieces for i in p], [w for w, p in enumerate(pieces) for _ in p]
        enc = self.tokenizer.encode(list(words), is_pretokenized=True, add_special_tokens=False)
        return enc.ids, enc.word_ids

    def decode(self, ids) -> str:
        """Text of `ids`, specials skipped. "##" pieces join the previous token; no space is put
        next to a CJK character; a character vocabulary glues every token (its spaces are gone)."""
        out = ""
        for i in ids:
            i = int(i)
            if i in self._special:
                continue
            token = self.tokenizer.id_to_token(i)
            if token is None:
                raise DataError(f"token id {i} is not in the vocabulary of {self.vocab_size()}")
            if token.startswith("##") and len(token) > 2:
                out += token[2:]
            elif out and self._spaced and not (_is_cjk(out[-1]) or _is_cjk(token[0])):
                out += " " + token
            else:
                out += token
        return out

    def to_json(self) -> str:
        """The tokenizer.json text (Hugging Face format)."""
        return self.tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str) -> "BertVocab":
        return cls(Tokenizer.from_str(text))

    def files(self) -> dict[str, bytes]:
        """What `research.data.vocab.save` writes: tokenizer.json and vocab.json."""
        info = json.dumps({"kind": "wordpiece"}, indent=1).encode()
        return {"tokenizer.json": self.to_json().encode(), "vocab.json": info}

    @classmethod
    def from_files(cls, directory: pathlib.Path) -> "BertVocab":
        """The vocabulary `files` wrote into `directory`."""
        return cls.from_json((directory / "tokenizer.json").read_text(encoding="utf-8"))

    @classmethod
    def from_pretrained_dir(cls, path) -> "BertVocab":
        """The vocabulary of a Hugging Face BERT directory (see `load_hf_tokenizer`)."""
        return cls(load_hf_tokenizer(path))


def texts_digest(texts: Iterable[str]) -> str:
    """The first 12 hex digits of the sha256 of `texts` (each ended by a NUL): in the name of a
    vocabulary built from a local file, so an edited file builds a new one instead of reusing
    the old (whose characters the new text may lack: [UNK])."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:12]


def is_local(source: str) -> bool:
    """A data.source naming a file of the user's (jsonl:PATH, lccc:PATH, ...), not a dataset
    with a version (a name, or tfds:NAME)."""
    return ":" in source and not source.startswith("tfds:")


def char_vocab_path(data_dir, name: str, vocab_size: int) -> pathlib.Path:
    """data_dir/tokenizers/{name as a file name}-char{vocab_size}.json"""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    directory = pathlib.Path(os.path.expanduser(data_dir)) / "tokenizers"
    return directory / f"{slug}-char{vocab_size}.json"


def train_or_load(texts_fn, path, *, vocab_size: int, min_frequency: int = 1) -> BertVocab:
    """The character vocabulary saved at `path` (tokenizer.json format), built first if missing.

    texts_fn() yields the texts (called on process 0 only, only when building). The file is
    written to a temporary name and renamed, so a crash never leaves a half-written vocabulary;
    in a multi-process run the others wait at a barrier, then all read the same file.
    """
    path = pathlib.Path(path)
    if jax.process_index() == 0 and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tok = build_char_tokenizer(texts_fn(), vocab_size=vocab_size, min_frequency=min_frequency)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tok.save(str(tmp))
        os.replace(tmp, path)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"wordpiece:{path.name}")
    return BertVocab(Tokenizer.from_file(str(path)))


def train_english_or_load(texts_fn, path: pathlib.Path, vocab_size: int) -> BertVocab:
    """An English WordPiece vocabulary (BERT-uncased conventions) trained on texts_fn(), saved
    at `path` (written once, then read, so every run of a data_dir shares it)."""
    if jax.process_index() == 0 and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tok = BertWordPieceTokenizer(lowercase=True)
        tok.train_from_iterator(
            texts_fn(),
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=list(SPECIALS),
        )
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # runs sharing a data_dir
        tok.save(str(tmp))
        tmp.replace(path)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"chat-vocab:{path.name}")
    return BertVocab(Tokenizer.from_file(str(path)))
