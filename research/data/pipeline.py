"""grain input pipelines: shard -> seeded shuffle -> tokenize -> pack -> batch -> prefetch.

Records are split into `shards` logical shards (record i goes to shard i % shards), each packed
and batched on its own; every process owns shards/process_count of them and concatenates their
rows. The global batch therefore depends on `shards`, not on how many processes read it: one
process with shards=2 sees exactly the batches of two processes (tests rely on this).
`global_batch` assembles global arrays with `jax.make_array_from_process_local_data`.
"""

import json

import grain
import jax
import numpy as np

from research.data.tokenizer import EOS_ID


def _records(source, *, seed: int, shuffle: bool, repeat: bool, shard: int, shards: int):
    ds = grain.MapDataset.source(source)[shard::shards]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    return ds.repeat() if repeat else ds


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

    ds = _records(source, seed=seed, shuffle=train, repeat=train, shard=shard, shards=shards)
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


def array_dataset(source, *, batch_size: int, seed: int, train: bool, shard: int = 0,
                  shards: int = 1) -> grain.IterDataset:  # fmt: skip
    """Batches of one shard of records that are already arrays (MQAR)."""
    ds = _records(source, seed=seed, shuffle=train, repeat=train, shard=shard, shards=shards)
    return ds.to_iter_dataset().batch(batch_size, drop_remainder=True)


def owned_shards(shards: int, global_batch_size: int) -> tuple[range, int]:
    """(this process's shard indices, rows per shard); shards=0 means one per process."""
    n, p = jax.process_count(), jax.process_index()
    shards = shards or n
    if shards % n:
        raise ValueError(f"data.shards={shards} must be a multiple of the {n} processes")
    if global_batch_size % shards:
        raise ValueError(f"batch_size={global_batch_size} is not divisible by data.shards={shards}")
    per = shards // n
    return range(p * per, (p + 1) * per), global_batch_size // shards


class ShardedIterator:
    """Iterates several shard datasets in lockstep and concatenates their rows.

    Checkpointable by grain's Orbax handler (get_state -> bytes, set_state, start_prefetch).
    """

    def __init__(self, datasets):
        self.iterators = [iter(ds) for ds in datasets]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        parts = [next(it) for it in self.iterators]
        return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}

    def get_state(self) -> bytes:
        return json.dumps([it.get_state() for it in self.iterators]).encode()

    def set_state(self, state: bytes):
        for it, s in zip(self.iterators, json.loads(state), strict=True):
            it.set_state(s)

    def start_prefetch(self):
        pass


def _sharded(make_shard, batch_size: int, shards: int) -> ShardedIterator:
    """make_shard(rows, shard, shards) -> dataset, for each shard this process owns."""
    mine, rows = owned_shards(shards, batch_size)
    total = len(mine) * jax.process_count()
    return ShardedIterator([make_shard(rows, i, total) for i in mine])


def array_iterator(source, *, batch_size: int, seed: int, train: bool,
                   shards: int = 0) -> ShardedIterator:  # fmt: skip
    """This process's rows of every global batch of array records (MQAR)."""
    return _sharded(lambda rows, i, n: array_dataset(source, batch_size=rows, seed=seed,
                                                     train=train, shard=i, shards=n),
                    batch_size, shards)  # fmt: skip


def lm_iterator(source, tokenizer, *, seq_len: int, batch_size: int, seed: int, train: bool,
                shards: int = 0) -> ShardedIterator:  # fmt: skip
    """This process's rows of every global LM batch (see the module docstring)."""
    return _sharded(lambda rows, i, n: lm_dataset(source, tokenizer, seq_len=seq_len,
                                                  batch_size=rows, seed=seed, train=train,
                                                  shard=i, shards=n),
                    batch_size, shards)  # fmt: skip


LAYOUTS = ("encdec", "unilm")


def seq2seq_example(src, tgt, *, layout: str, src_len: int, tgt_len: int, pad: int, bos: int,
                    eos: int) -> dict:  # fmt: skip
    """One padded seq2seq example (source cut to src_len, target to tgt_len - 1 plus EOS).

    encdec: src, src_mask [S]; inputs = [BOS, y] and targets = [y, EOS] [T]; weights on targets;
      replace_mask marks the gold target tokens among the inputs (not BOS).
    unilm: one sequence [src, BOS(as separator), y, EOS] cut into inputs/targets [S + T];
      segment_ids 0 for the source and the separator (it predicts y_1), 1 for y;
      weights on the target predictions; replace_mask on the y inputs.
    """
    src = np.asarray(src, np.int32)[:src_len]
    y = np.asarray(tgt, np.int32)[: tgt_len - 1]
    m = len(y)
    if layout == "encdec":
        out = {"src": np.full(src_len, pad, np.int32), "inputs": np.full(tgt_len, pad, np.int32),
               "targets": np.full(tgt_len, pad, np.int32)}  # fmt: skip
        out["src"][: len(src)] = src
        out["inputs"][: m + 1] = np.concatenate([[bos], y])
        out["targets"][: m + 1] = np.concatenate([y, [eos]])
        out["weights"] = (np.arange(tgt_len) <= m).astype(np.float32)
        out["replace_mask"] = ((np.arange(tgt_len) >= 1) & (np.arange(tgt_len) <= m)).astype(
            np.float32
        )
        out["src_mask"] = np.arange(src_len) < len(src)
        return out
    n, total = len(src), src_len + tgt_len
    seq = np.full(total + 1, pad, np.int32)
    seq[: n + m + 2] = np.concatenate([src, [bos], y, [eos]])
    pos = np.arange(total)
    inputs = np.where(pos <= n + m, seq[:-1], pad)  # EOS is only ever a label
    return {
        "inputs": inputs, "targets": seq[1:],
        "segment_ids": (pos > n).astype(np.int32),
        "weights": ((pos >= n) & (pos <= n + m)).astype(np.float32),
        "replace_mask": ((pos > n) & (pos <= n + m)).astype(np.float32),
        "prompt_length": np.int32(n + 1),
    }  # fmt: skip


def seq2seq_iterator(source, vocab, *, layout: str, src_len: int, tgt_len: int, batch_size: int,
                     seed: int, train: bool, shards: int = 0) -> ShardedIterator:  # fmt: skip
    """This process's rows of every global seq2seq batch (`seq2seq_example` per record)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: allowed {', '.join(LAYOUTS)}")

    def example(record):
        src, tgt = vocab.encode(record)
        return seq2seq_example(src, tgt, layout=layout, src_len=src_len, tgt_len=tgt_len,
                               pad=vocab.pad, bos=vocab.bos, eos=vocab.eos)  # fmt: skip

    def make(rows, i, n):
        ds = _records(source, seed=seed, shuffle=train, repeat=train, shard=i, shards=n)
        return ds.map(example).to_iter_dataset().batch(rows, drop_remainder=True)

    return _sharded(make, batch_size, shards)


def global_batch(local: dict, sharding) -> dict:
    """Process-local numpy batch -> global jax.Arrays laid out by `sharding` (batch axis split)."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
