"""Question-generation rows (UniLM, Dong et al. 2019): [CLS] passage [SEP] answer [SEP] question
[SEP], and the [CLS] passage [SEP] prompts generation starts from (`research.sampling.qagen`).

Segment 0 is [CLS] passage [SEP] (bidirectional); segment 1 is answer [SEP] question [SEP]
(causal over itself, seeing the whole passage). Only the passage is cut to fit: a window of at
most `passage_budget` = seq_len - answer_len - question_len - 4 tokens that holds the answer. An
example whose answer or question is longer than its budget is dropped. The examples are
`research.data.qa`'s: {passage, answer, question, answer_start}.
"""

import numpy as np


def passage_budget(seq_len: int, answer_len: int, question_len: int) -> int:
    """Passage tokens a row leaves room for: [CLS] p [SEP] a [SEP] q [SEP]."""
    return seq_len - answer_len - question_len - 4


def passage_window(vocab, passage: str, start: int, n_chars: int, budget: int) -> list[int]:
    """The passage's token ids, cut to `budget` tokens: the window that holds the answer
    passage[start : start + n_chars] near its middle (start < 0: the first tokens)."""
    if start < 0:
        return vocab.encode(passage)[:budget]
    before = vocab.encode(passage[:start])
    span = vocab.encode(passage[start : start + n_chars])
    ids = before + span + vocab.encode(passage[start + n_chars :])
    if len(ids) <= budget:
        return ids
    first = max(0, min(len(before) - (budget - len(span)) // 2, len(ids) - budget))
    return ids[first : first + budget]


def qa_row(
    passage, answer, question, *, seq_len: int, cls_id: int, sep_id: int, pad_id: int
) -> dict:
    """One training row from token ids: inputs, segment_ids, mask [L]; targets [L] (the next
    token) and weights [L] (1 where the next token is in segment 1)."""
    ids = [cls_id, *passage, sep_id, *answer, sep_id, *question, sep_id]
    if len(ids) > seq_len:
        raise ValueError(f"a row of {len(ids)} tokens does not fit seq_len={seq_len}")
    n0 = len(passage) + 2
    inputs = np.full(seq_len, pad_id, np.int32)
    inputs[: len(ids)] = ids
    pos = np.arange(seq_len)
    targets = np.full(seq_len, pad_id, np.int32)
    targets[: len(ids) - 1] = ids[1:]
    weights = ((pos >= n0 - 1) & (pos < len(ids) - 1)).astype(np.float32)
    return {
        "inputs": inputs,
        "segment_ids": (pos >= n0).astype(np.int32),
        "mask": pos < len(ids),
        "targets": targets,
        "weights": weights,
    }


def fits(vocab, ex: dict, *, answer_len: int, question_len: int) -> bool:
    """Whether the example's answer and question encode to 1 .. their budget tokens."""
    a, q = vocab.encode(ex["answer"]), vocab.encode(ex["question"])
    return 0 < len(a) <= answer_len and 0 < len(q) <= question_len


def encode_example(
    vocab, ex: dict, *, seq_len: int, answer_len: int, question_len: int
) -> dict | None:
    """The row of example {passage, answer, question, answer_start}; None when the answer or
    the question is longer than its budget (or encodes to nothing)."""
    answer, question = vocab.encode(ex["answer"]), vocab.encode(ex["question"])
    if not 0 < len(answer) <= answer_len or not 0 < len(question) <= question_len:
        return None
    passage = passage_window(
        vocab,
        ex["passage"],
        ex.get("answer_start", -1),
        len(ex["answer"]),
        passage_budget(seq_len, answer_len, question_len),
    )
    return qa_row(
        passage,
        answer,
        question,
        seq_len=seq_len,
        cls_id=vocab.cls_id,
        sep_id=vocab.sep_id,
        pad_id=vocab.pad_id,
    )


def encode_rows(
    vocab, examples, *, seq_len: int, answer_len: int, question_len: int, name: str
) -> list[dict]:
    """The rows of the examples that fit (`encode_example`); prints how many were dropped."""
    rows = [
        encode_example(vocab, e, seq_len=seq_len, answer_len=answer_len, question_len=question_len)
        for e in examples
    ]
    kept = [r for r in rows if r is not None]
    if len(kept) < len(rows):
        print(
            f"qagen {name}: {len(rows) - len(kept):,} of {len(rows):,} examples dropped (answer "
            f"> {answer_len} or question > {question_len} tokens)",
            flush=True,
        )
    return kept


def prompts(vocab, passages, *, budget: int, answers=None, starts=None):
    """[CLS] passage [SEP] prompts, right-padded: (ids [N, budget + 2], lengths [N]). With
    `answers` (str or None per passage) the window holds the answer at `starts` (its character
    offset; None: the first occurrence)."""
    out = np.full((len(passages), budget + 2), vocab.pad_id, np.int32)
    lengths = np.zeros(len(passages), np.int32)
    for i, p in enumerate(passages):
        a = None if answers is None else answers[i]
        start = -1 if a is None else p.find(a) if starts is None else starts[i]
        ids = [vocab.cls_id, *passage_window(vocab, p, start, len(a or ""), budget), vocab.sep_id]
        out[i, : len(ids)] = ids
        lengths[i] = len(ids)
    return out, lengths


def answer_ids(vocab, answers: list[str], answer_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Given answers as ids [N, answer_len] (pad after) and their lengths [N]."""
    out = np.full((len(answers), answer_len), vocab.pad_id, np.int32)
    lengths = np.zeros(len(answers), np.int32)
    for i, a in enumerate(answers):
        ids = vocab.encode(a)[:answer_len]
        out[i, : len(ids)], lengths[i] = ids, len(ids)
    return out, lengths
