import collections

import numpy as np
import pytest

from research.data import DataError, chinese, words


def test_english_words():
    assert words.english_words("I'm fine, THANKS!! 42 cats") == [
        "i'm",
        "fine",
        ",",
        "thanks",
        "!",
        "!",
        "42",
        "cats",
    ]


def test_skipgram_pairs_against_a_loop():
    sentences = [["a", "b", "c", "x", "a"], ["b"], ["c", "a"]]
    vocab = ["a", "b", "c"]  # "x" is out of vocabulary: its pairs go, distances stay
    got = words.skipgram_pairs(sentences, vocab, window=2)
    expected = []
    for s in sentences:
        for i, w in enumerate(s):
            for j in range(max(0, i - 2), min(len(s), i + 3)):
                if j != i and w in vocab and s[j] in vocab:
                    expected.append((vocab.index(w), vocab.index(s[j])))
    assert sorted(map(tuple, got.tolist())) == sorted(expected)
    assert got.dtype == np.int32
    with pytest.raises(DataError, match="window=0"):
        words.skipgram_pairs(sentences, vocab, window=0)


def test_top_words_rank_by_count_then_word():
    sentences = [["b", "a", "c"], ["c", "b", "d"], ["c"]]
    assert words.top_words(sentences, 0) == ["c", "b", "a", "d"]
    assert words.top_words(sentences, 2) == ["c", "b"]


def test_peoples_daily_words_are_the_corpus_segmentation():
    splits = words.word_splits("peoples_daily")
    assert {k: len(v) for k, v in splits.items()} == chinese.PEOPLES_DAILY_COUNTS
    counts = collections.Counter(w for s in splits["train"] for w in s)
    assert counts.most_common(3)[0][0] == "，" and counts["中国"] > 1000


def test_chitchat_is_split_by_conversation():
    conversations = words.chitchat_conversations()
    assert len(conversations) == 7168  # the package's own count
    by_split = collections.Counter(
        chinese.split_of(cid, words.CHITCHAT_PERCENTS) for cid in conversations
    )
    assert 0.87 < by_split["train"] / 7168 < 0.93
    splits = words.word_splits("chitchat")
    n_messages = sum(len(turn) for conv in conversations.values() for turn in conv)
    assert sum(len(v) for v in splits.values()) <= n_messages
    # every message of a held-out conversation is held out, and none of it is in train
    cid, conv = next(
        (k, v)
        for k, v in conversations.items()
        if chinese.split_of(k, words.CHITCHAT_PERCENTS) == "test"
    )
    held = {" ".join(w) for w in splits["test"]}
    texts = [" ".join(words.english_words(m["text"])) for turn in conv for m in turn]
    assert all(t in held for t in texts if t)


def test_unknown_corpus():
    with pytest.raises(DataError, match="unknown word corpus 'wiki'"):
        words.word_splits("wiki")
