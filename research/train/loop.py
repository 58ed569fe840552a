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

from research import tasks
from research.config import RunConfig
from research.data import DataError, pipeline
from research.train import checkpoint, metrics, optim, sharding, step, trained


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


def _evaluate(eval_step, state, make_iterator, eval_steps: int, batch_sharding, extra) -> dict:
    """Eval loss over `eval_steps` batches, plus the task's `extra(state, pairs)` metrics."""
    ds = make_iterator(False)
    totals, pairs = None, []
    for i, local in enumerate(ds):
        if i >= eval_steps:
            break
        batch = pipeline.global_batch(local, batch_sharding)
        pairs.append((local, batch))
        sums = jax.device_get(eval_step(state, batch))
        totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
    if totals is None:
        raise DataError("the eval split is too small for one batch; lower batch_size or seq_len")
    result = metrics.summarize(totals)
    result.update(extra(state, pairs))
    return result


def _rate(tokens: float, t0: float | None) -> float:
    """Tokens per second since t0 (0 before the first step has finished)."""
    return 0.0 if t0 is None else tokens / max(time.perf_counter() - t0, 1e-9)


def train_and_evaluate(run: RunConfig, workdir: str) -> Summary:
    """Train `run` in `workdir` (resuming from its newest checkpoint) and evaluate it."""
    t = run.train
    task = tasks.get(run.task)
    # ---- data and model --------------------------------------------------------------------
    mesh = sharding.make_mesh(run.mesh.as_dict())
    data = task.build_data(run)
    mcfg = task.model_config(run, vocab_size=data.vocab_size, max_length=data.max_length)
    model = task.build_model(run, mcfg, rngs=nnx.Rngs(params=t.seed, dropout=t.seed + 1))
    model_def, params, consts = step.split_model(model)
    opt = optim.make_optimizer(run.optimizer, t.num_train_steps)
    shardings = step.state_shardings(opt, params, consts, mesh)
    state = step.init_state(opt, params, consts, t.seed, shardings)
    del model, params
    train_iter = data.make_iterator(True)
    # What `load_trained` needs to rebuild the model and read its outputs on another machine.
    if jax.process_index() == 0:
        trained.save_run_files(workdir, mcfg, data.vocab)

    # ---- resume ----------------------------------------------------------------------------
    ckpt = checkpoint.Checkpointer(f"{workdir}/checkpoints", every=t.checkpoint_every_steps,
                                   keep=t.keep_checkpoints)  # fmt: skip
    restored, start = ckpt.restore_latest(checkpoint.abstract(state), train_iter)
    if restored is not None:
        state = restored
        if jax.process_index() == 0:
            print(f"resumed from step {start} in {workdir}", flush=True)

    # ---- compiled steps --------------------------------------------------------------------
    loss_fn = task.loss_fn(run, data)

    def eval_model(params, consts):
        return model_def.merge(params, consts, train=False)

    def extra_metrics(state, pairs):
        return task.evaluate(run, data, eval_model, state, pairs)

    train_step = step.make_train_step(model_def, opt, loss_fn, mesh=mesh, shardings=shardings,
                                      accum_steps=t.accum_steps)  # fmt: skip
    eval_step = step.make_eval_step(model_def, loss_fn, mesh=mesh, shardings=shardings)
    batch_sharding = sharding.batch_sharding(mesh)
    writer = metrics.MetricWriter(workdir)
    preemption = _Preemption()
    config_json = run.raw

    # ---- train -----------------------------------------------------------------------------
    bar = tqdm(total=t.num_train_steps, initial=start, disable=jax.process_index() != 0,
               desc="train", unit="step", dynamic_ncols=True)  # fmt: skip
    # Throughput counts from the end of this run's first step, so compilation is excluded.
    window, t0, tokens, steps_run = None, None, 0.0, 0
    last_loss, eval_result, preempted, s = float("nan"), {}, False, start
    try:
        for s in range(start + 1, t.num_train_steps + 1):
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
                tokens += t.batch_size * batch["inputs"].shape[1]
            window = sums if window is None else {k: window[k] + sums[k] for k in sums}
            rate = _rate(tokens, t0)
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{rate:,.0f}")
            if s % t.log_every_steps == 0:
                writer.write(s, "train", {**metrics.summarize(window), "tokens_per_second": rate})
                window = None
            if s % t.eval_every_steps == 0 or s == t.num_train_steps:
                eval_result = _evaluate(eval_step, state, data.make_iterator, t.eval_steps,
                                        batch_sharding, extra_metrics)  # fmt: skip
                writer.write(s, "eval", eval_result)
            saved = ckpt.save(s, state, train_iter, config_json, force=s == t.num_train_steps)
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
