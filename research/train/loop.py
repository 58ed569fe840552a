"""The training loop, top to bottom: build -> restore -> train/eval/checkpoint -> summary."""

import dataclasses
import json
import logging
import math
import os
import signal
import time

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from research import tasks
from research.config import ConfigError, RunConfig, defaults
from research.data import shards
from research.models import params as params_io
from research.train import checkpoint, evaluation, faults, metrics, optim, sharding, step, trained


class NonFiniteLoss(RuntimeError):
    pass


@dataclasses.dataclass
class Summary:
    steps_run: int
    last_step: int
    final_train_loss: float
    eval: dict
    tokens_per_second: float  # over training steps alone (no evaluation, save or compile); 0
    # when no step was timed (a run of one step)
    preempted: bool = False
    resumed_from: int = 0
    signal: str = ""  # what stopped a preempted run: "SIGTERM", "SIGINT" (Ctrl-C), "SIGHUP"
    examples_per_second: float = 0.0


class _Preemption:
    """SIGTERM (preemption), SIGHUP (the terminal or ssh session went away) or a first Ctrl-C
    (SIGINT) sets a flag: the loop saves and stops, every process at the same step (the flag is
    all-reduced). A second Ctrl-C kills the process at once, unsaved (the default action; a
    half-written checkpoint is a tmp directory that Orbax removes on the next start)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self):
        self.flag = False
        self.name = ""  # the first signal received, or "" when another process was signalled
        # A signal the process ignores stays ignored: SIGHUP under `nohup` must not stop a run.
        self.previous = {
            sig: signal.signal(sig, self._handle)
            for sig in self.SIGNALS
            if signal.getsignal(sig) is not signal.SIG_IGN
        }

    def _handle(self, signum, frame):
        # No printing here: the handler may interrupt the progress bar's own write to stderr.
        self.flag = True
        self.name = self.name or signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)

    def reached(self) -> bool:
        if jax.process_count() == 1:
            return self.flag
        return bool(np.any(multihost_utils.process_allgather(np.asarray(self.flag))))

    def restore(self):
        for sig, previous in self.previous.items():
            if previous is not None:  # None: installed outside Python, cannot be put back
                signal.signal(sig, previous)


# Config keys that may differ between a checkpoint and the run resuming it without changing what
# is trained: they decide how often the loop logs, evaluates and saves, how many eval batches it
# averages (the metric, not the training), where built data lives (the same data.source builds
# the same data) and how devices are arranged (mesh.*: Orbax reshards the restored state onto the
# new mesh; the math is the same up to reduction order). Everything else changes the training:
# num_train_steps (the learning-rate schedule decays to 0 there), seed, batch_size, accum_steps
# (dropout keys are per microbatch), optimizer.*, model.*, data.* (data.shards fixes which
# examples form each batch and the layout of the saved iterator state) and the task's section.
SAFE_CONFIG_CHANGES = (
    "log_every_steps",
    "eval_every_steps",
    "eval_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "data.data_dir",
    "mesh.",
)


def _is_safe(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in SAFE_CONFIG_CHANGES)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: dict, new: dict) -> dict[str, tuple]:
    """{"optimizer.learning_rate": (saved value, new value)} for every key that differs; both
    configs compared as JSON (as checkpoints store them), "absent" for a key only one has."""
    a, b = _flat(json.loads(json.dumps(saved))), _flat(json.loads(json.dumps(new)))
    pairs = {k: (a.get(k, "absent"), b.get(k, "absent")) for k in sorted(a.keys() | b.keys())}
    declared = _flat(json.loads(json.dumps(defaults().to_dict())))
    return {
        k: (old, new)
        for k, (old, new) in pairs.items()
        if _read(k, old, declared) != _read(k, new, declared)
    }


def _read(key: str, value, declared: dict):
    """A saved value as this version reads it: a key a run was saved without (a later version
    added it, e.g. model.scan_layers or data.document_boundaries) has its declared default,
    which is what that run did; data.shards=0, the old default, is 1."""
    if value == "absent":
        return declared.get(key, "absent")
    return 1 if key == "data.shards" and value == 0 else value


def describe_changes(changes: dict[str, tuple]) -> str:
    """Changes on one line, such as "num_train_steps 300 -> 80, eval_every_steps 6 -> 3";
    long values are cut."""

    def show(v):
        text = v if v == "absent" else repr(v)
        return text if len(text) <= 40 else text[:37] + "..."

    return ", ".join(f"{k} {show(old)} -> {show(new)}" for k, (old, new) in changes.items())


def _rate(amount: float, seconds: float) -> float:
    """amount per second of training time (0 before a step has been timed)."""
    return amount / seconds if seconds > 0 else 0.0


def train_and_evaluate(
    run: RunConfig, workdir: str, *, allow_config_change: bool = True, start_fresh: bool = False
) -> Summary:
    """Train `run` in `workdir` (resuming from its newest checkpoint) and evaluate it.

    Resuming compares `run` with the config the checkpoint was saved with and prints what
    differs. allow_config_change=False (research.main without --allow_config_change) refuses
    with a ConfigError, before anything is written, when a key outside SAFE_CONFIG_CHANGES
    differs. The default resumes anyway: sweeps resume other runs' checkpoints on purpose
    (exposure_bias seeds SCST and MRT with the baseline's) and check their own configs.

    Unreadable checkpoints are moved aside (one line); when none is readable the run is refused
    (faults.UnreadableCheckpoints) unless `start_fresh`. metrics.jsonl keeps the rows up to the
    resumed step; later rows (steps this run trains again) move to metrics.replaced.jsonl, so no
    step is ever listed twice. A full disk raises faults.NoSpaceLeft, one line naming the
    intact checkpoints.
    """
    if "://" not in workdir:  # Orbax takes absolute paths only
        workdir = os.path.abspath(os.path.expanduser(workdir))
    t = run.train
    task = tasks.get(run.task)
    # ---- data and model --------------------------------------------------------------------
    mesh = sharding.make_mesh(run.mesh.as_dict())
    shards.check_shared_data_dir(run.data.data_dir)  # several processes: one data folder
    data = task.build_data(run)
    evaluation.check_one_batch(data.make_iterator)
    mcfg = task.model_config(run, vocab_size=data.vocab_size, max_length=data.max_length)
    sharding.check_tensor_axis(mcfg, mesh)
    opt = optim.make_optimizer(run.optimizer, t.num_train_steps)

    def fresh_start(initialize: bool):
        """(model_def, shardings, state, train iterator) of step 0; `initialize`: load the
        task's pretrained weights (a resume overwrites them, so only a fresh run does). The
        model is built in host memory, then placed by its shardings: built on the default
        device, a 7B model's fp32 parameters (26 GiB) would not fit one v5e chip's 16 GiB
        before FSDP spread them."""
        with jax.default_device(sharding.host_device()):
            model = task.build_model(run, mcfg, rngs=nnx.Rngs(params=t.seed, dropout=t.seed + 1))
            if initialize:
                task.initialize(run, model)
        model_def, params, consts = step.split_model(model)
        shardings = step.state_shardings(opt, params, consts, mesh)
        state = step.init_state(opt, params, consts, t.seed, shardings)
        return model_def, shardings, state, data.make_iterator(True)

    had_checkpoints = bool(params_io.checkpoint_steps(f"{workdir}/checkpoints"))
    if had_checkpoints and not start_fresh:  # a resume: the same token ids, before anything
        trained.check_vocabulary(workdir, data.vocab)
    model_def, shardings, state, train_iter = fresh_start(initialize=not had_checkpoints)

    # ---- resume ----------------------------------------------------------------------------
    ckpt = checkpoint.Checkpointer(
        f"{workdir}/checkpoints", every=t.checkpoint_every_steps, keep=t.keep_checkpoints
    )
    changes = {}  # step -> config changes since that checkpoint

    def check_config(step, saved):
        if saved is None:  # it cannot be shown to be this run: resume only when allowed to
            if not allow_config_change:
                raise ConfigError(
                    f"checkpoint {step} in {ckpt.directory}: its config is unreadable, so it "
                    "cannot be checked against this run's; use another --workdir, or "
                    "--allow_config_change to resume it anyway"
                )
            logging.warning("checkpoint %d: its config is unreadable; not compared", step)
            return
        changes[step] = config_changes(saved, run.raw)
        unsafe = {k: v for k, v in changes[step].items() if not _is_safe(k)}
        if unsafe and not allow_config_change:
            raise ConfigError(
                f"checkpoint {step} in {ckpt.directory} was saved with another config "
                f"({describe_changes(unsafe)}), which changes the training; use the config that "
                "wrote it, another --workdir, or --allow_config_change to resume anyway"
            )

    target = checkpoint.abstract(state)
    if had_checkpoints:  # hold only the restored state, not step 0's beside it (twice the memory)
        state = None
    try:
        restored, start = ckpt.restore_latest(
            target,
            train_iter,
            check_config=check_config,
            start_fresh=start_fresh,
        )
    except BaseException:
        ckpt.close()
        raise
    if restored is None and had_checkpoints:
        # --start_fresh moved unreadable checkpoints aside; the failed restores may have moved
        # the data iterator, and the pretrained weights were not loaded: build step 0 again.
        model_def, shardings, state, train_iter = fresh_start(initialize=True)
    if restored is not None:
        state = restored
        if jax.process_index() == 0:
            print(f"resumed from step {start} in {workdir}", flush=True)
            if changes.get(start):
                print(
                    f"config changed since checkpoint {start}: {describe_changes(changes[start])}",
                    flush=True,
                )
    # What `load_trained` needs to rebuild the model and read its outputs on another machine
    # (after the checks above: a refused resume writes nothing).
    if jax.process_index() == 0:
        trained.save_run_files(workdir, mcfg, data.vocab)
        metrics.keep_rows_up_to(workdir, start)

    # ---- compiled steps --------------------------------------------------------------------
    loss_fn = task.loss_fn(run, data)

    def eval_model(params, consts):
        return model_def.merge(params, consts, train=False)

    def extra_metrics(state, pairs):
        return task.evaluate(run, data, eval_model, state, pairs)

    train_step = step.make_train_step(
        model_def, opt, loss_fn, mesh=mesh, shardings=shardings, accum_steps=t.accum_steps
    )
    eval_step = step.make_eval_step(model_def, loss_fn, mesh=mesh, shardings=shardings)
    batch_sharding = sharding.batch_sharding(mesh)
    writer = metrics.MetricWriter(workdir, purge_after=start)
    preemption = _Preemption()
    config_json = run.raw

    # ---- train -----------------------------------------------------------------------------
    bar = tqdm(
        total=t.num_train_steps,
        initial=start,
        disable=jax.process_index() != 0,
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    # Throughput is over training time alone: each step from the end of the one before (or of
    # the save and evaluation after it); this run's first step (compilation) is not timed.
    window, window_steps, steps_run = None, 0, 0
    clock, train_seconds, tokens, examples = None, 0.0, 0.0, 0.0
    last_loss, eval_result, preempted, s = float("nan"), {}, False, start
    errors = []  # what failed in the loop and while finishing its saves, in order

    def write_window(s: int, rate: float) -> None:
        """A train row over the steps since the previous row of this run: fewer than
        log_every_steps after a resume, at a checkpoint off the log schedule, at the last step,
        or where a signal stopped the run ("steps" says how many). Its throughput is this
        run's so far, absent until a step has been timed. Nothing when no step is pending."""
        nonlocal window
        if window is None:
            return
        row = {**metrics.summarize(window, steps=window_steps), "steps": window_steps}
        if train_seconds > 0:
            row["tokens_per_second"] = rate
        writer.write(s, "train", row)
        window = None

    try:
        for s in range(start + 1, t.num_train_steps + 1):
            batch = shards.global_batch(next(train_iter), batch_sharding)
            state, sums = train_step(state, batch)
            sums = jax.device_get(sums)
            last_loss = float(sums["loss_sum"]) / max(float(sums["weight_sum"]), 1.0)
            # Stop before this state can reach a checkpoint: a non-finite loss (this step's
            # parameters in), or non-finite parameters out of its update (an overflowing step
            # with a finite loss would otherwise be saved, and every resume would start from it).
            if not math.isfinite(last_loss):
                raise NonFiniteLoss(
                    f"non-finite train loss ({last_loss}) at step {s}; "
                    "stopping without saving this step's state"
                )
            if not sums.pop("params_finite"):
                raise NonFiniteLoss(
                    f"non-finite parameters after step {s}'s update (loss {last_loss:.4g}; "
                    "learning rate too high?); stopping without saving this step's state"
                )
            steps_run += 1
            if clock is not None:  # every input token is processed, whatever its loss weight
                train_seconds += time.perf_counter() - clock
                # an encoder-decoder's source too: its inputs are the decoder side alone
                width = batch["inputs"].shape[1] + (batch["src"].shape[1] if "src" in batch else 0)
                tokens += t.batch_size * width
                examples += t.batch_size
            window = sums if window is None else {k: window[k] + sums[k] for k in sums}
            window_steps = 1 if window is sums else window_steps + 1
            rate = _rate(tokens, train_seconds)
            bar.update(1)
            if task.predicts_tokens:
                bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{rate:,.0f}")
            else:  # a classifier: rows per second
                ex_s = _rate(examples, train_seconds)
                bar.set_postfix(loss=f"{last_loss:.4f}", ex_s=f"{ex_s:,.1f}")
            # A scheduled checkpoint is saved before the evaluation, so an evaluation that
            # fails loses no training. The final one is saved after it: a failed final
            # evaluation leaves the run to resume (and evaluate) from the checkpoint before.
            final = s == t.num_train_steps
            if s % t.log_every_steps == 0 or final:
                write_window(s, rate)
            saved = False if final else ckpt.save(s, state, train_iter, config_json)
            if saved:  # a resume from here must find these steps logged
                write_window(s, rate)
            # A stop asked for (SIGTERM's grace period is short) saves before a scheduled
            # evaluation, which the run then skips; the final step's evaluation always runs.
            stopping = not final and s % t.eval_every_steps == 0 and preemption.reached()
            if (s % t.eval_every_steps == 0 or final) and not stopping:
                eval_result = evaluation.evaluate(
                    eval_step,
                    state,
                    data.make_iterator,
                    t.eval_steps,
                    batch_sharding,
                    extra_metrics,
                    warn=not eval_result,  # the same batches every time: say it once
                )
                writer.write(s, "eval", eval_result)
            if final:
                saved = ckpt.save(s, state, train_iter, config_json, force=True)
            if preemption.reached():
                if not saved:  # a step the schedule just saved must not be saved twice
                    ckpt.save(s, state, train_iter, config_json, force=True)
                write_window(s, rate)  # the steps since the last row: a resume starts after
                preempted = True
                break
            clock = time.perf_counter()  # the next step's time starts after the save and eval
    except BaseException as e:
        errors.append(e)
    finally:
        # Pending async saves complete even when a step fails; each closing step runs even
        # when one before it fails (a full disk fails them all). Signals keep setting the flag
        # until the saves are done.
        for finish in (bar.close, ckpt.wait, ckpt.close, writer.close, preemption.restore):
            try:
                finish()
            except Exception as e:  # noqa: BLE001 - reported below, the first one first
                errors.append(e)
    if any(faults.is_disk_full(e) for e in errors):
        raise faults.NoSpaceLeft(ckpt.no_space_message(s)) from None
    if errors:
        for later in errors[1:]:  # a save that also failed must not go unsaid
            logging.error("also, while closing: %s", faults.one_line(later))
        raise errors[0]
    return Summary(
        steps_run,
        s,
        last_loss,
        eval_result,
        _rate(tokens, train_seconds),
        preempted,
        start,
        preemption.name,
        _rate(examples, train_seconds),
    )
