"""PET's cloze rows (Schick & Schütze 2021): a pattern's [MASK] slots scored or trained as MLM.

Rows follow `research.data.mlm.mlm_dataset`'s layout (inputs, targets, weights, mask) for
training, so PET trains with the plain MLM loss; evaluation rows carry the slot positions and
the label instead. `pattern` is a `research.data.patterns.Pattern`, `vocab` a
`research.data.wordpiece.BertVocab`.
"""

import grain
import numpy as np

from research.data import masking, patterns
from research.data.shards import (
    batches,
    derived_seed,
    record_text,
    shard_records,
    sharded,
    stream_seed,
)


def _every_record(records, batch_size: int, row_fn):
    """Batches of row_fn(record) over every record once, in order; the last batch is filled by
    repeating its first row with weight 0."""
    rows = []
    for i in range(len(records)):
        rows.append(row_fn(records[i]))
        if len(rows) == batch_size or i == len(records) - 1:
            fill = batch_size - len(rows)
            batch = {k: np.stack([r[k] for r in rows] + [rows[0][k]] * fill) for k in rows[0]}
            batch["weights"] = (np.arange(batch_size) < len(rows)).astype(np.float32)
            yield batch
            rows = []


def eval_row(record, vocab, pattern, *, seq_len: int) -> dict:
    """The pattern applied, no masking: inputs, mask [L], mask_positions [S], labels []."""
    ids, slots = patterns.encode(pattern, record_text(record["text"]), vocab, max_length=seq_len)
    inputs = np.full(seq_len, vocab.pad_id, np.int32)
    inputs[: len(ids)] = ids
    return {
        "inputs": inputs,
        "mask": np.arange(seq_len) < len(ids),
        "mask_positions": np.asarray(slots, np.int32),
        "labels": np.int32(record["label"]),
    }


def train_row(
    record, rng, vocab, pattern, verbalizer_ids, *, seq_len: int, rate: float, labeled: bool
) -> dict:
    """A PET training row (MLM layout: inputs, targets, weights, mask [L]).

    labeled: the pattern applied; every token but [CLS]/[SEP]/slots masked at `rate` (80/10/10);
    the slots hold [MASK] with the label's verbalizer tokens as targets. Unlabeled: [CLS] text
    [SEP] with the random masking only (PET's plain-MLM rows)."""
    text = record_text(record["text"])
    if labeled:
        ids, slots = patterns.encode(pattern, text, vocab, max_length=seq_len)
    else:
        ids = [vocab.cls_id, *vocab.encode(text)[: seq_len - 2], vocab.sep_id]
        slots = []
    ids = np.asarray(ids, np.int32)
    word_index = np.arange(len(ids))
    word_index[[0, len(ids) - 1, *slots]] = -1  # never randomly masked
    # Nor a special token written inside the text ("[MASK]" in a review), as in mlm_dataset:
    # masking it would train the model to predict [MASK].
    specials = [vocab.pad_id, vocab.cls_id, vocab.sep_id, vocab.mask_id]
    word_index[np.isin(ids, specials)] = -1
    if rate > 0:
        inputs, targets, weights = masking.mlm_mask(
            ids,
            word_index,
            rng,
            rate=rate,
            mask_id=vocab.mask_id,
            vocab_size=vocab.vocab_size(),
            random_low=vocab.first_regular_id,
        )
    else:
        inputs, targets, weights = ids.copy(), ids.copy(), np.zeros(len(ids), np.float32)
    if labeled:
        inputs[slots] = vocab.mask_id
        targets[slots] = verbalizer_ids[int(record["label"])]
        weights[slots] = 1.0
    out = {
        "inputs": np.full(seq_len, vocab.pad_id, np.int32),
        "targets": np.full(seq_len, vocab.pad_id, np.int32),
        "weights": np.zeros(seq_len, np.float32),
        "mask": np.arange(seq_len) < len(ids),
    }
    out["inputs"][: len(ids)], out["targets"][: len(ids)] = inputs, targets
    out["weights"][: len(ids)] = weights
    return out


def train_iterator(
    labeled,
    unlabeled,
    vocab,
    pattern,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    rate: float,
    unlabeled_share: float = 0.5,
    shards: int = 1,
):
    """This process's rows of every PET training batch: labeled rows through the pattern, mixed
    with unlabeled plain-MLM rows (`unlabeled_share` of the rows) when `unlabeled` is given."""
    verbalizer_ids = patterns.verbalizer_ids(pattern, vocab)

    def rows(source, is_labeled, i, n, salt):
        # not seed + salt, which gave run s's unlabeled stream run s + 1's labeled one
        salted = derived_seed(seed, salt)
        ds = shard_records(source, seed=salted, shuffle=True, repeat=True, shard=i, shards=n)
        return ds.random_map(
            lambda r, rng: train_row(
                r,
                rng,
                vocab,
                pattern,
                verbalizer_ids,
                seq_len=seq_len,
                rate=rate,
                labeled=is_labeled,
            ),
            seed=stream_seed(salted, i, n),
        )

    def make(rows_per_shard, i, n):
        ds = rows(labeled, True, i, n, 1)  # salts 1, 2: SeedSequence drops a trailing 0
        if unlabeled is not None:
            w = unlabeled_share
            ds = grain.MapDataset.mix([ds, rows(unlabeled, False, i, n, 2)], [1 - w, w])
        return batches(ds, rows_per_shard)

    return sharded(make, batch_size, shards)


def eval_iterator(records, vocab, pattern, *, seq_len: int, batch_size: int, shards: int = 1):
    """This process's rows of PET evaluation batches (`eval_row`, weights 1), in order; the
    last partial batch of each shard is dropped (`shards.batches`)."""

    def make(rows, i, n):
        ds = shard_records(records, seed=0, shuffle=False, repeat=False, shard=i, shards=n)
        ds = ds.map(
            lambda r: {**eval_row(r, vocab, pattern, seq_len=seq_len), "weights": np.float32(1.0)}
        )
        return batches(ds, rows)

    return sharded(make, batch_size, shards)


def eval_batches(records, vocab, pattern, *, seq_len: int, batch_size: int):
    """Every record once through the pattern (last batch padded, weights 0)."""
    return _every_record(
        records, batch_size, lambda r: eval_row(r, vocab, pattern, seq_len=seq_len)
    )
