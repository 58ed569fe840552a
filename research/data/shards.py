"""The shard machinery of the grain input pipelines: shard -> seeded shuffle -> rows -> batch.

Records are split into `shards` logical shards (record i goes to shard i % shards), each packed
and batched on its own into batch_size/shards rows; a global batch is their rows in shard order.
Process p of n takes global rows [p B/n, (p+1) B/n): it reads the shards that hold them (shards/n
of them when n divides shards, or one shard shared by n/shards processes when fewer) and keeps
its slice. The batches therefore depend on `shards` only, never on the process or device count,
and the iterator's state is kept per logical shard, so a checkpoint saved by n processes
restores on any other count (`ShardedIterator.merge_states`; tests rely on both).
`global_batch` assembles global arrays with `jax.make_array_from_process_local_data`.
The row formats build on it: `research.data.lm` (text windows), `seq2seq`, `mlm`, `cloze`,
`classification`; records that are arrays already (MQAR) batch here (`array_iterator`).
"""

import json
import os
import pathlib
import re

import grain
import jax
import numpy as np

from research.data import DataError

# Every pipeline reads and transforms its records in the iterating thread (research.data.lm and
# mlm add ThreadPrefetch everywhere; MQAR's arrays, seq2seq and cloze go through `batches`, which
# reads ahead on accelerators, one thread per shard dataset; classification neither): the
# per-record work is Python that holds the GIL, and grain's default (16 reader threads, a
# 500-record buffer it scans on every record) made the masked-LM pipeline 3x slower (4,000
# sentences: 4.0 s against 1.2 s) and took 2-2.5x as long to fetch and dispatch MQAR's batches
# (300 steps of 32 rows, 2-core CPU: 4.0 s against 1.6 s) and seq2seq's (200 steps: 2.3 s against
# 1.1 s).
READ_IN_THREAD = grain.ReadOptions(num_threads=0)


def background(ds: grain.IterDataset) -> grain.IterDataset:
    """ds with its next two batches read in one background thread where the steps run on an
    accelerator, so that reading overlaps the step (grain's ThreadPrefetch: the saved state still
    counts only what was consumed, in the same format). On CPU the host is the device and that
    thread takes cores from the step itself (MQAR, 300 steps of 32 rows on 2 cores: the loop took
    14.6 s with it, 12.9 s without), so ds is returned as it is."""
    if jax.default_backend() == "cpu":
        return ds
    return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=2)


def batches(ds: grain.MapDataset, rows: int) -> grain.IterDataset:
    """ds read in the iterating thread (READ_IN_THREAD), in batches of `rows` (a partial last
    batch dropped), read ahead on accelerators (`background`)."""
    return background(ds.to_iter_dataset(READ_IN_THREAD).batch(rows, drop_remainder=True))


def check_shared_data_dir(data_dir: str, wait_seconds: float = 30.0) -> None:
    """On several processes, process 0 builds the datasets and tokenizers in `data_dir` and the
    others read them there, so every process must see the folder process 0 writes. A DataError
    on every process (so none waits on the others) naming the processes that do not, or saying
    that process 0 cannot write there, before anything is built; a process of another host
    reading its own empty folder failed with a KeyError inside tfds. The others look for
    process 0's mark for up to `wait_seconds` (a network file system's cache may be late)."""
    if jax.process_count() == 1:
        return
    import time

    from jax.experimental import multihost_utils

    token = np.random.default_rng().integers(2**31) if jax.process_index() == 0 else 0
    token = int(multihost_utils.broadcast_one_to_all(np.int32(token)))
    folder = pathlib.Path(os.path.expanduser(data_dir))
    mark, problem = folder / f".written-by-process-0-{token}", ""
    try:
        if jax.process_index() == 0:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                mark.write_text("")
            except OSError as e:
                problem = f"process 0 cannot write there ({e.strerror or e})"
        multihost_utils.sync_global_devices("data_dir: written")
        seen = mark.exists()
        deadline = time.monotonic() + wait_seconds
        while not seen and jax.process_index() != 0 and time.monotonic() < deadline:
            time.sleep(1.0)
            seen = folder.is_dir() and mark.name in os.listdir(folder)  # a fresh lookup
        seen = np.asarray(multihost_utils.process_allgather(np.int32(seen))).ravel()
        multihost_utils.sync_global_devices("data_dir: read")
    finally:
        if jax.process_index() == 0:
            mark.unlink(missing_ok=True)
    if seen.all():
        return
    if seen[0] == 0:  # its own write failed (the reason is known on process 0 only)
        what = problem or "process 0 cannot write there"
    else:
        blind = ", ".join(str(i) for i in np.flatnonzero(seen == 0))
        what = f"process(es) {blind} do not see what process 0 writes there"
    raise DataError(
        f"data.data_dir={data_dir}: {what}; on several hosts it must be a folder every host "
        "sees (NFS, a mounted bucket)"
    )


_SHUFFLE = 0x5EED  # tags the shuffle's seeds apart from the random_map streams


def derived_seed(seed: int, *parts: int) -> int:
    """A 31-bit seed drawn from (seed, *parts) by numpy's SeedSequence (seed + salt would give
    run s's salt 1 the stream of run s + 1's salt 0), with room for grain's per-epoch seed + e
    below 2**32. SeedSequence drops trailing zeros ((s, 0) is (s,)): end `parts` with a
    nonzero tag."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0]) % 2**31


def shard_records(source, *, seed: int, shuffle: bool, repeat: bool, shard: int, shards: int):
    """Shard `shard` of `shards` of the records (every shards-th), shuffled and repeated. Each
    shard shuffles with its own seed drawn from (seed, shard, shards): grain shuffles epoch e
    with seed + e, so the run seed itself would give seeds s and s + 1 the same orders one epoch
    apart, and every shard the same permutation (a batch of neighbouring records)."""
    ds = grain.MapDataset.source(source)[shard::shards]
    if repeat and len(ds) == 0:  # it stayed empty, repeated: a bare StopIteration at step 1
        raise DataError(
            f"data shard {shard} of {shards} holds no records: the split has {len(source)}, "
            "fewer than data.shards"
        )
    if shuffle:
        ds = ds.shuffle(seed=derived_seed(seed, shard, shards, _SHUFFLE))
    return ds.repeat() if repeat else ds


def array_dataset(
    source, *, batch_size: int, seed: int, train: bool, shard: int = 0, shards: int = 1
) -> grain.IterDataset:
    """Batches of one shard of records that are already arrays (MQAR)."""
    ds = shard_records(source, seed=seed, shuffle=train, repeat=train, shard=shard, shards=shards)
    return batches(ds, batch_size)


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


def sharded(make_shard, batch_size: int, shards: int) -> ShardedIterator:
    """make_shard(rows, shard, shards) -> dataset, for each shard this process reads."""
    mine, rows, keep = owned_shards(shards, batch_size)
    shards = shards or 1
    return ShardedIterator([make_shard(rows, i, shards) for i in mine], mine, shards, keep)


def array_iterator(
    source, *, batch_size: int, seed: int, train: bool, shards: int = 1
) -> ShardedIterator:
    """This process's rows of every global batch of array records (MQAR)."""
    return sharded(
        lambda rows, i, n: array_dataset(
            source, batch_size=rows, seed=seed, train=train, shard=i, shards=n
        ),
        batch_size,
        shards,
    )


def global_batch(local: dict, sharding) -> dict:
    """Process-local numpy batch -> global jax.Arrays laid out by `sharding` (batch axis split)."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def record_text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def stream_seed(seed: int, shard: int, shards: int) -> int:
    """A per-shard seed for grain's random_map, so shards draw different masks."""
    return int(np.random.SeedSequence([seed, shard, shards]).generate_state(1)[0])


def pad_batch(batch: dict, batch_size: int, fill: dict) -> dict:
    """A final partial eval batch padded to batch_size rows of `fill` values (weights 0)."""
    n = len(next(iter(batch.values())))
    if n == batch_size:
        return batch
    return {
        k: np.concatenate([v, np.full((batch_size - n, *v.shape[1:]), fill[k], v.dtype)])
        for k, v in batch.items()
    }
