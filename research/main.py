"""Entry point, intentionally short: parse flags, check the config, start processes, run the loop.

    python -m research.main --config=configs/NAME.py[:PRESET] --workdir=DIR [--config.key=value]

A config with an `experiment` key (for example configs/compare_attention.py) runs that sweep of
training runs from research.experiments instead of a single run.

Re-running with the same --workdir resumes from its newest readable checkpoint; it refuses when the
config changed in a way that changes the training (research.train.loop.SAFE_CONFIG_CHANGES lists
what may change) unless --allow_config_change is given, and when every checkpoint is unreadable
unless --start_fresh is given. One run at a time holds a workdir (WORKDIR/run.lock); a second is
refused with the holder's pid, host and start time.

SIGTERM (preemption), SIGHUP (the terminal went away) or Ctrl-C: save at the end of the current
step and stop; a second Ctrl-C aborts at once, unsaved. A closed stdout or stderr (a pipe reader
killed with the job) does not stop the run: its output moves to WORKDIR/console.log.

The last line of stdout tells how a run ended: "done at step N ..." when it finished,
"interrupted (Ctrl-C): saved at step N ..." or "stopped by SIGTERM: saved at step N ..." when a
signal stopped it (rerun the same command to resume). Exit codes: 0 done, or saved and stopped by
a signal; 1 non-finite loss; 2 bad flags or config, a workdir in use, unreadable checkpoints;
3 no space left on the device (the checkpoints named are intact: free space and rerun); 130
Ctrl-C before training started, or a second Ctrl-C.
"""

import os
import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from research.cli import fail, loaded_config, parse_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:preset]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory; reusing it resumes the run")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "multi-process: host:port of process 0"
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "multi-process: number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "multi-process: this process's index")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "resume even when the config differs from the checkpoint's in keys that change the training "
    "(num_train_steps, optimizer.*, ...); the differences are printed",
)
_START_FRESH = flags.DEFINE_bool(
    "start_fresh",
    False,
    "when every checkpoint of --workdir is unreadable, move them to WORKDIR/unreadable_checkpoints "
    "and train from step 0 (without it such a run is refused)",
)


def _absolute(workdir: str) -> str:
    """A local --workdir as an absolute, normalised path, "~" expanded (Orbax takes absolute
    paths only, and every part of the run must write to the same place); URLs as given."""
    if "://" in workdir:
        return workdir
    return os.path.abspath(os.path.expanduser(workdir))


def _check_workdir(workdir: str) -> None:
    """A local --workdir must be a writable directory, or one that can be made (it is made only
    once the config is known good); URLs (gs://...) are left to the checkpointer."""
    if "://" in workdir:
        return
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        fail(f"--workdir={workdir}: exists and is not a directory")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        fail(f"--workdir={workdir}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"--workdir={workdir}: {existing} is not writable")


def _make_workdir(workdir: str) -> None:
    if "://" not in workdir:
        try:
            pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            fail(f"--workdir={workdir}: {e.strerror or e}")


def main(argv):
    import jax

    from research import tasks
    from research.data import DataError
    from research.experiments.sweep import Preempted
    from research.train import console, distributed, faults, lock, loop
    from research.train.config import ConfigError, parse

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax/grain INFO lines would bury the progress bar
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; use --config.key=value to override config keys")
    config = loaded_config(_CONFIG)
    if config is None or not _WORKDIR.value:
        fail("both --config=configs/NAME.py[:PRESET] and --workdir=DIR are required")
    workdir = _absolute(_WORKDIR.value)
    _check_workdir(workdir)
    console.survive_closed_output(workdir)
    faults.divert_noise(workdir)
    try:
        # Processes first: validation asks JAX how many devices the run has.
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        # A config refused here leaves no workdir behind (a sweep checks its runs as they come).
        run = None if "experiment" in config else parse(config)
        if run is None:
            from research.experiments import EXPERIMENTS, SWEPT
            from research.experiments.sweep import refuse_swept_overrides, start_fresh

            if config.experiment not in EXPERIMENTS:
                raise ConfigError(
                    f"experiment={config.experiment!r}: allowed {', '.join(EXPERIMENTS)}"
                )
            overrides = flags.FLAGS["config"].override_values
            refuse_swept_overrides(config.experiment, overrides, SWEPT[config.experiment])
        _make_workdir(workdir)
        lock.acquire(workdir)
        if run is None:  # a sweep of training runs (research.experiments)
            try:
                with start_fresh(_START_FRESH.value):
                    EXPERIMENTS[config.experiment](config, workdir)
            except Preempted as e:
                if jax.process_index() == 0:
                    print(e, flush=True)
            return 0
        summary = loop.train_and_evaluate(
            run,
            workdir,
            allow_config_change=_ALLOW_CONFIG_CHANGE.value,
            start_fresh=_START_FRESH.value,
        )
    except (ConfigError, DataError) as e:
        fail(str(e))
    except loop.NonFiniteLoss as e:
        fail(str(e), code=1)
    except faults.NoSpaceLeft as e:
        fail(str(e), code=3)
    except OSError as e:  # a full disk outside a save: the lock, run files, a sweep's results
        if not faults.is_disk_full(e):
            raise
        fail(f"the disk filled ({faults.one_line(e)}); nothing saved before is changed", code=3)
    finally:
        lock.release()
    if jax.process_index() == 0:
        line = summary_line(
            summary,
            tokens=tasks.get(run.task).predicts_tokens,
            total_steps=run.train.num_train_steps,
        )
        print(line, flush=True)
    logging.flush()
    return 0


_STOPPED_BY = {
    "SIGINT": "interrupted (Ctrl-C)",
    "SIGTERM": "stopped by SIGTERM",
    "SIGHUP": "stopped by SIGHUP (terminal closed)",
}


def summary_line(summary, *, tokens: bool = True, total_steps: int | None = None) -> str:
    """The last line of a run: "done at step N" when it finished, "interrupted (Ctrl-C): saved
    at step N" or "stopped by SIGTERM: saved at step N" when a signal stopped it (a signal
    that came during the last step's evaluation or save leaves a finished run: "done", with the
    signal named; `total_steps`, the run's num_train_steps, tells). NaN is kept for
    divergence: a run stopped before its first evaluation (or resumed with no step left) says
    so instead of printing nan. `tokens`: a token-level task (perplexity, tokens/s); a
    classifier shows accuracy and examples/s."""
    finished = total_steps is not None and summary.last_step >= total_steps
    if summary.preempted and not finished:
        why = _STOPPED_BY.get(summary.signal, "stopped (another process was signalled)")
        head = f"{why}: saved at step {summary.last_step}"
    elif summary.preempted:
        why = summary.signal or "a signal"
        head = f"done at step {summary.last_step}, {why} after its last step"
    else:
        head = f"done at step {summary.last_step}"
    parts = [
        f"{head} ({summary.steps_run} {_plural(summary.steps_run, 'step')} this run, "
        f"resumed from {summary.resumed_from})"
    ]
    if summary.steps_run:
        parts.append(f"train loss {summary.final_train_loss:.4f}")
    ev = summary.eval
    if ev:
        metrics = [f"eval loss {ev['loss']:.4f}"] if "loss" in ev else []
        if "accuracy" in ev:  # and a task's accuracy per part (mlm on zh_pretrain: per source)
            each = [f"{k[9:]} {v:.4f}" for k, v in ev.items() if k.startswith("accuracy/")]
            by_part = f" ({', '.join(each)})" if each else ""
            metrics.append(f"accuracy {ev['accuracy']:.4f}{by_part}")
        if tokens and "perplexity" in ev:
            metrics.append(f"perplexity {ev['perplexity']:.2f}")
        parts.append(", ".join(metrics))
    else:
        parts.append("no evaluation ran")
    if summary.steps_run:
        parts.append(
            f"{summary.tokens_per_second:,.0f} tokens/s"
            if tokens
            else f"{summary.examples_per_second:,.1f} examples/s"
        )
    return "; ".join(parts)


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


if __name__ == "__main__":
    try:
        app.run(main, flags_parser=parse_flags)
    except KeyboardInterrupt:  # Ctrl-C while no training loop holds SIGINT (start-up, between runs)
        fail("interrupted by Ctrl-C outside training: nothing to save", code=130)
