"""One point of a sweep: an ordinary training run in its own directory, cached as result.json."""

import contextlib
import contextvars
import copy
import fnmatch
import json
import math
import pathlib

import jax
from ml_collections import ConfigDict

from research.models import params as params_io
from research.train import loop, metrics
from research.train.config import ConfigError, parse
from research.train.trained import load_trained

# research.main's --start_fresh for every point's run (contextvar: set by `start_fresh`).
_START_FRESH = contextvars.ContextVar("sweep_start_fresh", default=False)


@contextlib.contextmanager
def start_fresh(value: bool):
    """Points trained inside start over when every checkpoint of theirs is unreadable (the
    refusal's advice, --start_fresh, then works for a sweep too); a finished point is reused
    and a readable partial one resumes either way."""
    token = _START_FRESH.set(bool(value))
    try:
        yield
    finally:
        _START_FRESH.reset(token)


class Preempted(Exception):
    """SIGTERM during a point: its run saved a checkpoint and stopped; the sweep stops too and
    rerunning the same command resumes that point (no result.json was written for it)."""


def is_finished(out: pathlib.Path) -> bool:
    """Whether `out` holds a finished point (its result.json), which train_point reuses."""
    return (pathlib.Path(out) / "result.json").exists()


def start_message(out: pathlib.Path, doing: str) -> str:
    """The line an experiment logs before train_point(..., out, ...): "DOING in OUT" when the run
    will train (or resume a partial run), "reusing the finished run in OUT" when out/result.json
    is there and nothing will train."""
    return f"reusing the finished run in {out}" if is_finished(out) else f"{doing} in {out}"


def point_config(c, base: ConfigDict, seed: int, **sections) -> ConfigDict:
    """One point's training config: a copy of `base` with the experiment's seed and data.

    Args:
      c: the experiment's config (its `data` section is copied into the point).
      base: the training config the point starts from (e.g. the experiment's `classify`).
      seed: the point's seed.
      **sections: per-section overrides, e.g. classify=dict(init=...).

    Returns:
      A new, unlocked ConfigDict; `base` and `c` are left unchanged.
    """
    pc = copy.deepcopy(base)
    pc.unlock()
    pc.seed = seed
    pc.data = copy.deepcopy(c.data)
    for name, values in sections.items():
        pc[name].update(values)
    return pc


def seeded_points(*sections: str, **kept: str) -> dict[str, str]:
    """The keys `point_config` sets for every point built from these sections of the experiment's
    config (their seed and data), plus `kept` (a section's key -> the experiment's key to use
    instead): an experiment's SWEPT entries."""
    out = {}
    for name in sections:
        out[f"{name}.seed"] = "use --config.seeds"
        out[f"{name}.data.*"] = "every point reads the experiment's data: use --config.data.KEY"
    return out | {k: f"use --config.{v}" for k, v in kept.items()}


def refuse_swept_overrides(experiment: str, overrides, swept: dict[str, str]) -> None:
    """ConfigError for a --config.KEY override of a key the sweep sets for every point, which it
    would overwrite without a word. overrides: the dotted keys given on the command line;
    swept: fnmatch pattern -> what to use instead (the experiment module's SWEPT)."""
    for key in overrides:
        for pattern, instead in swept.items():
            if fnmatch.fnmatchcase(key, pattern):
                raise ConfigError(
                    f"--config.{key}: the {experiment} experiment sets it for every point, so "
                    f"the override would be lost; {instead}"
                )


def check_keeps_every_checkpoint(
    c: ConfigDict, names: tuple[str, ...], reader: str = "the best-validation selection"
) -> None:
    """ConfigError unless each run c[name] keeps all its checkpoints (one every
    checkpoint_every_steps and the last) plus one spare for the save a stop (SIGTERM) and
    resume adds: a selection over them (best validation step) must not lose the early ones."""
    for name in names:
        run = c[name]
        every, steps, keep = run.checkpoint_every_steps, run.num_train_steps, run.keep_checkpoints
        for key, value in (("checkpoint_every_steps", every), ("num_train_steps", steps)):
            if not (isinstance(value, int) and value > 0):
                raise ConfigError(f"{name}.{key}={value!r}: must be a positive int")
        need = math.ceil(steps / every) + 1
        if keep < need:
            raise ConfigError(
                f"{name}.keep_checkpoints={keep} is too few for {reader}: "
                f"{steps} steps save {need - 1} checkpoints (one every {every} and the last), "
                f"plus one if the run is stopped and resumed; set {name}.keep_checkpoints="
                f"{need} or a larger {name}.checkpoint_every_steps"
            )


def cached_result(out: pathlib.Path, fn, keys=(), inputs: dict | None = None) -> dict:
    """fn()'s JSON result, cached in out/accuracy.json (read back instead of calling fn).

    Args:
      out: the directory of the cache file (created when missing).
      fn: a function of no arguments returning a JSON-serialisable dict.
      keys: keys the result must have; a cache missing one (written by a run that asked for
        less, e.g. fewer depths) is computed again and replaced.
      inputs: what fn's result depends on beyond the run in `out` (a pattern, a model, the
        data), stored beside it; a cache written for other inputs is computed again.

    Returns:
      The cached dict, or fn()'s (written atomically by process 0).
    """
    path = out / "accuracy.json"
    inputs = None if inputs is None else json.loads(json.dumps(inputs))  # as JSON reads back
    if path.exists():
        cached = json.loads(path.read_text())
        if all(k in cached for k in keys) and cached.pop("_inputs", None) == inputs:
            return cached
    result = fn()
    if jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        stored = result if inputs is None else {**result, "_inputs": inputs}
        tmp.write_text(json.dumps(stored))
        tmp.replace(path)
    return result


def pretrain_first(init: str, pre, workdir: pathlib.Path, log) -> str:
    """The pretrained BERT an experiment starts from: `init` when given; otherwise the MLM config
    `pre` trained first in workdir/pretrain (reused when finished), as "workdir:PATH"."""
    if init:
        return init
    log(start_message(workdir / "pretrain", "pretraining the MLM"))
    train_point(pre, workdir / "pretrain", {"setting": "pretrain"})
    return f"workdir:{workdir / 'pretrain'}"


def train_point(pc, out: pathlib.Path, meta: dict, *, allow_config_change: bool = False) -> dict:
    """Train config `pc` in `out` (resuming a partial run) unless out/result.json exists.

    A run with a non-finite loss is a result too (eval NaN, with the reason in "note"), so one
    diverging point does not stop the sweep. `meta` is stored with the result. A partial run
    saved with another config (beyond the loop's safe keys) is refused, as a finished one is:
    it would train on under the new config and be stored as if all of it had.
    `allow_config_change`: resume it anyway (a checkpoint seeded from another run on purpose).
    """
    result_path = out / "result.json"
    if result_path.exists():
        saved = json.loads(result_path.read_text())
        # Compared as the checkpoints are: a key saved before it existed reads as its default.
        changes = loop.config_changes(saved["config"], pc.to_dict())
        if changes:
            what = loop.describe_changes(changes)
            raise ConfigError(
                f"{out} holds a run with a different config ({what}); use a new --workdir"
            )
        return saved
    summary = None
    try:
        run = parse(pc)
        summary = loop.train_and_evaluate(
            run,
            str(out),
            allow_config_change=allow_config_change,
            start_fresh=_START_FRESH.get(),
        )
        finished = summary.last_step == run.train.num_train_steps
        if summary.preempted and not finished:  # a partial run is not a result
            raise Preempted(
                f"preempted in {out} at step {summary.last_step} (saved); rerun the "
                "same command to resume the sweep there"
            )
        ev, rate, note = summary.eval, summary.tokens_per_second, ""
        if summary.steps_run == 0:  # finished before, stopped before result.json was written
            ev, rate = logged_result(out, summary.last_step)
    except loop.NonFiniteLoss as e:
        ev, rate, note = {"accuracy": math.nan, "loss": math.nan}, math.nan, str(e)
        print(f"  {out.name}: {e}", flush=True)
    result = {
        "point": meta,
        "config": pc.to_dict(),
        "eval": ev,
        "tokens_per_second": rate,
        "note": note,
    }
    if jax.process_index() == 0:
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(result_path)  # atomic: a killed sweep never leaves a half-written result
    if summary is not None and summary.preempted:  # stopped after its last step: the sweep stops
        raise Preempted(
            f"stopped in {out} after its last step (its result is saved); rerun the same "
            "command to go on with the sweep"
        )
    return result


def logged_result(out: pathlib.Path, last_step: int) -> tuple[dict, float]:
    """(eval, tokens/s) of a run that finished in an earlier process, from its metrics.jsonl: the
    eval row at its last step and the last train row's throughput. A ConfigError if the log
    lacks that eval row (written by process 0 only)."""
    rows = metrics.read_rows(out)  # a row cut by a kill is skipped
    evals = [r for r in rows if r["split"] == "eval" and r["step"] == last_step]
    if not evals:
        raise ConfigError(
            f"{out} holds a finished run (step {last_step}) without its result.json or its "
            "final evaluation in metrics.jsonl; rerun with a new --workdir"
        )
    ev = {k: v for k, v in evals[-1].items() if k not in ("step", "split")}
    rates = [
        r["tokens_per_second"] for r in rows if r["split"] == "train" and "tokens_per_second" in r
    ]
    return ev, rates[-1] if rates else math.nan


def best_validation(out: pathlib.Path, accuracy, every: int | None = None) -> dict:
    """The reference's model selection: accuracy (validation, test) at every kept checkpoint of
    run `out` on the schedule (each cached in out/eval_step{N}), reported at the step of best
    validation accuracy (the earliest of equals), with the final step's beside it.

    Args:
      out: a trained run's workdir.
      accuracy: (model, vocab) -> {"validation": %, "test": %}.
      every: the run's checkpoint_every_steps: only its multiples and the final step are
        candidates, so a checkpoint a stop (SIGTERM, Ctrl-C) saved off the schedule cannot make
        an interrupted run choose differently from an uninterrupted one; each of them must be
        there (its checkpoint, or its cached evaluation), else a ConfigError names the missing
        (checkpoints deleted by keep_checkpoints after several stops, or saved on another
        schedule): choosing among the rest would be another selection. None: every step.

    Returns:
      validation, test (at the best validation step), best_step, validation_final, test_final,
      final_step.
    """
    steps = params_io.checkpoint_steps(out / "checkpoints")
    if not steps:
        raise ConfigError(f"{out}: no checkpoints to select from")
    if every is not None:
        scheduled = [*range(every, steps[-1], every), steps[-1]]
        missing = [
            s
            for s in scheduled
            if s not in steps and not (out / f"eval_step{s}" / "accuracy.json").exists()
        ]
        if missing:
            raise ConfigError(
                f"{out}: no checkpoint at steps {missing} of its schedule (one every {every}), "
                "so the best-validation selection cannot read them (deleted by keep_checkpoints "
                "after stops, or saved on another checkpoint_every_steps); delete that run "
                f"(rm -r {out}) and rerun: the experiment trains it again, the other points kept"
            )
        steps = scheduled
    acc = {
        s: cached_result(
            out / f"eval_step{s}", lambda s=s: accuracy(*load_trained(out, step=s)[:2])
        )
        for s in steps
    }
    best = max(steps, key=lambda s: (acc[s]["validation"], -s))
    return {
        "validation": acc[best]["validation"],
        "test": acc[best]["test"],
        "best_step": best,
        "validation_final": acc[steps[-1]]["validation"],
        "test_final": acc[steps[-1]]["test"],
        "final_step": steps[-1],
    }
