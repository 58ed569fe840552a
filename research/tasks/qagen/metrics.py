"""Qagen's evaluation: the question's corpus BLEU-4 and ROUGE-L F1 with the gold answer given
(`research.tasks.seq2seq.metrics.text_scores`), its exact match and the F1 of what it adds to
the passage (`question_scores`: copying cannot score there), and the sampled answers' exact
match and F1 against the passage's gold answers (SQuAD's max over golds); CJK text is scored
per character, other text per word (`text_units`). The trivial baseline is scored on the same
examples.
"""

import collections
import functools
import unicodedata

import jax
import numpy as np

from research.data import qa_rows
from research.sampling.qagen import Generator
from research.tasks.qagen.config import QagenConfig
from research.tasks.seq2seq.metrics import text_scores, text_units


def answer_units(text: str) -> list[str]:
    """SQuAD's answer normalisation on `text_units`: accents stripped (NFKD), punctuation and
    the English articles dropped; CJK characters stay one unit each."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return [t for t in text_units(plain) if t.isalnum() and t not in ("a", "an", "the")]


def span_f1(prediction: str, gold: str) -> float:
    """SQuAD's F1: the bag overlap of `answer_units`."""
    p, g = answer_units(prediction), answer_units(gold)
    common = sum(min(p.count(t), g.count(t)) for t in set(p))
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def answer_scores(predictions: list[list[str]], golds: list[list[str]]) -> dict:
    """Exact match and F1 of every predicted answer against its passage's gold answers (max over
    them), x100, averaged over the predictions; `answers` = predictions per passage."""
    em, f1 = [], []
    for preds, gold in zip(predictions, golds, strict=True):
        for p in preds:
            em.append(max(answer_units(p) == answer_units(g) for g in gold))
            f1.append(max(span_f1(p, g) for g in gold))
    return {
        "answer_em": 100 * float(np.mean(em)) if em else 0.0,
        "answer_f1": 100 * float(np.mean(f1)) if f1 else 0.0,
        "answers": float(np.mean([len(p) for p in predictions])),
    }


def novel_units(text: str, passage: str) -> list[str]:
    """The `text_units` of `text` that are not in `passage` and are not punctuation (a question
    mark is added to every question: it tells nothing of the question asked)."""
    seen = set(text_units(passage))
    return [t for t in text_units(text) if t not in seen and any(c.isalnum() for c in t)]


def question_scores(hyps: list[str], refs: list[str], passages: list[str]) -> dict:
    """What copying the passage cannot score (the rule-made questions are mostly the answer's
    sentence): `question_em`, the % of questions equal to the reference (the same
    `text_units`); `question_novel_f1`, the F1 (x100, averaged over the pairs whose reference
    has any) of the `novel_units` of the question (the interrogative of our rule questions), so
    a copy of the passage scores 0 by construction. A constant guess still scores (the template
    baseline, `template_question`, measures how much): only a model above it has learned which
    question word fits the answer."""
    em, f1 = [], []
    for hyp, ref, passage in zip(hyps, refs, passages, strict=True):
        em.append(text_units(hyp) == text_units(ref))
        h_new, r_new = novel_units(hyp, passage), novel_units(ref, passage)
        if not r_new:
            continue
        common = sum((collections.Counter(h_new) & collections.Counter(r_new)).values())
        f1.append(2 * common / (len(h_new) + len(r_new)))
    return {
        "question_em": 100 * float(np.mean(em)) if em else 0.0,
        "question_novel_f1": 100 * float(np.mean(f1)) if f1 else 0.0,
    }


def question_metrics(hyps: list[str], pairs: list[dict]) -> dict:
    """Questions `hyps` for `pairs` against their gold questions: corpus BLEU-4, ROUGE-L F1 and
    `question_scores` (what copying cannot score)."""
    refs = [e["question"] for e in pairs]
    scores = text_scores(hyps, refs)
    return {"question_bleu4": scores["bleu"], "question_rougeL": scores["rougeL"]} | (
        question_scores(hyps, refs, [e["passage"] for e in pairs])
    )


def baseline_question(ex: dict, word: str = "", ending: str = "") -> str:
    """The trivial baseline: the sentence that holds the answer, the answer removed (replaced by
    `word`, and `ending` appended: `template_question`)."""
    p, a = ex["passage"], ex["answer"]
    start = ex.get("answer_start", p.find(a))
    ends = "。！？；.!?;\n"
    first = max([p.rfind(c, 0, start) for c in ends]) + 1
    last = min([i for i in (p.find(c, start + len(a)) for c in ends) if i >= 0] or [len(p)])
    return (p[first:start] + word + p[start + len(a) : last]).strip() + ending


def question_template(train: list[dict]) -> tuple[str, str]:
    """The template baseline's constant guess, from the train split: (the most frequent run of
    `novel_units` of a question, e.g. 哪里; its most frequent last character if that is
    punctuation, e.g. ？)."""
    words, ends = collections.Counter(), collections.Counter()
    for e in train:
        units = novel_units(e["question"], e["passage"])
        words["".join(units) if all(len(u) == 1 for u in units) else " ".join(units)] += 1
        ends[e["question"][-1:] if not e["question"][-1:].isalnum() else ""] += 1
    words.pop("", None)
    return (words.most_common(1)[0][0] if words else ""), (ends.most_common(1) or [("",)])[0][0]


def template_question(ex: dict, template: tuple[str, str]) -> str:
    """The template baseline: the copy baseline with the answer replaced by the train split's
    most frequent question word, and its most frequent ending (`question_template`). On the
    rule-made questions it is exact whenever the answer is of the most frequent type."""
    return baseline_question(ex, *template)


def by_passage(examples: list[dict], n: int) -> list[tuple[str, list[str]]]:
    """The first n distinct passages with all their gold answers."""
    out: dict[str, list[str]] = {}
    for e in examples:
        if e["passage"] not in out and len(out) == n:
            continue
        out.setdefault(e["passage"], []).append(e["answer"])
    return list(out.items())


def frequent_answers(ranked: list[str], passage: str, k: int, decode=None) -> list[str]:
    """The answer baseline: the first k distinct of `ranked` (train answers, most frequent
    first), each as `decode` gives it back (the model's text through the vocabulary; None:
    as it is), that occur in `passage` (the text the model sees, decoded the same way)."""
    out: list[str] = []
    for a in ranked:
        d = a if decode is None else decode(a)
        if d and d in passage and d not in out:
            out.append(d)
            if len(out) == k:
                break
    return out


def ranked_answers(train: list[dict]) -> list[str]:
    """The train split's answers, most frequent first (the answer baseline)."""
    counts = collections.Counter(e["answer"] for e in train)
    return [a for a, _ in counts.most_common()]


def baseline_metrics(
    vocab,
    held_out: list[dict],
    s: QagenConfig,
    ranked: list[str],
    seq_len: int,
    template: tuple[str, str] = ("", ""),
) -> dict:
    """The trivial baseline on the pairs and passages `evaluate_model` scores: the question is
    the answer's sentence without the answer (`baseline_question`); the answers are the
    num_answers most frequent train answers found in the passage (`frequent_answers`). The
    template baseline (`template_question`) adds its question scores as template_*."""
    out = {}
    pairs = fitting(vocab, held_out, s, s.eval_examples)
    if pairs:
        out |= question_metrics([baseline_question(e) for e in pairs], pairs)
        got = question_metrics([template_question(e, template) for e in pairs], pairs)
        out |= {f"template_{k}": v for k, v in got.items()}
    passages = by_passage(held_out, s.eval_passages)
    if passages:
        budget = qa_rows.passage_budget(
            seq_len, s.answer_len, s.question_len
        )  # the window generation sees: the first tokens
        seen = [vocab.decode(qa_rows.passage_window(vocab, p, -1, 0, budget)) for p, _ in passages]
        # Answers and golds as the model's text comes back (an uncased vocabulary lowercases,
        # a character one drops spaces and unknown characters), as `evaluate_model` scores
        # the model: raw answers were looked for in the decoded window, and matched only where
        # decoding left them unchanged.
        decoded = functools.lru_cache(maxsize=None)(lambda t: vocab.decode(vocab.encode(t)))
        out |= answer_scores(
            [frequent_answers(ranked, p, s.num_answers, decoded) for p in seen],
            [[decoded(a) for a in golds] for _, golds in passages],
        )
    return out


def fitting(vocab, examples, s: QagenConfig, n: int) -> list[dict]:
    """The first n examples whose answer and question fit their budgets."""
    out = []
    for e in examples:
        if len(out) == n:
            break
        if qa_rows.fits(vocab, e, answer_len=s.answer_len, question_len=s.question_len):
            out.append(e)
    return out


def evaluate_model(
    model,
    vocab,
    held_out: list[dict],
    s: QagenConfig,
    seq_len: int,
    *,
    seed: int = 0,
    batch_size: int = 64,
) -> dict:
    """Question BLEU-4 / ROUGE-L (gold answers given) on `s.eval_examples` held-out pairs, and
    answer EM / F1 of k sampled answers on `s.eval_passages` held-out passages."""
    gen = Generator(model, vocab, s, seq_len, batch_size=batch_size)
    out = {}

    def as_decoded(text: str) -> str:
        # the gold text as the model's output comes back (lowercased, accents stripped, a
        # character vocabulary's spaces gone): raw gold text scored cased English questions
        # BLEU 42 when reproduced exactly (sacrebleu is case-sensitive)
        return vocab.decode(vocab.encode(text))

    pairs = fitting(vocab, held_out, s, s.eval_examples)
    if pairs:
        asked = gen.ask(
            [e["passage"] for e in pairs],
            [e["answer"] for e in pairs],
            [e.get("answer_start", e["passage"].find(e["answer"])) for e in pairs],
        )
        scored = [
            {**e, "question": as_decoded(e["question"]), "passage": as_decoded(e["passage"])}
            for e in pairs
        ]
        out |= question_metrics([a["question"] for a in asked], scored)
    passages = by_passage(held_out, s.eval_passages)
    if passages:
        got = gen.generate([p for p, _ in passages], jax.random.key(seed))
        out |= answer_scores(
            [[g["answer"] for g in kept] for kept in got],
            [[as_decoded(a) for a in golds] for _, golds in passages],
        )
    return out
