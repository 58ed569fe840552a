"""PET patterns and verbalizers as data (Schick & Schütze 2020, "Exploiting Cloze Questions for Few
Shot Text Classification and Natural Language Inference", arXiv:2001.07676).

A `Pattern` is a template with the input text's place, "{text}", and one or more "[MASK]" slots,
plus a verbalizer: verbalizer[y] is the word for label y, one token per slot. For sentiment,
"[MASK]满意。{text}" with ("不", "很") reads "不满意。" (negative) or "很满意。" (positive) before
the review. Several patterns for one task are a tuple of Patterns. `encode` builds the model
input and the slot positions; `verbalizer_ids` gives the tokens that research.ops.label_scores
reads at those slots.

`vocab` is any object with encode(text) -> list[int] (no [CLS]/[SEP]), token_to_id(token),
unk_id, cls_id, sep_id, mask_id, pad_id and vocab_size().
"""

import dataclasses

import numpy as np

TEXT = "{text}"
SLOT = "[MASK]"


@dataclasses.dataclass(frozen=True)
class Pattern:
    """template: contains "{text}" once and "[MASK]" one or more times; verbalizer[y]: the word
    for label y (labels are 0..len(verbalizer) - 1)."""

    template: str
    verbalizer: tuple[str, ...]

    def __post_init__(self):
        t = self.template
        if not isinstance(t, str):
            raise ValueError(f"template must be a str, got {t!r}")
        if t.count(TEXT) != 1:
            raise ValueError(
                f"template {t!r} must contain {TEXT} exactly once, found {t.count(TEXT)}"
            )
        if SLOT not in t:
            raise ValueError(f"template {t!r} has no {SLOT} slot; put one where the label goes")
        if not isinstance(self.verbalizer, tuple | list):  # a str would pass as characters
            raise ValueError(f"verbalizer {self.verbalizer!r} must be a tuple of words")
        v = tuple(self.verbalizer)
        object.__setattr__(self, "verbalizer", v)  # lists become tuples: the class stays hashable
        if not v:
            raise ValueError(f"verbalizer {v!r} is empty; give one word per label")
        for y, word in enumerate(v):
            if not isinstance(word, str) or not word.strip():
                raise ValueError(f"verbalizer word {word!r} (label {y}) must be a non-empty str")
        if len(set(v)) != len(v):
            raise ValueError(f"verbalizer {v!r} repeats a word; each label needs its own word")

    @property
    def num_slots(self) -> int:
        return self.template.count(SLOT)

    @property
    def num_labels(self) -> int:
        return len(self.verbalizer)


# Labels: 0 = negative, 1 = positive. The note's prefix pattern first, then a suffix pattern.
SENTIMENT_PATTERNS = (
    Pattern("[MASK]满意。{text}", ("不", "很")),
    Pattern("{text}总体来说[MASK]满意。", ("不", "很")),
)


def _encode_part(part: str, vocab) -> tuple[list[int], list[int]]:
    """Template text around "{text}" -> (ids with mask_id at the slots, slot offsets). Slots are
    placed by splitting on "[MASK]", so a tokenizer that splits "[MASK]" itself is fine."""
    ids, slots = [], []
    for i, piece in enumerate(part.split(SLOT)):
        if i:
            slots.append(len(ids))
            ids.append(vocab.mask_id)
        ids += vocab.encode(piece) if piece else []
    return ids, slots


def encode(pattern: Pattern, text: str, vocab, *, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] pattern-with-text [SEP] -> (ids int32 [n], mask_positions int32 [S]), n <= max_length.

    The slots hold vocab.mask_id; only the text is truncated (its end), never the pattern, so
    every slot stays in the row. mask_positions index into ids, in template order.
    """
    before, after = pattern.template.split(TEXT)
    head, head_slots = _encode_part(before, vocab)
    tail, tail_slots = _encode_part(after, vocab)
    fixed = len(head) + len(tail) + 2  # + [CLS] and [SEP]
    if max_length <= fixed:
        raise ValueError(
            f"max_length={max_length} leaves no room for the text: pattern {pattern.template!r} "
            f"takes {fixed} tokens with [CLS] and [SEP]; use max_length > {fixed}"
        )
    body = vocab.encode(text)[: max_length - fixed]
    ids = [vocab.cls_id, *head, *body, *tail, vocab.sep_id]
    start = 1 + len(head) + len(body)
    positions = [1 + p for p in head_slots] + [start + p for p in tail_slots]
    return np.asarray(ids, np.int32), np.asarray(positions, np.int32)


def verbalizer_ids(pattern: Pattern, vocab) -> np.ndarray:
    """int32 [num_labels, S]: the tokens of each label's word, one per slot. Raises ValueError for
    a word whose token count differs from the slots or that is not in the vocabulary."""
    s = pattern.num_slots
    rows = []
    for y, word in enumerate(pattern.verbalizer):
        ids = list(vocab.encode(word))
        if any(i is None or i == vocab.unk_id for i in ids):
            raise ValueError(
                f"verbalizer word {word!r} (label {y}) is not in the vocabulary (it tokenizes to "
                "[UNK]); use words whose tokens are in the vocabulary"
            )
        if len(ids) != s:
            raise ValueError(
                f"verbalizer word {word!r} (label {y}) is {len(ids)} tokens but template "
                f"{pattern.template!r} has {s} {SLOT} slots; each word needs one token per slot"
            )
        rows.append(ids)
    return np.asarray(rows, np.int32)


def check_labels(labels, pattern: Pattern) -> None:
    """Raises ValueError for labels that are not ints in [0, pattern.num_labels)."""
    labels = np.asarray(labels)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be ints, got dtype {labels.dtype}")
    bad = labels[(labels < 0) | (labels >= pattern.num_labels)]
    if bad.size:
        raise ValueError(
            f"labels {sorted(set(bad.tolist()))} are outside the verbalizer "
            f"{pattern.verbalizer!r}: allowed 0..{pattern.num_labels - 1}"
        )
