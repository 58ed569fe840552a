"""The training loop, top to bottom: build -> restore -> train/eval/checkpoint -> summary."""

import dataclasses
import math
import signal
import time

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from research.data import DataError, pipeline, sources
from research.train import checkpoint, metrics, optim, sharding, step, tasks
from research.train.config import model_config


class NonFiniteLoss(RuntimeError):
    pass


@dataclasses.dataclass
class Summary:
    steps_run: int
    last_step: int
    final_train_loss: float
    eval: dict
    tokens_per_second: float
    preempted: bool = False
    resumed_from: int = 0


class _Preemption:
    """SIGTERM sets a flag; every process stops at the same step (the flag is all-reduced)."""

    def __init__(self):
        self.flag = False
        self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.flag = True

    def reached(self) -> bool:
        if jax.process_count() == 1:
            return self.flag
        return bool(np.any(multihost_utils.process_allgather(np.asarray(self.flag))))

    def restore(self):
        signal.signal(signal.SIGTERM, self.previous)


def _task_data(c):
    """-> (vocab size, make_iterator(train: bool), seq2seq vocabulary or None) for the task."""
    if c.task == "mqar":
        train_source, eval_source = sources.mqar_sources(c)

        def make(train):
            return pipeline.array_iterator(train_source if train else eval_source,
                                           batch_size=c.batch_size, seed=c.seed, train=train,
                                           shards=c.data.shards)  # fmt: skip

        return c.data.vocab_size, make, None
    if c.task == "seq2seq":
        train_source, eval_source, vocab = sources.seq2seq_sources(c)

        def make(train):
            return pipeline.seq2seq_iterator(train_source if train else eval_source, vocab,
                                             layout=c.seq2seq.layout, src_len=c.seq2seq.src_len,
                                             tgt_len=c.seq2seq.tgt_len, batch_size=c.batch_size,
                                             seed=c.seed, train=train,
                                             shards=c.data.shards)  # fmt: skip

        return vocab.size, make, vocab
    train_source, eval_source, tok = sources.text_sources(c)

    def make(train):
        return pipeline.lm_iterator(train_source if train else eval_source, tok,
                                    seq_len=c.data.seq_len, batch_size=c.batch_size, seed=c.seed,
                                    train=train, shards=c.data.shards)  # fmt: skip

    return tok.vocab_size(), make, None


def _evaluate(eval_step, state, make_iterator, c, batch_sharding, decode=None) -> dict:
    """Eval loss over c.eval_steps batches; for seq2seq also `decode(pairs)` metrics."""
    ds = make_iterator(False)
    totals, pairs = None, []
    for i, local in enumerate(ds):
        if i >= c.eval_steps:
            break
        batch = pipeline.global_batch(local, batch_sharding)
        pairs.append((local, batch))
        sums = jax.device_get(eval_step(state, batch))
        totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
    if totals is None:
        raise DataError("the eval split is too small for one batch; lower batch_size or seq_len")
    result = metrics.summarize(totals)
    if decode is not None:
        result.update(decode(state, pairs))
    return result


def _rate(tokens: float, t0: float | None) -> float:
    """Tokens per second since t0 (0 before the first step has finished)."""
    return 0.0 if t0 is None else tokens / max(time.perf_counter() - t0, 1e-9)


def train_and_evaluate(c, workdir: str) -> Summary:
    # ---- data and model --------------------------------------------------------------------
    mesh = sharding.make_mesh(dict(c.mesh))
    vocab_size, make_iterator, vocab = _task_data(c)
    max_length = c.data.seq_len
    if c.task == "seq2seq":  # UniLM rows hold source + separator + target
        max_length = c.seq2seq.src_len + c.seq2seq.tgt_len + 1
    mcfg = tasks.adapt_model_config(c, model_config(c, vocab_size=vocab_size,
                                                    max_length=max_length))  # fmt: skip
    model = tasks.model_class(c)(mcfg, rngs=nnx.Rngs(params=c.seed, dropout=c.seed + 1))
    model_def, params, consts = step.split_model(model)
    opt = optim.make_optimizer(c.optimizer, c.num_train_steps)
    shardings = step.state_shardings(opt, params, consts, mesh)
    state = step.init_state(opt, params, consts, c.seed, shardings)
    del model, params
    train_iter = make_iterator(True)

    # ---- resume ----------------------------------------------------------------------------
    ckpt = checkpoint.Checkpointer(f"{workdir}/checkpoints", every=c.checkpoint_every_steps,
                                   keep=c.keep_checkpoints)  # fmt: skip
    restored, start = ckpt.restore_latest(checkpoint.abstract(state), train_iter)
    if restored is not None:
        state = restored
        if jax.process_index() == 0:
            print(f"resumed from step {start} in {workdir}", flush=True)

    # ---- compiled steps --------------------------------------------------------------------
    loss_fn = tasks.make_loss(c, vocab=vocab)
    decode = None
    if c.task == "seq2seq":
        from research.train import seq2seq

        def decode(state, pairs):
            return seq2seq.decode_metrics(model_def, state, pairs, vocab, c)

    train_step = step.make_train_step(model_def, opt, loss_fn, mesh=mesh, shardings=shardings,
                                      accum_steps=c.accum_steps)  # fmt: skip
    eval_step = step.make_eval_step(model_def, loss_fn, mesh=mesh, shardings=shardings)
    batch_sharding = sharding.batch_sharding(mesh)
    writer = metrics.MetricWriter(workdir)
    preemption = _Preemption()
    config_json = c.to_dict()

    # ---- train -----------------------------------------------------------------------------
    bar = tqdm(total=c.num_train_steps, initial=start, disable=jax.process_index() != 0,
               desc="train", unit="step", dynamic_ncols=True)  # fmt: skip
    # Throughput counts from the end of this run's first step, so compilation is excluded.
    window, t0, tokens, steps_run = None, None, 0.0, 0
    last_loss, eval_result, preempted, s = float("nan"), {}, False, start
    try:
        for s in range(start + 1, c.num_train_steps + 1):
            batch = pipeline.global_batch(next(train_iter), batch_sharding)
            state, sums = train_step(state, batch)
            sums = jax.device_get(sums)
            last_loss = float(sums["loss_sum"]) / max(float(sums["weight_sum"]), 1.0)
            if not math.isfinite(last_loss):
                # Stop before this state can reach a checkpoint.
                raise NonFiniteLoss(f"non-finite train loss ({last_loss}) at step {s}; "
                                    "stopping without saving this step's state")  # fmt: skip
            steps_run += 1
            if t0 is None:
                t0 = time.perf_counter()
            else:  # every input token is processed, whatever its loss weight
                tokens += c.batch_size * c.data.seq_len
            window = sums if window is None else {k: window[k] + sums[k] for k in sums}
            rate = _rate(tokens, t0)
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{rate:,.0f}")
            if s % c.log_every_steps == 0:
                writer.write(s, "train", {**metrics.summarize(window), "tokens_per_second": rate})
                window = None
            if s % c.eval_every_steps == 0 or s == c.num_train_steps:
                eval_result = _evaluate(eval_step, state, make_iterator, c, batch_sharding, decode)
                writer.write(s, "eval", eval_result)
            saved = ckpt.save(s, state, train_iter, config_json, force=s == c.num_train_steps)
            if preemption.reached():
                if not saved:  # a step the schedule just saved must not be saved twice
                    ckpt.save(s, state, train_iter, config_json, force=True)
                preempted = True
                break
    finally:
        bar.close()
        ckpt.wait()  # pending async saves complete even when a step fails
        ckpt.close()
        writer.close()
        preemption.restore()
    return Summary(steps_run, s, last_loss, eval_result,
                   _rate(tokens, t0), preempted, start)  # fmt: skip
