"""grain input pipelines: shard -> seeded shuffle -> tokenize -> pack -> batch -> prefetch.

Records are split into `shards` logical shards (record i goes to shard i % shards), each packed
and batched on its own into batch_size/shards rows; a global batch is their rows in shard order.
Process p of n takes global rows [p B/n, (p+1) B/n): it reads the shards that hold them (shards/n
of them when n divides shards, or one shard shared by n/shards processes when fewer) and keeps
its slice. The batches therefore depend on `shards` only, never on the process or device count,
and the iterator's state is kept per logical shard, so a checkpoint saved by n processes
restores on any other count (`ShardedIterator.merge_states`; tests rely on both).
`global_batch` assembles global arrays with `jax.make_array_from_process_local_data`.
"""

import copy
import json
import re

import grain
import jax
import numpy as np

from research.data import DataError, masking
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


def array_dataset(
    source, *, batch_size: int, seed: int, train: bool, shard: int = 0, shards: int = 1
) -> grain.IterDataset:
    """Batches of one shard of records that are already arrays (MQAR)."""
    ds = _records(source, seed=seed, shuffle=train, repeat=train, shard=shard, shards=shards)
    return ds.to_iter_dataset().batch(batch_size, drop_remainder=True)


class DataStateError(ValueError):
    """A saved data-iterator state that does not fit this run (refused, never skipped)."""


def owned_shards(shards: int, global_batch_size: int) -> tuple[range, int, slice]:
    """(the shards this process reads, rows per shard, its rows of their concatenation).
    shards=0, the old default saved in earlier runs' configs, reads as 1."""
    n, p = jax.process_count(), jax.process_index()
    shards = shards or 1
    if shards < 1:
        raise ValueError(f"data.shards={shards}: must be >= 1")
    if global_batch_size % shards or global_batch_size % n:
        raise ValueError(
            f"batch_size={global_batch_size} must be divisible by data.shards={shards}"
            f" and by the {n} processes"
        )
    rows, per = global_batch_size // shards, global_batch_size // n
    lo, hi = p * per, (p + 1) * per
    first, last = lo // rows, (hi - 1) // rows
    return range(first, last + 1), rows, slice(lo - first * rows, hi - first * rows)


class ShardedIterator:
    """Iterates the shard datasets this process reads in lockstep, concatenates their rows and
    keeps this process's slice. State: {"shards": S, "states": {shard index: grain state}}.

    Checkpointable by grain's Orbax handler (get_state -> bytes, set_state, start_prefetch).
    """

    def __init__(self, datasets, shard_ids=None, shards: int | None = None, rows=slice(None)):
        self.iterators = [iter(ds) for ds in datasets]
        self.shard_ids = list(range(len(self.iterators)) if shard_ids is None else shard_ids)
        self.shards = len(self.iterators) if shards is None else shards
        self.rows = rows

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        parts = [next(it) for it in self.iterators]
        return {k: np.concatenate([part[k] for part in parts])[self.rows] for k in parts[0]}

    def get_state(self) -> bytes:
        pairs = zip(self.shard_ids, self.iterators, strict=True)
        states = {str(i): it.get_state() for i, it in pairs}
        return json.dumps({"shards": self.shards, "states": states}).encode()

    def set_state(self, state: bytes):
        saved = json.loads(state)
        if saved["shards"] != self.shards:
            raise DataStateError(
                f"the saved data state has {saved['shards']} logical shards, this run "
                f"{self.shards} (data.shards must not change on resume)"
            )
        for i, it in zip(self.shard_ids, self.iterators, strict=True):
            if str(i) not in saved["states"]:
                raise DataStateError(f"the saved data state has no state for shard {i}")
            it.set_state(saved["states"][str(i)])

    def start_prefetch(self):
        pass

    @staticmethod
    def merge_states(states: list[bytes | str], names: list[str] | None = None) -> bytes:
        """One state holding every shard of several processes' states (any process count).
        `names` (process_P-of-N.json) place an older list-format state, one entry per shard,
        process P owning the P-th block of them."""
        merged, shards = {}, set()
        for k, s in enumerate(states):
            saved = json.loads(s)
            if isinstance(saved, list):  # written before per-shard states: shards = N x len
                p, n = map(int, re.findall(r"\d+", names[k])[-2:])
                states_ = {str(p * len(saved) + i): x for i, x in enumerate(saved)}
                saved = {"shards": n * len(saved), "states": states_}
            shards.add(saved["shards"])
            merged.update(saved["states"])
        if len(shards) != 1:
            raise DataStateError(
                f"the saved data states disagree on the shard count: {sorted(shards)}"
            )
        return json.dumps({"shards": shards.pop(), "states": merged}).encode()


def _sharded(make_shard, batch_size: int, shards: int) -> ShardedIterator:
    """make_shard(rows, shard, shards) -> dataset, for each shard this process reads."""
    mine, rows, keep = owned_shards(shards, batch_size)
    shards = shards or 1
    return ShardedIterator([make_shard(rows, i, shards) for i in mine], mine, shards, keep)


def array_iterator(
    source, *, batch_size: int, seed: int, train: bool, shards: int = 1
) -> ShardedIterator:
    """This process's rows of every global batch of array records (MQAR)."""
    return _sharded(
        lambda rows, i, n: array_dataset(
            source, batch_size=rows, seed=seed, train=train, shard=i, shards=n
        ),
        batch_size,
        shards,
    )


def lm_iterator(
    source, tokenizer, *, seq_len: int, batch_size: int, seed: int, train: bool, shards: int = 1
) -> ShardedIterator:
    """This process's rows of every global LM batch (see the module docstring)."""
    return _sharded(
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
        src, tgt = vocab.encode(record)
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
        ds = _records(source, seed=seed, shuffle=train, repeat=train, shard=i, shards=n)
        return ds.map(example).to_iter_dataset().batch(rows, drop_remainder=True)

    return _sharded(make, batch_size, shards)


def global_batch(local: dict, sharding) -> dict:
    """Process-local numpy batch -> global jax.Arrays laid out by `sharding` (batch axis split)."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


# ----------------------------------------------------------------------------------------------
# BERT: masked-LM pretraining rows and classification examples (`research.data.wordpiece`)
# ----------------------------------------------------------------------------------------------
def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# Records are read and tokenised in the iterating thread (ThreadPrefetch runs it in the
# background): the per-record work is Python that holds the GIL, and grain's default 16 reader
# threads made the masked-LM pipeline 3x slower (4,000 sentences: 4.0 s against 1.2 s).
_READ = grain.ReadOptions(num_threads=0)


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
        ids, words, used, n_words = [], [], 0, 0
        while True:
            if self._pending is None:
                before = self._parent.get_state()
                try:
                    sentence = next(self._parent)
                except StopIteration:
                    if ids:
                        break
                    raise
                self._pending = (copy.deepcopy(before), sentence)
            sentence = self._pending[1]
            n = len(sentence["ids"])
            if ids and used + n > self._capacity:
                break
            if n:
                ids.append(sentence["ids"])
                words.append(sentence["words"] + n_words)  # words of a row stay distinct
                used, n_words = used + n, n_words + int(sentence["words"].max()) + 1
            self._pending = None
        return {"ids": np.concatenate(ids), "words": np.concatenate(words)}

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


def _stream_seed(seed: int, shard: int, shards: int) -> int:
    """A per-shard seed for grain's random_map, so shards draw different masks."""
    return int(np.random.SeedSequence([seed, shard, shards]).generate_state(1)[0])


def _pad_batch(batch: dict, batch_size: int, fill: dict) -> dict:
    """A final partial eval batch padded to batch_size rows of `fill` values (weights 0)."""
    n = len(next(iter(batch.values())))
    if n == batch_size:
        return batch
    return {
        k: np.concatenate([v, np.full((batch_size - n, *v.shape[1:]), fill[k], v.dtype)])
        for k, v in batch.items()
    }


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
    whole_word: bool = True,
    rate: float = 0.15,
    text_key: str = "text",
) -> grain.IterDataset:
    """Masked-LM batches of one shard (BERT, Devlin et al. 2019; whole-word masking, Cui et al.
    2019), with `vocab` a `research.data.wordpiece.BertVocab`.

    Each record's text is tokenised: with whole_word, its space-separated words (People's
    Daily's segmentation) are the masking units; without it, or for text with no space (raw
    reviews), every token is its own unit. Consecutive sentences are packed in order into rows
    [CLS] s1 s2 ... [SEP] of at most seq_len tokens (a sentence longer than seq_len - 2 is cut),
    padded with [PAD], then masked by `masking.mlm_mask`. Row r of a shard draws its masks from
    a generator seeded by (seed, shard, shards, r), so resuming from grain's saved state gives
    the same masks. Train: shuffled, repeated, whole batches. Eval: file order, one pass, masked
    the same way every time; the last batch is padded with empty rows (weights and mask 0).

    Yields {"inputs": [B, L] int32 (corrupted), "targets": [B, L] int32 (original ids),
    "weights": [B, L] float32 (1 at the predicted tokens), "mask": [B, L] bool (real tokens)}.
    """
    if seq_len < 3:
        raise DataError(f"seq_len={seq_len}: a masked-LM row needs [CLS], a token and [SEP]")
    capacity = seq_len - 2

    def tokenize(record):
        text = _text(record[text_key])
        words = text.split()
        if whole_word and len(words) > 1:
            ids, word_index = vocab.encode_words(words)
        else:
            ids = vocab.encode(text)
            word_index = range(len(ids))
        return {
            "ids": np.asarray(ids[:capacity], np.int32),
            "words": np.asarray(word_index[:capacity], np.int32),
        }

    def mask(row, rng):
        n = len(row["ids"])
        ids = np.full(seq_len, vocab.pad_id, np.int32)
        ids[: n + 2] = np.concatenate([[vocab.cls_id], row["ids"], [vocab.sep_id]])
        word_index = np.full(seq_len, -1, np.int32)  # [CLS], [SEP], [PAD]: never masked
        word_index[1 : n + 1] = row["words"]
        inputs, targets, weights = masking.mlm_mask(
            ids,
            word_index,
            rng,
            rate=rate,
            mask_id=vocab.mask_id,
            vocab_size=vocab.vocab_size(),
            random_low=vocab.first_regular_id,
        )
        return {
            "inputs": inputs,
            "targets": targets,
            "weights": weights,
            "mask": np.arange(seq_len) < n + 2,
        }

    ds = _records(source, seed=seed, shuffle=train, repeat=train, shard=shard, shards=shards)
    ds = _PackSentences(ds.map(tokenize).to_iter_dataset(_READ), capacity)
    ds = ds.random_map(mask, seed=_stream_seed(seed, shard, shards))
    ds = ds.batch(batch_size, drop_remainder=train)
    if not train:
        fill = {"inputs": vocab.pad_id, "targets": vocab.pad_id, "weights": 0, "mask": False}
        ds = ds.map(lambda b: _pad_batch(b, batch_size, fill))
    return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=2)


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
        ids = [vocab.cls_id, *vocab.encode(_text(record[text_key]))[: seq_len - 2], vocab.sep_id]
        inputs = np.full(seq_len, vocab.pad_id, np.int32)
        inputs[: len(ids)] = ids
        return {
            "inputs": inputs,
            "mask": np.arange(seq_len) < len(ids),
            "labels": np.int32(record[label_key]),
            "weights": np.float32(1),
        }

    if train:
        ds = _records(source, seed=seed, shuffle=True, repeat=True, shard=shard, shards=shards)
        return ds.map(example).to_iter_dataset(_READ).batch(batch_size, drop_remainder=True)
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
    return ds.to_iter_dataset(_READ).batch(batch_size)


def mlm_iterator(
    source,
    vocab,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    train: bool,
    shards: int = 1,
    whole_word: bool = True,
    rate: float = 0.15,
) -> ShardedIterator:
    """This process's rows of every global masked-LM batch (see `mlm_dataset`). In eval, shards
    pack different numbers of rows; the lockstep iterator stops with the shortest shard."""
    return _sharded(
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
    return _sharded(
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
