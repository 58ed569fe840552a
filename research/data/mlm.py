"""Masked-LM pretraining rows (BERT): sentences packed in order into [CLS] ... [SEP] rows and
masked (`research.data.masking.mlm_mask`); `vocab` a `research.data.wordpiece.BertVocab`."""

import copy

import grain
import numpy as np

from research.data import DataError, masking
from research.data.shards import (
    READ_IN_THREAD,
    ShardedIterator,
    pad_batch,
    record_text,
    shard_records,
    sharded,
    stream_seed,
)


class _PackIterator(grain.DatasetIterator):
    """Greedy in-order packing: sentences go into the current row while they fit in `capacity`
    tokens; the first that does not starts the next row. Each sentence must fit an empty row.

    The state is the parent's state just before the sentence that will open the next row, so a
    restored iterator reads that sentence again and packs exactly the same rows.
    """

    def __init__(self, parent, capacity: int):
        super().__init__(parent)
        self._capacity = capacity
        self._pending = None  # (parent state before it, sentence) read but not yet packed

    def __next__(self):
        parts, used, n_words = {}, 0, 0  # per-token arrays of the row's sentences
        while True:
            if self._pending is None:
                before = self._parent.get_state()
                try:
                    sentence = next(self._parent)
                except StopIteration:
                    if parts:
                        break
                    raise
                self._pending = (copy.deepcopy(before), sentence)
            sentence = self._pending[1]
            n = len(sentence["ids"])
            if parts and used + n > self._capacity:
                break
            if n:
                for key, part in sentence.items():
                    parts.setdefault(key, []).append(part)
                parts["words"][-1] = sentence["words"] + n_words  # words of a row stay distinct
                used, n_words = used + n, n_words + int(sentence["words"].max()) + 1
            self._pending = None
        return {key: np.concatenate(p) for key, p in parts.items()}

    def get_state(self):
        return self._pending[0] if self._pending else self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)
        self._pending = None


class _PackSentences(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, capacity: int):
        super().__init__(parent)
        self._capacity = capacity

    def __iter__(self):
        return _PackIterator(self._parent.__iter__(), self._capacity)


def mlm_dataset(
    source,
    vocab,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    train: bool,
    shard: int = 0,
    shards: int = 1,
    whole_word: bool = False,
    rate: float = 0.15,
    text_key: str = "text",
) -> grain.IterDataset:
    """Masked-LM batches of one shard (BERT, Devlin et al. 2019; whole-word masking, Cui et al.
    2019), with `vocab` a `research.data.wordpiece.BertVocab`.

    Each record's text is tokenised: with whole_word the text must be word-segmented (People's
    Daily's gold words, jieba's in zh_pretrain) and its space-separated words are the masking
    units; without it (raw text such as the reviews, whose spaces are not word boundaries)
    every token is its own unit. Consecutive sentences are packed in order into rows
    [CLS] s1 s2 ... [SEP] of at most seq_len tokens (a sentence longer than seq_len - 2 is cut),
    padded with [PAD], then masked by `masking.mlm_mask`. Row r of a shard draws its masks from
    a generator seeded by (seed, shard, shards, r), so resuming from grain's saved state gives
    the same masks. Train: shuffled, repeated, whole batches. Eval: file order, one pass, masked
    the same way every time; the last batch is padded with empty rows (weights and mask 0).

    Yields {"inputs": [B, L] int32 (corrupted), "targets": [B, L] int32 (original ids),
    "weights": [B, L] float32 (1 at the predicted tokens), "mask": [B, L] bool (real tokens)},
    and for records with a "source" field (zh_pretrain) "source": [B, L] int32, each token's
    record's source (-1 at [CLS], [SEP] and padding).
    """
    if seq_len < 3:
        raise DataError(f"seq_len={seq_len}: a masked-LM row needs [CLS], a token and [SEP]")
    capacity = seq_len - 2

    def tokenize(record):
        text = record_text(record[text_key])
        if whole_word:  # segmented text: its space-separated words are the units
            ids, word_index = vocab.encode_words(text.split())
        else:
            ids = vocab.encode(text)
            word_index = range(len(ids))
        out = {
            "ids": np.asarray(ids[:capacity], np.int32),
            "words": np.asarray(word_index[:capacity], np.int32),
        }
        if "source" in record:  # zh_pretrain: each token remembers its text's source
            out["source"] = np.full(len(out["ids"]), record["source"], np.int32)
        return out

    specials = np.asarray([vocab.pad_id, vocab.cls_id, vocab.sep_id, vocab.mask_id], np.int32)

    def mask(row, rng):
        n = len(row["ids"])
        ids = np.full(seq_len, vocab.pad_id, np.int32)
        ids[: n + 2] = np.concatenate([[vocab.cls_id], row["ids"], [vocab.sep_id]])
        word_index = np.full(seq_len, -1, np.int32)  # [CLS], [SEP], [PAD]: never masked
        word_index[1 : n + 1] = row["words"]
        # Nor a special token written inside the text ("[SEP]" or "[MASK]" in raw text):
        # masking "[MASK]" would ask the model to predict [MASK].
        word_index[np.isin(ids, specials)] = -1
        inputs, targets, weights = masking.mlm_mask(
            ids,
            word_index,
            rng,
            rate=rate,
            mask_id=vocab.mask_id,
            vocab_size=vocab.vocab_size(),
            random_low=vocab.first_regular_id,
        )
        out = {
            "inputs": inputs,
            "targets": targets,
            "weights": weights,
            "mask": np.arange(seq_len) < n + 2,
        }
        if "source" in row:
            out["source"] = np.full(seq_len, -1, np.int32)  # [CLS], [SEP], [PAD]: none
            out["source"][1 : n + 1] = row["source"]
        return out

    ds = shard_records(source, seed=seed, shuffle=train, repeat=train, shard=shard, shards=shards)
    ds = _PackSentences(ds.map(tokenize).to_iter_dataset(READ_IN_THREAD), capacity)
    ds = ds.random_map(mask, seed=stream_seed(seed, shard, shards))
    ds = ds.batch(batch_size, drop_remainder=train)
    if not train:
        fill = {
            "inputs": vocab.pad_id,
            "targets": vocab.pad_id,
            "weights": 0,
            "mask": False,
            "source": -1,
        }
        ds = ds.map(lambda b: pad_batch(b, batch_size, fill))
    return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=2)


def mlm_iterator(
    source,
    vocab,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    train: bool,
    shards: int = 1,
    whole_word: bool = False,
    rate: float = 0.15,
) -> ShardedIterator:
    """This process's rows of every global masked-LM batch (see `mlm_dataset`). In eval, shards
    pack different numbers of rows; the lockstep iterator stops with the shortest shard."""
    return sharded(
        lambda rows, i, n: mlm_dataset(
            source,
            vocab,
            seq_len=seq_len,
            batch_size=rows,
            seed=seed,
            train=train,
            shard=i,
            shards=n,
            whole_word=whole_word,
            rate=rate,
        ),
        batch_size,
        shards,
    )
