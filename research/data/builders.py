"""tfds builders for data made on this machine (no download), written as array_record.

Read them with `tfds.data_source(NAME, data_dir=...)` or `builder.as_data_source(split)`; neither
building nor reading needs TensorFlow.
  stdlib_code  the .py sources of the running interpreter's standard library (real text).
  mqar         multi-query associative recall (Zoology; Arora et al. 2023),
               docs/research_notes.md section 4.
  seq2seq_synthetic  copy / reverse / sort / addition digit tasks for exposure-bias studies.
"""

import abc
import dataclasses
import hashlib
import logging
import pathlib
import sys
import sysconfig

import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from research.data import DataError
from research.data.config import parse_segments
from research.data.mqar_examples import (  # noqa: F401 - re-exported: builders.mqar_example
    MQAR_EXAMPLES,
    ZOOLOGY_POWER_A,
    mqar_example,
    mqar_zoology_example,
)


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder of data made on this machine, built without tfds' download chatter."""

    def dataset_info_from_configs(self, **kwargs):
        info = super().dataset_info_from_configs(**kwargs)
        # Before a first build tfds looks for precomputed metadata on GCS (off by default), but
        # first makes a /tmp/tmp*tfds folder it never removes. Ours have no metadata there.
        info.initialize_from_bucket = lambda: None
        return info

    def _log_download_bytes(self):
        pass  # "Downloading and preparing dataset Unknown size (download: Unknown size, ...)"

    def _log_download_done(self):
        pass  # "Dataset NAME downloaded and prepared to DIR. Subsequent calls will reuse ..."


class _QuietCustomConfigs(logging.Filter):
    """Drops tfds' "Using custom data configuration: ..." warning for our builders' configs
    (every MQAR and seq2seq setting is a custom config); other datasets keep it."""

    def filter(self, record):
        ours = isinstance(record.args, tuple) and record.args
        ours = ours and isinstance(record.args[0], (StdlibCodeConfig, MqarConfig, Seq2SeqConfig))
        return not (ours and str(record.msg).startswith("Using custom data configuration"))


absl_logging.get_absl_logger().addFilter(_QuietCustomConfigs())

# ----------------------------------------------------------------------------------------------
# Standard-library code corpus
# ----------------------------------------------------------------------------------------------
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


def stdlib_files(root: str | None = None) -> list[pathlib.Path]:
    """Sorted .py files of the standard library (site-packages and test suites excluded)."""
    root = pathlib.Path(root or sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__")
    return sorted(p for p in root.rglob("*.py") if not set(p.relative_to(root).parts) & set(skip))


def hash_bucket(text: str) -> int:
    """sha256 of the UTF-8 text mod 100: a split bucket, the same on every machine and run."""
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % 100


def split_of(relative_path: str, validation_percent: int) -> str:
    """Deterministic split by a hash of the path, the same on every machine and run."""
    bucket = hash_bucket(relative_path)
    return "validation" if bucket < validation_percent else "train"


def stdlib_split(relative_path: str, text: str, validation_percent: int) -> str:
    """A stdlib file's split: by a hash of its path, except that the generated codecs all
    train (hashed one by one, the validation split held five, 19% of its text, whose lines
    stood verbatim in their train siblings: a held-out loss that rewards copying)."""
    if is_generated_codec(relative_path, text):
        return "train"
    return split_of(relative_path, validation_percent)


def is_generated_codec(relative_path: str, text: str) -> bool:
    """One of the ~65 charmap codecs that Tools/unicode/gencodec.py wrote (encodings/cp1252.py
    ...) or the ~30 CJK codec wrappers of one template (encodings/big5.py ...): near-copies of
    each other, line for line."""
    if not relative_path.startswith("encodings/"):
        return False
    return "gencodec.py" in text[:1000] or ("import _codecs_" in text and "_multibytecodec" in text)


@dataclasses.dataclass
class StdlibCodeConfig(tfds.core.BuilderConfig):
    python_version: str = PYTHON_VERSION  # the corpus is this interpreter's stdlib
    validation_percent: int = 5
    max_files: int = 0  # 0 = all files; tests use a few


class StdlibCode(_LocalBuilder):
    """Python standard-library sources, one example per file: {path, text}."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {  # noqa: RUF012 - tfds reads it as a class attribute
        "1.1.0": "The generated charmap codecs all in train (near-copies split across both).",
    }
    BUILDER_CONFIGS = [
        StdlibCodeConfig(name=f"py{PYTHON_VERSION}"),
        StdlibCodeConfig(name=f"py{PYTHON_VERSION}-small", max_files=60, validation_percent=10),
    ]

    def _info(self):
        return self.dataset_info_from_configs(
            description=f"Python {self.builder_config.python_version} standard library .py files",
            features=tfds.features.FeaturesDict(
                {"path": tfds.features.Text(), "text": tfds.features.Text()}
            ),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        if cfg.python_version != PYTHON_VERSION:
            raise ValueError(
                f"config {cfg.name} is for Python {cfg.python_version}; this is {PYTHON_VERSION}"
            )
        root = pathlib.Path(sysconfig.get_paths()["stdlib"])
        files = stdlib_files(str(root))
        if cfg.max_files:
            files = files[: cfg.max_files]
        by_split = {"train": [], "validation": []}
        for p in files:
            rel = str(p.relative_to(root))
            text = p.read_text(encoding="utf-8", errors="replace")
            by_split[stdlib_split(rel, text, cfg.validation_percent)].append((rel, p))
        return {name: self._generate_examples(items) for name, items in by_split.items()}

    def _generate_examples(self, items):
        for rel, path in items:
            yield rel, {"path": rel, "text": path.read_text(encoding="utf-8", errors="replace")}


# ----------------------------------------------------------------------------------------------
# Synthetic tasks: seeded generators with train and test splits
# ----------------------------------------------------------------------------------------------
class _Synthetic(_LocalBuilder, skip_registration=True):
    """Splits of examples drawn by `_example(rng)`; the config has seed, train/test_examples."""

    def _split_generators(self, dl_manager):
        c = self.builder_config
        return {
            "train": self._generate_examples(c.train_examples, 0),
            "test": self._generate_examples(c.test_examples, 1),
        }

    def _generate_examples(self, n, stream):
        # Independent streams per split, so test examples never depend on the train size.
        rng = np.random.default_rng([self.builder_config.seed, stream])
        for i in range(n):
            yield i, self._example(rng, i)

    @abc.abstractmethod
    def _example(self, rng: np.random.Generator, index: int) -> dict:
        """Example `index` of its split (a dict of features), drawn with `rng`."""


# ----------------------------------------------------------------------------------------------
# MQAR
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class MqarConfig(tfds.core.BuilderConfig):
    vocab_size: int = 8192
    seq_len: int = 256
    num_kv_pairs: int = 16
    train_examples: int = 20_000
    test_examples: int = 1_000
    seed: int = 0
    variant: str = "seqlab"  # MQAR_EXAMPLES
    # Non-empty: every split mixes these (length, pairs) segments in equal shares (Zoology's
    # training mixture), each example right-padded to seq_len with weight-0 filler; num_kv_pairs
    # is then unused.
    segments: tuple = ()


def mqar_config(
    vocab_size=8192,
    seq_len=256,
    num_kv_pairs=16,
    train_examples=20_000,
    test_examples=1_000,
    seed=0,
    variant="seqlab",
    segments=(),
) -> MqarConfig:
    if variant not in MQAR_EXAMPLES:
        raise ValueError(f"mqar variant={variant!r}: allowed {', '.join(MQAR_EXAMPLES)}")
    segments = parse_segments(segments)
    if not segments and 4 * num_kv_pairs > seq_len:
        raise ValueError(f"MQAR needs 4 * num_kv_pairs <= seq_len, got {num_kv_pairs}, {seq_len}")
    for length, pairs in segments or ((seq_len, num_kv_pairs),):
        if length > seq_len:
            raise ValueError(f"mqar_segments: length {length} is longer than seq_len={seq_len}")
        if pairs > vocab_size // 2 - 1:  # distinct keys from [1, V/2)
            raise ValueError(
                f"num_kv_pairs={pairs} needs vocab_size >= {2 * pairs + 2} (distinct keys from "
                f"[1, vocab_size/2)), got {vocab_size}"
            )
    fields = dict(
        vocab_size=vocab_size,
        seq_len=seq_len,
        num_kv_pairs=num_kv_pairs,
        train_examples=train_examples,
        test_examples=test_examples,
        seed=seed,
        variant=variant,
        segments=segments,
    )
    name = f"v{vocab_size}_l{seq_len}_kv{num_kv_pairs}_n{train_examples}_s{seed}"
    if test_examples != 1_000:  # the default keeps the names of datasets built before
        name += f"_t{test_examples}"
    if segments:
        name = f"v{vocab_size}_l{seq_len}_mix{'_'.join(f'{n}x{k}' for n, k in segments)}"
        name += f"_n{train_examples}_t{test_examples}_s{seed}"
    if variant != "seqlab":  # the seqlab variant keeps the names of datasets built before
        name += f"_{variant}"
    return MqarConfig(name=name, **fields)


class Mqar(_Synthetic):
    """Multi-query associative recall; pass `config=mqar_config(...)`."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [mqar_config()]

    def _info(self):
        n = self.builder_config.seq_len
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "inputs": tfds.features.Tensor(shape=(n,), dtype=np.int32),
                    "targets": tfds.features.Tensor(shape=(n,), dtype=np.int32),
                    "weights": tfds.features.Tensor(shape=(n,), dtype=np.float32),
                }
            )
        )

    def _example(self, rng, index):
        c = self.builder_config
        draw = MQAR_EXAMPLES[c.variant]
        if not c.segments:
            return draw(
                rng, vocab_size=c.vocab_size, seq_len=c.seq_len, num_kv_pairs=c.num_kv_pairs
            )
        length, pairs = c.segments[index % len(c.segments)]  # equal shares, in turn
        ex = draw(rng, vocab_size=c.vocab_size, seq_len=length, num_kv_pairs=pairs)
        pad = c.seq_len - length  # filler 0 with weight 0: a causal model never reads it early
        return {k: np.pad(v, (0, pad)) for k, v in ex.items()}


# ----------------------------------------------------------------------------------------------
# Synthetic seq2seq tasks
# ----------------------------------------------------------------------------------------------
SEQ2SEQ_TASKS = ("copy", "reverse", "sort", "addition")
# Token ids shared by all tasks: digits d -> DIGIT0 + d.
PAD, BOS, EOS, PLUS, DIGIT0 = 0, 1, 2, 3, 4
SEQ2SEQ_VOCAB = DIGIT0 + 10


def seq2seq_example(rng: np.random.Generator, task: str, min_len: int, max_len: int):
    """One (source, target) pair of digit tokens, without BOS/EOS (the pipeline adds them).

    copy: target = source; reverse: source reversed; sort: source sorted; addition: source is
    "a + b" with a, b of n digits each (most significant first), target the digits of a + b.
    Long outputs where every later token depends on getting the earlier ones right make these a
    clean probe of exposure bias: one early mistake derails the rest of a greedy decode.
    """
    n = int(rng.integers(min_len, max_len + 1))
    if task == "addition":
        a, b = (int("".join(map(str, rng.integers(0, 10, n)))) for _ in range(2))
        digits = lambda x: [DIGIT0 + int(ch) for ch in str(x)]  # noqa: E731
        source = digits(a) + [PLUS] + digits(b)
        return np.asarray(source, np.int32), np.asarray(digits(a + b), np.int32)
    source = DIGIT0 + rng.integers(0, 10, n)
    target = {"copy": source, "reverse": source[::-1], "sort": np.sort(source)}[task]
    return source.astype(np.int32), np.asarray(target, np.int32)


@dataclasses.dataclass
class Seq2SeqConfig(tfds.core.BuilderConfig):
    task: str = "reverse"
    min_len: int = 8
    max_len: int = 32
    train_examples: int = 20_000
    test_examples: int = 500
    seed: int = 0


def seq2seq_config(
    task="reverse", min_len=8, max_len=32, train_examples=20_000, test_examples=500, seed=0
) -> Seq2SeqConfig:
    if task not in SEQ2SEQ_TASKS:
        raise ValueError(f"unknown seq2seq task {task!r}; allowed: {', '.join(SEQ2SEQ_TASKS)}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    fields = dict(
        task=task,
        min_len=min_len,
        max_len=max_len,
        train_examples=train_examples,
        test_examples=test_examples,
        seed=seed,
    )
    name = f"{task}_len{min_len}-{max_len}_n{train_examples}_s{seed}"
    if test_examples != 500:  # the default keeps the names of datasets built before
        name += f"_t{test_examples}"
    return Seq2SeqConfig(name=name, **fields)


class Seq2seqSynthetic(_Synthetic):
    """copy / reverse / sort / addition over digits; pass `config=seq2seq_config(...)`."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [seq2seq_config()]

    def _info(self):
        seq = tfds.features.Tensor(shape=(None,), dtype=np.int32)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"source": seq, "target": seq})
        )

    def _example(self, rng, index):
        c = self.builder_config
        source, target = seq2seq_example(rng, c.task, c.min_len, c.max_len)
        return {"source": source, "target": target}


def build(builder_cls, data_dir: str, config=None):
    """Builds (once) and returns the builder; later calls reuse the files in data_dir. A reused
    synthetic build whose split sizes differ from its config's (a name that did not encode
    them, from before) is a DataError naming it, not silently another test set."""
    builder = builder_cls(data_dir=data_dir, config=config, file_format="array_record")
    builder.download_and_prepare()
    for split in ("train", "test"):
        want = getattr(config, f"{split}_examples", None)
        got = builder.info.splits[split].num_examples if split in builder.info.splits else None
        if want is not None and got is not None and got != want:
            raise DataError(
                f"{builder.data_dir} holds {got} {split} examples, its config asks for {want}; "
                "delete that directory or use another data_dir"
            )
    return builder
