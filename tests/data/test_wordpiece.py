"""Character-level WordPiece vocabularies on People's Daily, checked against plain-Python counts
and against Hugging Face's BertTokenizer reading the same vocab.txt."""

import collections
import json
import unicodedata

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordPiece

from research.data import DataError, chinese, wordpiece
from research.data import vocab as vocab_io
from research.data.wordpiece import SPECIALS, BertVocab

VOCAB_SIZE = 2000


@pytest.fixture(scope="module")
def sentences():
    return chinese.peoples_daily_sentences()[:3000]


@pytest.fixture(scope="module")
def vocab(sentences):
    texts = [" ".join(words) for words in sentences]
    return BertVocab(wordpiece.build_char_tokenizer(texts, vocab_size=VOCAB_SIZE))


def _normalized(text: str) -> str:
    """BERT's uncased normalisation: lower case, NFD, combining marks removed."""
    text = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in text if unicodedata.category(c) != "Mn")


def _is_cjk(c: str) -> bool:
    return 0x4E00 <= ord(c) <= 0x9FFF or 0x3400 <= ord(c) <= 0x4DBF


def test_char_vocab_keeps_the_most_frequent_characters(sentences, vocab):
    counts = collections.Counter(c for s in sentences for w in s for c in _normalized(w))
    assert len(counts) > VOCAB_SIZE  # the cut is real: rare characters are left out
    want = sorted(counts, key=lambda c: (-counts[c], c))[: VOCAB_SIZE - len(SPECIALS)]
    tokens = [vocab.tokenizer.id_to_token(i) for i in range(vocab.vocab_size())]
    assert tokens == [*SPECIALS, *want]
    specials = (vocab.pad_id, vocab.unk_id, vocab.cls_id, vocab.sep_id, vocab.mask_id)
    assert specials == (0, 1, 2, 3, 4)
    assert vocab.first_regular_id == 5 and vocab.vocab_size() == VOCAB_SIZE
    rare = sorted(counts, key=lambda c: (counts[c], c))[0]
    assert vocab.token_to_id(rare) is None and vocab.encode(rare) == [vocab.unk_id]


def test_one_token_per_character_and_the_word_of_each(sentences, vocab):
    for words in sentences[:500]:
        chars = [c for w in words for c in _normalized(w)]
        want = [
            vocab.token_to_id(c) if vocab.token_to_id(c) is not None else vocab.unk_id
            for c in chars
        ]
        assert vocab.encode(" ".join(words)) == want
        assert vocab.encode("".join(words).encode("utf-8")) == want  # tfds gives bytes
        ids, word_index = vocab.encode_words(words)
        assert ids == want
        assert word_index == [i for i, w in enumerate(words) for _ in _normalized(w)]
    assert vocab.encode_words([]) == ([], [])


def test_decode_inverts_encode_on_known_characters(sentences, vocab):
    checked = 0
    for words in sentences:
        text = _normalized("".join(words))
        if all(vocab.token_to_id(c) is not None for c in text):
            assert vocab.decode(vocab.encode(text)) == text
            checked += 1
    assert checked > 100
    ids = [vocab.cls_id, *vocab.encode("中国"), vocab.sep_id, vocab.pad_id]
    assert vocab.decode(ids) == "中国"  # specials skipped
    with pytest.raises(DataError, match=f"token id {VOCAB_SIZE + 7} is not in the vocabulary"):
        vocab.decode([VOCAB_SIZE + 7])


def test_same_ids_as_hugging_face_bert_tokenizer(tmp_path, sentences, vocab):
    """Our vocabulary written as vocab.txt: transformers' BertTokenizer (the reference WordPiece
    implementation) gives our ids on CJK text, and `from_pretrained_dir` gives its ids on all."""
    transformers = pytest.importorskip("transformers", reason="needs the test extra")
    tokens = [vocab.tokenizer.id_to_token(i) for i in range(vocab.vocab_size())]
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    hf = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=True)
    loaded = BertVocab.from_pretrained_dir(tmp_path)
    cjk = 0
    for words in sentences[:300]:
        text = "".join(words)
        ref = hf(text, add_special_tokens=False)["input_ids"]
        assert loaded.encode(text) == ref
        # BertTokenizer keeps digit and Latin runs whole; on ideographs and punctuation it
        # splits every character, as the character vocabulary does.
        if all(_is_cjk(c) or unicodedata.category(c).startswith("P") for c in text):
            assert vocab.encode(text) == ref
            cjk += 1
    assert cjk > 30
    assert loaded.mask_id == vocab.mask_id and loaded.vocab_size() == vocab.vocab_size()


def test_hugging_face_vocab_ids_are_looked_up_by_name(tmp_path):
    tokens = [
        "[PAD]",
        "[unused1]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "hello",
        "world",
        "##s",
        "中",
        "国",
    ]
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    v = BertVocab.from_pretrained_dir(tmp_path)
    assert (v.pad_id, v.unk_id, v.cls_id, v.sep_id, v.mask_id) == (0, 2, 3, 4, 5)
    assert v.first_regular_id == 6
    ids = v.encode("Hello worlds 中国")
    assert ids == [6, 7, 8, 9, 10]  # no [CLS]/[SEP]
    assert v.tokenizer.encode("Hello").ids == [3, 6, 4]  # the tokenizer itself adds them
    assert v.decode(ids) == "hello worlds中国"
    # tokenizer.json is preferred over vocab.txt.
    (tmp_path / "tokenizer.json").write_text(v.to_json())
    (tmp_path / "vocab.txt").unlink()
    assert BertVocab.from_pretrained_dir(tmp_path).encode("Hello worlds 中国") == ids
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor vocab.txt"):
        BertVocab.from_pretrained_dir(tmp_path / "nowhere")
    bare = Tokenizer(WordPiece({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}, unk_token="[UNK]"))
    with pytest.raises(DataError, match=r"lacks \[MASK\]"):
        BertVocab(bare)
    with pytest.raises(DataError, match="vocab_size=5: must exceed the 5 special tokens"):
        wordpiece.build_char_tokenizer(["中国"], vocab_size=5)


def test_min_frequency_and_a_small_corpus():
    tok = wordpiece.build_char_tokenizer(["aab 中中中 国", "A"], vocab_size=100, min_frequency=2)
    assert [tok.id_to_token(i) for i in range(tok.get_vocab_size())] == [*SPECIALS, "a", "中"]


def test_train_or_load_builds_once_and_the_workdir_copy_loads(tmp_path, sentences):
    texts = [" ".join(words) for words in sentences[:500]]
    calls = []

    def texts_fn():
        calls.append(1)
        return iter(texts)

    path = wordpiece.char_vocab_path(tmp_path / "data", "peoples daily/x", 300)
    assert path == tmp_path / "data" / "tokenizers" / "peoples_daily_x-char300.json"
    v = wordpiece.train_or_load(texts_fn, path, vocab_size=300)
    mtime = path.stat().st_mtime_ns
    again = wordpiece.train_or_load(texts_fn, path, vocab_size=300)
    assert calls == [1] and path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert again.encode(texts[0]) == v.encode(texts[0]) and v.vocab_size() == 300
    json.loads(path.read_text())  # tokenizer.json, readable by Hugging Face
    (tmp_path / "run").mkdir()
    vocab_io.save(tmp_path / "run", v)
    loaded = vocab_io.load(tmp_path / "run")
    assert isinstance(loaded, BertVocab) and loaded.to_json() == v.to_json()
    assert loaded.encode(texts[1]) == v.encode(texts[1])
    assert json.loads((tmp_path / "run" / "vocab.json").read_text()) == {"kind": "wordpiece"}


def test_memoised_character_ids_match_the_tokenizer(sentences, vocab):
    """BertVocab memoises the ids of each character; the tokenizer itself is the reference."""
    odd = [
        "ΟΔΟΣ",
        "e\u0301cole",
        "İstanbul",
        "한국어",
        "a\u3000b",
        "x\x00y",
        "[MASK] 中国",
        "[mask]",
        "ﬁ ①",
        "🙂",
        "Ａ１ｂ",
        "",
    ]
    reviews = [e["text"] for e in chinese.review_examples()[:1000]]
    texts = [" ".join(words) for words in sentences] + reviews + odd
    ref = vocab.tokenizer.encode_batch(texts, add_special_tokens=False)
    assert [vocab.encode(t) for t in texts] == [e.ids for e in ref]
    lists = [*sentences[:1000], odd[:-1], ["中", "[MASK]", "国"]]
    ref = vocab.tokenizer.encode_batch(lists, is_pretokenized=True, add_special_tokens=False)
    assert [vocab.encode_words(w) for w in lists] == [(e.ids, e.word_ids) for e in ref]
    assert len(vocab._memo) > 1000  # the memo served these


@pytest.mark.parametrize(
    "options",
    [
        {"do_lower_case": True},
        {"do_lower_case": True, "strip_accents": False},
        {"do_lower_case": False},
        {"do_lower_case": False, "strip_accents": True},
        {"do_lower_case": True, "tokenize_chinese_chars": False},
    ],
    ids=["lower", "lower-keep-accents", "cased", "cased-strip-accents", "no-cjk-split"],
)
def test_a_vocab_txt_follows_its_tokenizer_config_as_bert_tokenizer_does(tmp_path, options):
    """tokenizer_config.json's do_lower_case, strip_accents and tokenize_chinese_chars give the
    ids transformers' BertTokenizer gives with the same options (accents and ideographs)."""
    transformers = pytest.importorskip("transformers", reason="needs the test extra")
    words = [
        "café",
        "cafe",
        "Café",
        "caf",
        "##é",
        "##e",
        "中",
        "国",
        "中国",
        "naïve",
        "na",
        "##ive",
    ]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(options))
    hf = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), **options)
    ours = BertVocab.from_pretrained_dir(tmp_path)
    for text in ("Café naïve 中国", "cafe CAFÉ 中国中", "naïve"):
        assert ours.encode(text) == hf(text, add_special_tokens=False)["input_ids"], text
