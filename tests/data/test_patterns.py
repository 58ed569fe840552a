"""PET patterns: slot positions, truncation of the text only, verbalizer ids, one-line errors."""

import dataclasses

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from research.data import patterns
from research.data.patterns import SENTIMENT_PATTERNS, Pattern

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CHARS = "很不满意。，总体来说这家店菜好难吃服务差"
TEXT = "这家店菜好吃"  # 6 characters, one token each


class CharVocab:
    """Stand-in for the data helper's vocabulary (same methods): a BERT-style WordPiece
    tokenizer over single characters, so these tests do not depend on that code."""

    def __init__(self, chars=CHARS):
        vocab = {t: i for i, t in enumerate((*SPECIALS, *dict.fromkeys(chars)))}
        self.tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        self.tok.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True)
        self.tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = range(5)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()


VOCAB = CharVocab()


def _tokens(ids):
    return "".join(VOCAB.tok.id_to_token(int(i)) for i in ids)


def test_prefix_pattern_puts_the_slot_before_the_text():
    ids, positions = patterns.encode(SENTIMENT_PATTERNS[0], TEXT, VOCAB, max_length=32)
    assert ids.dtype == np.int32 and positions.dtype == np.int32
    assert _tokens(ids) == "[CLS][MASK]满意。这家店菜好吃[SEP]"
    assert positions.tolist() == [1]


def test_suffix_pattern_puts_the_slot_after_the_text():
    ids, positions = patterns.encode(SENTIMENT_PATTERNS[1], TEXT, VOCAB, max_length=32)
    assert _tokens(ids) == "[CLS]这家店菜好吃总体来说[MASK]满意。[SEP]"
    assert positions.tolist() == [1 + 6 + 4]


@pytest.mark.parametrize(
    ("pattern", "max_length", "expected", "slots"),
    [
        (SENTIMENT_PATTERNS[0], 9, "[CLS][MASK]满意。这家店[SEP]", [1]),
        (SENTIMENT_PATTERNS[1], 12, "[CLS]这家总体来说[MASK]满意。[SEP]", [7]),
        (SENTIMENT_PATTERNS[1], 11, "[CLS]这总体来说[MASK]满意。[SEP]", [6]),
    ],
)
def test_only_the_text_is_truncated(pattern, max_length, expected, slots):
    ids, positions = patterns.encode(pattern, TEXT, VOCAB, max_length=max_length)
    assert len(ids) == max_length
    assert _tokens(ids) == expected
    assert positions.tolist() == slots
    assert (ids[positions] == VOCAB.mask_id).all()


def test_several_slots_contiguous_or_not():
    apart = Pattern("服务[MASK]，菜[MASK]吃。{text}", ("差难", "好好"))
    ids, positions = patterns.encode(apart, TEXT, VOCAB, max_length=32)
    assert _tokens(ids) == "[CLS]服务[MASK]，菜[MASK]吃。这家店菜好吃[SEP]"
    assert positions.tolist() == [3, 6]
    np.testing.assert_array_equal(
        patterns.verbalizer_ids(apart, VOCAB),
        [[VOCAB.token_to_id(c) for c in w] for w in apart.verbalizer],
    )
    together = Pattern("{text}总体来说[MASK][MASK]。", ("难吃", "好吃"))
    _, positions = patterns.encode(together, TEXT, VOCAB, max_length=32)
    assert together.num_slots == 2 and positions.tolist() == [11, 12]


def test_verbalizer_ids_of_the_sentiment_patterns():
    for pattern in SENTIMENT_PATTERNS:
        ids = patterns.verbalizer_ids(pattern, VOCAB)
        assert ids.dtype == np.int32
        assert ids.tolist() == [[VOCAB.token_to_id("不")], [VOCAB.token_to_id("很")]]
    prefix, suffix = SENTIMENT_PATTERNS
    assert prefix.template.startswith("[MASK]") and suffix.template.startswith("{text}")


def test_patterns_are_frozen_values():
    pattern = Pattern("[MASK]满意。{text}", ["不", "很"])  # a list becomes a tuple
    assert pattern == SENTIMENT_PATTERNS[0] and hash(pattern) == hash(SENTIMENT_PATTERNS[0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        pattern.template = "{text}"


def _one_line(err):
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("template", "verbalizer", "match"),
    [
        ("满意。{text}", ("不", "很"), r"template '满意。\{text\}' has no \[MASK\] slot"),
        ("[MASK]满意。", ("不", "很"), r"must contain \{text\} exactly once, found 0"),
        ("{text}[MASK]{text}", ("不", "很"), r"must contain \{text\} exactly once, found 2"),
        (None, ("不", "很"), "template must be a str, got None"),
        ("[MASK]{text}", (), r"verbalizer \(\) is empty; give one word per label"),
        ("[MASK]{text}", "不很", "verbalizer '不很' must be a tuple of words"),
        ("[MASK]{text}", None, "verbalizer None must be a tuple of words"),
        ("[MASK]{text}", ("不", " "), r"verbalizer word ' ' \(label 1\) must be a non-empty str"),
        ("[MASK]{text}", ("很", "很"), r"verbalizer \('很', '很'\) repeats a word"),
    ],
)
def test_bad_patterns_raise_one_line(template, verbalizer, match):
    with pytest.raises(ValueError, match=match) as err:
        Pattern(template, verbalizer)
    _one_line(err)


@pytest.mark.parametrize(
    ("verbalizer", "match"),
    [
        (
            ("不", "很好"),
            r"word '很好' \(label 1\) is 2 tokens but template .* has 1 \[MASK\] slots",
        ),
        (
            ("不", "超"),
            r"word '超' \(label 1\) is not in the vocabulary \(it tokenizes to \[UNK\]\)",
        ),
    ],
)
def test_verbalizer_must_fit_the_slots_and_the_vocabulary(verbalizer, match):
    with pytest.raises(ValueError, match=match) as err:
        patterns.verbalizer_ids(Pattern("[MASK]满意。{text}", verbalizer), VOCAB)
    _one_line(err)


def test_labels_outside_the_verbalizer():
    patterns.check_labels(np.array([0, 1, 1]), SENTIMENT_PATTERNS[0])
    with pytest.raises(
        ValueError,
        match=r"labels \[-1, 2\] are outside the verbalizer "
        r"\('不', '很'\): allowed 0..1",
    ) as err:
        patterns.check_labels([0, 2, -1, 2], SENTIMENT_PATTERNS[0])
    _one_line(err)
    with pytest.raises(ValueError, match="labels must be ints, got dtype float64"):
        patterns.check_labels([0.0, 1.0], SENTIMENT_PATTERNS[0])


def test_max_length_must_leave_room_for_the_text():
    with pytest.raises(
        ValueError,
        match=r"max_length=10 leaves no room for the text: pattern "
        r"'\{text\}总体来说\[MASK\]满意。' takes 10 tokens",
    ) as err:
        patterns.encode(SENTIMENT_PATTERNS[1], TEXT, VOCAB, max_length=10)
    _one_line(err)


@pytest.mark.parametrize("natural_mix", [False, True])
def test_semi_supervised_rows_mix_at_the_configured_share(natural_mix):
    """Unlabeled rows make up pet.unlabeled_share of the training rows, or with natural_mix the
    two lists' natural proportion (the reference's union of both lists)."""
    from research.data import cloze
    from research.tasks.pet import PetConfig, mix_share

    labeled = [{"text": "这家店菜好吃", "label": i % 2} for i in range(10)]
    unlabeled = [{"text": "服务差难吃", "label": -1} for _ in range(90)]
    cfg = PetConfig(unlabeled=True, unlabeled_share=0.25, natural_mix=natural_mix)
    share = mix_share(cfg, len(labeled), len(unlabeled))
    assert share == (0.9 if natural_mix else 0.25)
    pattern = SENTIMENT_PATTERNS[0]
    kw = dict(seq_len=16, batch_size=20, seed=0, rate=0.0, unlabeled_share=share)
    it = cloze.train_iterator(labeled, unlabeled, VOCAB, pattern, **kw)
    rows = np.concatenate([next(it)["inputs"] for _ in range(40)])  # 800 rows
    slot = patterns.encode(pattern, TEXT, VOCAB, max_length=16)[1][0]
    unlabeled_rows = int(np.sum(rows[:, slot] != VOCAB.mask_id))  # labeled rows: [MASK] there
    std = (len(rows) * share * (1 - share)) ** 0.5
    assert abs(unlabeled_rows - len(rows) * share) <= 4 * std + 1, (unlabeled_rows, share)
