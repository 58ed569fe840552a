"""Entry point, intentionally short: parse flags, check the config, start processes, run the loop.

    python -m research.main --config=configs/NAME.py[:PRESET] --workdir=DIR [--config.key=value]

A config with an `experiment` key (for example configs/compare_attention.py) runs that sweep of
training runs from research.experiments instead of a single run.

Re-running with the same --workdir resumes from its newest readable checkpoint. Exit codes:
0 done or preempted (SIGTERM: saved, then stopped), 1 non-finite loss, 2 bad flags or config.
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


def _check_workdir(workdir: str) -> None:
    """A local --workdir must be (or become) a writable directory; URLs (gs://...) are left to
    the checkpointer."""
    if "://" in workdir:
        return
    path = pathlib.Path(workdir).expanduser()
    if path.exists() and not path.is_dir():
        fail(f"--workdir={workdir}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"--workdir={workdir}: {e.strerror or e}")
    if not os.access(path, os.W_OK | os.X_OK):
        fail(f"--workdir={workdir}: not writable")


def main(argv):
    import jax

    from research.data import DataError
    from research.experiments.sweep import Preempted
    from research.train import distributed, loop
    from research.train.config import ConfigError, parse

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax/grain INFO lines would bury the progress bar
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; use --config.key=value to override config keys")
    config = loaded_config(_CONFIG)
    if config is None or not _WORKDIR.value:
        fail("both --config=configs/NAME.py[:PRESET] and --workdir=DIR are required")
    _check_workdir(_WORKDIR.value)
    try:
        # Processes first: validation asks JAX how many devices the run has.
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        if "experiment" in config:  # a sweep of training runs (research.experiments)
            from research.experiments import EXPERIMENTS

            if config.experiment not in EXPERIMENTS:
                raise ConfigError(
                    f"experiment={config.experiment!r}: allowed {', '.join(EXPERIMENTS)}"
                )
            try:
                EXPERIMENTS[config.experiment](config, _WORKDIR.value)
            except Preempted as e:
                if jax.process_index() == 0:
                    print(e, flush=True)
            return 0
        summary = loop.train_and_evaluate(parse(config), _WORKDIR.value)
    except (ConfigError, DataError) as e:
        fail(str(e))
    except loop.NonFiniteLoss as e:
        fail(str(e), code=1)
    if jax.process_index() == 0:
        ev = summary.eval
        state = "preempted: saved and stopped" if summary.preempted else "done"
        nan = float("nan")
        print(
            f"{state} at step {summary.last_step} ({summary.steps_run} steps this run, resumed "
            f"from {summary.resumed_from}); train loss {summary.final_train_loss:.4f}; "
            f"eval loss {ev.get('loss', nan):.4f}, accuracy {ev.get('accuracy', nan):.4f}, "
            f"perplexity {ev.get('perplexity', nan):.2f}; {summary.tokens_per_second:,.0f} tokens/s"
        )
    logging.flush()
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
