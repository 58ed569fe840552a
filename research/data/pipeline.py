"""grain input pipelines: per-process shard -> seeded shuffle -> tokenize -> pack -> batch.

Each process reads its own 1/process_count of the records and builds batch_size/process_count
rows; `global_batch` assembles the global array with `jax.make_array_from_process_local_data`.
Iterators are grain `DatasetIterator`s, whose state Orbax saves beside the model.
"""

import grain
import jax
import numpy as np

from research.data.tokenizer import EOS_ID


def local_batch_size(global_batch_size: int) -> int:
    n = jax.process_count()
    if global_batch_size % n:
        raise ValueError(f"batch_size {global_batch_size} is not divisible by {n} processes")
    return global_batch_size // n


def _records(source, *, seed: int, shuffle: bool, repeat: bool):
    ds = grain.MapDataset.source(source)[jax.process_index() :: jax.process_count()]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    return ds.repeat() if repeat else ds


def lm_dataset(source, tokenizer, *, seq_len: int, batch_size: int, seed: int, train: bool,
               text_key: str = "text") -> grain.IterDataset:  # fmt: skip
    """Language-model batches from text records: every document + EOS, concatenated and cut
    into windows of seq_len + 1 tokens (GPT-style packing; attention crosses documents).

    Yields {"inputs", "targets": [b, seq_len] int32, "weights": [b, seq_len] float32}.
    """

    def tokenize(record):
        text = record[text_key]
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        return {"tokens": np.asarray(tokenizer.encode(text) + [EOS_ID], np.int32)}

    ds = _records(source, seed=seed, shuffle=train, repeat=train).map(tokenize)
    ds = grain.experimental.ConcatThenSplitIterDataset(
        ds.to_iter_dataset(), length_struct={"tokens": seq_len + 1}
    )
    ds = ds.batch(local_batch_size(batch_size), drop_remainder=True)
    return ds.map(_shift)


def _shift(batch):
    t = batch["tokens"]
    # Packing marks real tokens with segment ids >= 1 and a partial last window's tail with 0.
    weights = (batch["tokens_segment_ids"][:, 1:] > 0).astype(np.float32)
    return {"inputs": t[:, :-1], "targets": t[:, 1:], "weights": weights}


def array_dataset(source, *, batch_size: int, seed: int, train: bool) -> grain.IterDataset:
    """Batches of records that are already arrays (MQAR: inputs, targets, weights)."""
    ds = _records(source, seed=seed, shuffle=train, repeat=train).to_iter_dataset()
    return ds.batch(local_batch_size(batch_size), drop_remainder=True)


def global_batch(local: dict, sharding) -> dict:
    """Process-local numpy batch -> global jax.Arrays laid out by `sharding` (batch axis split)."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
