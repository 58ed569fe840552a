"""The training loop's evaluation: the eval split's first eval_steps batches, read in lockstep
on every process (`batches_everywhere`), summed once into the eval row (`evaluate`)."""

import logging

import jax
import numpy as np
from jax.experimental import multihost_utils

from research.data import DataError, shards
from research.train import metrics

TOO_SMALL = "the eval split is too small for one batch; lower batch_size or seq_len"


def evaluate(
    eval_step, state, make_iterator, eval_steps: int, batch_sharding, extra, warn: bool = True
) -> dict:
    """Eval loss over the eval split's first `eval_steps` batches (the same ones every time),
    plus the task's `extra(state, pairs)` metrics. A split holding fewer whole batches is read
    whole (a last partial batch is dropped, but mlm pads it): the result's
    "batches" says how many were read, and a warning (when `warn`: the run's first
    evaluation) says so when fewer than eval_steps."""
    totals, pairs = None, []
    for local in batches_everywhere(iter(make_iterator(False)), eval_steps):
        batch = shards.global_batch(local, batch_sharding)
        pairs.append((local, batch))
        sums = jax.device_get(eval_step(state, batch))
        totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
    if totals is None:
        raise DataError(TOO_SMALL)
    result = {**metrics.summarize(totals), "batches": len(pairs)}
    if warn and len(pairs) < eval_steps and jax.process_index() == 0:
        # with several processes the count is the smallest process's share of the split
        logging.warning(
            "eval: %d whole batches were read, fewer than eval_steps=%d (the eval split, or a "
            "process's share of it, holds no more)",
            len(pairs),
            eval_steps,
        )
    result.update(extra(state, pairs))
    return result


def check_one_batch(make_iterator) -> None:
    """DataError now, before anything compiles or trains, if the eval split cannot give every
    process one whole batch (found at the first evaluation, the run had trained up to it and
    perhaps saved nothing)."""
    if not list(batches_everywhere(iter(make_iterator(False)), 1)):
        raise DataError(TOO_SMALL)


def batches_everywhere(iterator, limit: int, all_have=None):
    """Up to `limit` batches of this process's `iterator`, stopping on every process as soon as
    one has run out: processes reading other shards can hold different numbers of eval batches,
    and one that stopped alone would leave the others waiting in the step's collectives.
    `all_have(have) -> bool`: whether every process has a batch (default: an all-gather)."""
    all_have = all_have or _all_processes_have
    for _ in range(limit):
        local = next(iterator, None)
        if not all_have(local is not None):
            return
        yield local


def _all_processes_have(have: bool) -> bool:
    if jax.process_count() == 1:
        return have
    return bool(np.all(multihost_utils.process_allgather(np.int32(have))))
