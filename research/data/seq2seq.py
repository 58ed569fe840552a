"""Seq2seq rows in two layouts: encoder-decoder, or one UniLM sequence (source, target)."""

import numpy as np

from research.data.shards import ShardedIterator, batches, shard_records, sharded

LAYOUTS = ("encdec", "unilm")


def seq2seq_example(
    src, tgt, *, layout: str, src_len: int, tgt_len: int, pad: int, bos: int, eos: int
) -> dict:
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
        out = {
            "src": np.full(src_len, pad, np.int32),
            "inputs": np.full(tgt_len, pad, np.int32),
            "targets": np.full(tgt_len, pad, np.int32),
        }
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
        "inputs": inputs,
        "targets": seq[1:],
        "segment_ids": (pos > n).astype(np.int32),
        "weights": ((pos >= n) & (pos <= n + m)).astype(np.float32),
        "replace_mask": ((pos > n) & (pos <= n + m)).astype(np.float32),
        "prompt_length": np.int32(n + 1),
    }


def seq2seq_iterator(
    source,
    vocab,
    *,
    layout: str,
    src_len: int,
    tgt_len: int,
    batch_size: int,
    seed: int,
    train: bool,
    shards: int = 1,
) -> ShardedIterator:
    """This process's rows of every global seq2seq batch (`seq2seq_example` per record)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: allowed {', '.join(LAYOUTS)}")

    def example(record):
        src, tgt = vocab.encode_record(record)
        return seq2seq_example(
            src,
            tgt,
            layout=layout,
            src_len=src_len,
            tgt_len=tgt_len,
            pad=vocab.pad,
            bos=vocab.bos,
            eos=vocab.eos,
        )

    def make(rows, i, n):
        ds = shard_records(source, seed=seed, shuffle=train, repeat=train, shard=i, shards=n)
        return batches(ds.map(example), rows)

    return sharded(make, batch_size, shards)
