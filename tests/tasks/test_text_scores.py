"""`text_scores`: Chinese on characters (values by hand); English and id strings as before."""

import math

import numpy as np
import pytest

from research.tasks.seq2seq.metrics import text_scores, text_units


def test_units_are_cjk_characters_and_words():
    assert text_units("2019年NLP会议, 在北京。") == [
        "2019",
        "年",
        "nlp",
        "会",
        "议",
        ",",
        "在",
        "北",
        "京",
        "。",
    ]


def test_kana_and_hangul_are_scored_per_character_as_han_is():
    """They fell outside the CJK ranges and each run became one word."""
    assert text_units("ひらがなカタ 한국어 中文") == [*"ひらがなカタ", *"한국어", "中", "文"]


def test_chinese_scores_against_hand_counts():
    hyps, refs = ["我爱北京天安门", "上海天气"], ["我爱北京", "上海的天气很好"]
    got = text_scores(hyps, refs)
    # Pair 1: 7 vs 4 characters, LCS = 4 -> P 4/7, R 1, F 8/11; bigrams 3 of 6 match -> P 1/2,
    # R 1, F 2/3. Pair 2: 4 vs 7 characters, LCS 上海天气 = 4 -> F 8/11; bigrams 上海, 天气
    # match -> P 2/3, R 1/3, F 4/9.
    assert got["rougeL"] == pytest.approx(100 * 8 / 11)
    assert got["rouge1"] == pytest.approx(100 * 8 / 11)
    assert got["rouge2"] == pytest.approx(100 * (2 / 3 + 4 / 9) / 2)
    # Sentence BLEU with smoothing 1 (0.1 / count for an order without matches):
    # pair 1: p = 4/7, 3/6, 2/5, 1/4, no brevity penalty; pair 2: p = 1, 2/3, 0.1/2, 0.1/1,
    # brevity penalty exp(1 - 7/4).
    s1 = (4 / 7 * 3 / 6 * 2 / 5 * 1 / 4) ** 0.25
    s2 = math.exp(1 - 7 / 4) * (1 * 2 / 3 * 0.05 * 0.1) ** 0.25
    assert got["sentence_bleu"] == pytest.approx(100 * (s1 + s2) / 2)
    # Corpus BLEU: matches / counts summed over both, n = 1..4: 8/11, 5/9, 2/7, 1/5;
    # 11 hypothesis and 11 reference characters, so no brevity penalty.
    assert got["bleu"] == pytest.approx(100 * (8 / 11 * 5 / 9 * 2 / 7 * 1 / 5) ** 0.25, rel=1e-6)


def test_empty_hypothesis_scores_zero_and_the_old_scorer_deleted_chinese():
    from rouge_score import rouge_scorer

    got = text_scores(["", "北京"], ["北京", "北京"])
    assert got["rougeL"] == pytest.approx(50)
    # nltk's smoothing 1 as in the note: a 2-character match has no 3- or 4-grams, each of those
    # orders counts 0.1 / 1, so it scores (1 * 1 * 0.1 * 0.1) ** (1/4), not 1.
    assert got["sentence_bleu"] == pytest.approx(100 * 0.01**0.25 / 2)
    # The defect: rouge-score's default tokenizer keeps only [a-z0-9], so Chinese scored 0.
    assert rouge_scorer.RougeScorer(["rougeL"]).score("北京", "北京")["rougeL"].fmeasure == 0
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        text_scores(["a", "b"], ["a"])


@pytest.mark.parametrize("kind", ["ids", "english"])
def test_english_and_id_strings_score_as_before(kind):
    """Previously: rouge-score's default tokenizer, sacrebleu 13a (text) or none (ids)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    rng = np.random.default_rng(0)
    words = ["The", "cat", "sat", "on", "a", "mat", "dog", "Ran", "far", "42", "7"]
    refs, hyps = [], []
    for _ in range(30):
        n = rng.integers(3, 12)
        ref = rng.integers(3, 40, n) if kind == "ids" else rng.choice(words, n)
        hyp = ref.copy()
        hyp[rng.random(n) < 0.3] = ref[0]
        hyp = hyp[: rng.integers(1, n + 1)]
        refs.append(" ".join(map(str, ref)))
        hyps.append(" ".join(map(str, hyp)))
    got = text_scores(hyps, refs)
    scorer = rouge_scorer.RougeScorer(["rougeL", "rouge1", "rouge2"])
    old = [scorer.score(r, h) for h, r in zip(hyps, refs, strict=True)]
    for name in ("rougeL", "rouge1", "rouge2"):
        assert got[name] == pytest.approx(100 * np.mean([s[name].fmeasure for s in old]))
    tokenize = "none" if kind == "ids" else "13a"
    old_bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score
    assert got["bleu"] == pytest.approx(old_bleu)
