"""Language-model rows: documents + EOS concatenated and cut into windows (GPT-style packing),
optionally with document boundaries (`documents=True`)."""

import functools

import grain
import numpy as np

from research.data.shards import READ_IN_THREAD, ShardedIterator, shard_records, sharded
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
    documents: bool = False,
) -> grain.IterDataset:
    """Language-model batches of one shard: every document + EOS, concatenated and cut into
    windows of seq_len + 1 tokens (GPT-style packing).

    Yields {"inputs", "targets": [batch_size, seq_len] int32, "weights": [.., ..] float32}.
    Without `documents` attention crosses documents (GPT-2's windows). With it, rows also carry
    "document_ids" [batch_size, seq_len] int32, non-decreasing (the piece of a document each
    input token belongs to; a partial window's padding gets an id after all of them), which the
    model turns into a block-diagonal causal mask or a state reset, and the weights drop every
    target that starts another document: the loss never predicts across a boundary.
    """

    def tokenize(record):
        text = record[text_key]
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        return {"tokens": np.asarray(tokenizer.encode(text) + [EOS_ID], np.int32)}

    ds = shard_records(source, seed=seed, shuffle=train, repeat=train, shard=shard, shards=shards)
    ds = ds.map(tokenize)
    ds = grain.experimental.ConcatThenSplitIterDataset(
        ds.to_iter_dataset(READ_IN_THREAD), length_struct={"tokens": seq_len + 1}
    )
    ds = ds.batch(batch_size, drop_remainder=True).map(
        functools.partial(_shift, documents=documents)
    )
    # A background thread keeps the next batches ready; grain's state still counts only
    # what was consumed, so checkpoints stay exact.
    return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=2)


def _shift(batch, documents: bool = False):
    t, seg = batch["tokens"], batch["tokens_segment_ids"]
    # Packing marks real tokens with segment ids 1, 2, .. (one per document piece, in order) and a
    # partial last window's tail with 0.
    real = seg[:, 1:] > 0
    if not documents:
        return {"inputs": t[:, :-1], "targets": t[:, 1:], "weights": real.astype(np.float32)}
    same = seg[:, 1:] == seg[:, :-1]
    ids = np.where(seg[:, :-1] > 0, seg[:, :-1], seg.shape[1]).astype(np.int32)
    return {
        "inputs": t[:, :-1],
        "targets": t[:, 1:],
        "weights": (real & same).astype(np.float32),
        "document_ids": ids,
    }


def lm_iterator(
    source,
    tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    train: bool,
    shards: int = 1,
    documents: bool = False,
) -> ShardedIterator:
    """This process's rows of every global LM batch (see `lm_dataset`)."""
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
            documents=documents,
        ),
        batch_size,
        shards,
    )
