"""Orbax checkpoints: train state, grain iterator state and config, saved together and async.

Layout (MaxText's habit): one CheckpointManager, items "state" (the TrainState pytree), "data"
(the grain iterator, one file per process) and "config" (JSON). Restoring walks back from the
newest step: an unreadable latest checkpoint costs one line and is moved to
WORKDIR/unreadable_checkpoints, not the run; when none is readable the run is refused rather
than silently restarted (`--start_fresh` does that on purpose). The data state is
kept per logical shard (`research.data.shards.ShardedIterator`) and restored from every
process's file, so a run saved by n processes resumes on any process count (elastic restart);
Orbax puts the state into the new mesh's shardings.
"""

import dataclasses
import re
import shutil
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from research.data.shards import DataStateError, ShardedIterator
from research.models.params import array_shapes
from research.train import faults
from research.train.config import ConfigError


class DataHandler(grain.checkpoint.CheckpointHandler):
    """grain's handler (it saves process_P-of-N.json per process); restore merges the shard
    states of every process's file, whatever N was, and the iterator takes the shards it reads."""

    def restore(self, directory, item=None, args=None):
        item = item or args.item
        files = sorted(epath.Path(directory).glob("process_*-of-*.json"))
        if not files:
            raise ValueError(f"no data iterator state in {directory}")
        texts, names = [f.read_text() for f in files], [f.name for f in files]
        item.set_state(ShardedIterator.merge_states(texts, names))
        return item


@ocp.args.register_with_handler(DataHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(DataHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
    item: Any


class Checkpointer:
    def __init__(self, directory, *, every: int, keep: int):
        self.directory = epath.Path(directory)
        # Orbax's default decision policy adds InitialSavePolicy, which saves the first step of a
        # manager that has no checkpoint yet (a step-1 checkpoint nobody asked for). Saves here
        # are the schedule's (every `every` steps), Orbax's own preemption notice (a
        # multi-host preemption sync point, when JAX has one) and what the loop forces (the last
        # step, SIGTERM/SIGINT).
        policy = ocp.checkpoint_managers.AnySavePolicy(
            [
                ocp.checkpoint_managers.FixedIntervalPolicy(every),
                ocp.checkpoint_managers.PreemptionCheckpointingPolicy(),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policy,
            max_to_keep=keep,
            enable_async_checkpointing=True,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": DataHandler(),
                "config": ocp.JsonCheckpointHandler(),
            },
        )

    def save(self, step: int, state, data_iterator, config: dict, *, force: bool = False) -> bool:
        """Starts an async save when `step` is due (or `force`); returns whether it saved."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=DataSave(data_iterator),
            config=ocp.args.JsonSave(config),
        )
        return self.manager.save(step, args=args, force=force)

    def restore_latest(
        self, abstract_state, data_iterator, *, check_config=None, start_fresh: bool = False
    ):
        """(state, step) from the newest readable checkpoint, or (None, 0) when there is none.

        `abstract_state`: ShapeDtypeStructs with shardings, so arrays come back already placed.
        The data iterator's state is restored in place. `check_config(step, saved_config)` is
        called before a checkpoint is restored, with the config it was saved with; it may raise
        (ConfigError) to refuse that checkpoint, and the whole run. A checkpoint whose config is
        unreadable is checked (saved_config None) only once its state has restored: one whose
        state is unreadable too falls back like any other.

        Unreadable checkpoints newer than the one restored are moved to
        WORKDIR/unreadable_checkpoints/STEP (kept for inspection, never overwritten by the
        resumed run's saves) and named in one printed line. When every checkpoint is unreadable
        the run is refused (UnreadableCheckpoints) and nothing is moved, unless `start_fresh`:
        then they are all moved aside and the run starts from step 0.
        """
        unreadable = {}  # step -> one-line reason
        for step in sorted(self.manager.all_steps(), reverse=True):
            self._check_same_layout(step, abstract_state)
            saved = None if check_config is None else self.saved_config(step)
            if saved is not None:
                check_config(step, saved)
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=DataRestore(data_iterator),
                    ),
                )
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: fall back
                refused = _cause(e, DataStateError)
                if refused is not None:  # readable, but not this run's data: never start afresh
                    raise MismatchedCheckpoint(
                        f"checkpoint {step} in {self.directory}: {refused}"
                    ) from None
                if jax.process_count() > 1:
                    # Another process may have read its part and be waiting in Orbax's
                    # collectives: falling back alone would leave the processes at different
                    # steps (a hang), and agreeing first would meet Orbax's own barriers out of
                    # order. This process stops with what to do; the others wait in those
                    # collectives until their timeout.
                    raise faults.UnreadableCheckpoints(
                        f"checkpoint {step} in {self.directory} is unreadable on process "
                        f"{jax.process_index()} ({faults.one_line(e)}); processes cannot fall "
                        f"back one by one: mkdir -p {self.aside} && mv "
                        f"{self.directory / str(step)} {self.aside}/, then rerun to resume from "
                        "the checkpoint before it"
                    ) from None
                unreadable[step] = faults.one_line(e)
                continue
            if check_config is not None and saved is None:  # a readable state, its config not
                check_config(step, None)
            if unreadable:
                where = self._move_aside(unreadable)
                _say(f"{_describe(unreadable)}; moved to {where}; resuming from {step}")
            return restored.state, step
        if unreadable:
            if not start_fresh:
                raise faults.UnreadableCheckpoints(
                    f"every checkpoint in {self.directory} is unreadable ({_describe(unreadable)}"
                    "); nothing was changed. Rerun with --start_fresh to move them to "
                    f"{self.aside} and train from step 0"
                )
            where = self._move_aside(unreadable)
            _say(f"--start_fresh: {_describe(unreadable)}; moved to {where}; training from step 0")
        return None, 0

    @property
    def aside(self) -> epath.Path:
        """Where unreadable checkpoints are kept: WORKDIR/unreadable_checkpoints."""
        return self.directory.parent / "unreadable_checkpoints"

    def _move_aside(self, steps) -> epath.Path:
        """Move checkpoint `steps` to `self.aside` (process 0; every process waits for it)."""
        if jax.process_index() == 0:
            self.aside.mkdir(parents=True, exist_ok=True)
            for step in steps:
                target, n = self.aside / str(step), 1
                while target.exists():  # an earlier fault's copy of the same step stays too
                    target, n = self.aside / f"{step}.{n}", n + 1
                (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("seqlab: unreadable checkpoints moved aside")
        self.manager.reload()
        return self.aside

    def no_space_message(self, step: int) -> str:
        """The one line for a full disk: which save (or step) failed and which steps are intact.
        Removes the half-written step (its space is what the rerun needs; process 0 only)."""
        tmp = list(self.directory.glob("*.orbax-checkpoint-tmp*"))
        partial = sorted(int(p.name.split(".")[0]) for p in tmp if p.name.split(".")[0].isdigit())
        if jax.process_index() == 0:
            for p in tmp:
                shutil.rmtree(p, ignore_errors=True)
        intact = sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
        what = f"saving step {partial[-1]}" if partial else f"writing step {step}'s metrics"
        if len(intact) > 1:
            kept = f"steps {', '.join(map(str, intact))} are intact"
        else:
            kept = f"step {intact[0]} is intact" if intact else "no checkpoint was saved yet"
        return (
            f"no space left on device while {what} in {self.directory}; {kept}; "
            "free space and rerun the same command to resume"
        )

    def saved_config(self, step: int) -> dict | None:
        """The config (JSON) checkpoint `step` was saved with, or None when unreadable."""
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
            )
            return restored.config
        except Exception:  # noqa: BLE001 - unreadable: checked after the state restores
            return None

    def _check_same_layout(self, step: int, abstract_state) -> None:
        """Raise MismatchedCheckpoint if checkpoint `step` holds a state of other array paths or
        shapes than `abstract_state` (a different model or optimizer: restoring it would fail and
        the walk-back would silently start a fresh run beside it). Unreadable metadata is left to
        the restore below, which falls back to an older checkpoint."""
        try:
            saved = array_shapes(self.manager.item_metadata(step)["state"])
        except Exception:  # noqa: BLE001 - unreadable: treated as a corrupt checkpoint
            return
        want = array_shapes(abstract_state)
        if saved == want:
            return
        diff = (set(saved) ^ set(want)) or {k for k in want if saved[k] != want[k]}
        k = min(diff, key=lambda k: (not k.startswith("params"), k))  # a parameter, if one differs
        form = ""
        if _per_layer(saved) != _per_layer(want):  # one side numbers its layers, the other stacks
            form = (
                f"; it holds {'per-layer' if _per_layer(saved) else 'stacked'} layers: "
                f"resume it with model.scan_layers={not _per_layer(saved)}"
            )
        raise MismatchedCheckpoint(
            f"checkpoint {step} in {self.directory} was saved by a different model or optimizer "
            f"({k}: saved {saved.get(k, 'absent')}, this config {want.get(k, 'absent')}){form}; "
            "use another --workdir, or the config that wrote it"
        )

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


_LAYER_NUMBER = re.compile(r"^params/(.+/)?(encoder|layers)/\d+/")


def _per_layer(shapes: dict) -> bool:
    """Whether a state's parameter paths number their layers (unrolled, not scan_layers)."""
    return any(_LAYER_NUMBER.match(k) for k in shapes)


class MismatchedCheckpoint(ConfigError):
    """The workdir holds checkpoints of a differently shaped state (a user mistake: exit 2)."""


def _describe(unreadable: dict) -> str:
    """ "checkpoint 20 is unreadable (reason)" or "checkpoints 24, 20 are unreadable (24: ...)"."""
    if len(unreadable) == 1:
        [(step, why)] = unreadable.items()
        return f"checkpoint {step} is unreadable ({why})"
    steps = ", ".join(map(str, unreadable))
    step, why = next(iter(unreadable.items()))
    return f"checkpoints {steps} are unreadable ({step}: {why})"


def _say(line: str) -> None:
    if jax.process_index() == 0:
        print(line, file=sys.stderr, flush=True)


def _cause(e: BaseException, kind: type) -> BaseException | None:
    """e or the first exception of `kind` in its cause/context chain (Orbax wraps errors)."""
    while e is not None and not isinstance(e, kind):
        e = e.__cause__ or e.__context__
    return e


def abstract(state):
    """ShapeDtypeStructs (with shardings) describing a state pytree, for restore targets."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
