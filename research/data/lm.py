"""Language-model rows: documents + EOS concatenated and cut into windows (GPT-style packing)."""

import grain
import numpy as np

from research.data.shards import ShardedIterator, shard_records, sharded
from research.data.tokenizer import EOS_ID


def lm_dataset(
    source,
    tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    train: bool,
    shard: int = 0,
    shards: int = 1,
    text_key: str = "text",
) -> grain.IterDataset:
    """Language-model batches of one shard: every document + EOS, concatenated and cut into
    windows of seq_len + 1 tokens (GPT-style packing; attention crosses documents).

    Yields {"inputs", "targets": [batch_size, seq_len] int32, "weights": [.., ..] float32}.
    """

    def tokenize(record):
        text = record[text_key]
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        return {"tokens": np.asarray(tokenizer.encode(text) + [EOS_ID], np.int32)}

    ds = shard_records(source, seed=seed, shuffle=train, repeat=train, shard=shard, shards=shards)
    ds = ds.map(tokenize)
    ds = grain.experimental.ConcatThenSplitIterDataset(
        ds.to_iter_dataset(), length_struct={"tokens": seq_len + 1}
    )
    ds = ds.batch(batch_size, drop_remainder=True).map(_shift)
    # A background thread keeps the next batches ready; grain's state still counts only
    # what was consumed, so checkpoints stay exact.
    return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=2)


def _shift(batch):
    t = batch["tokens"]
    # Packing marks real tokens with segment ids >= 1 and a partial last window's tail with 0.
    weights = (batch["tokens_segment_ids"][:, 1:] > 0).astype(np.float32)
    return {"inputs": t[:, :-1], "targets": t[:, 1:], "weights": weights}


def lm_iterator(
    source, tokenizer, *, seq_len: int, batch_size: int, seed: int, train: bool, shards: int = 1
) -> ShardedIterator:
    """This process's rows of every global LM batch (see the module docstring)."""
    return sharded(
        lambda rows, i, n: lm_dataset(
            source,
            tokenizer,
            seq_len=seq_len,
            batch_size=rows,
            seed=seed,
            train=train,
            shard=i,
            shards=n,
        ),
        batch_size,
        shards,
    )
