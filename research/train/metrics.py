"""Metrics out, from process 0 only: DIR/metrics.jsonl (a JSON object a line) and TensorBoard."""

import contextlib
import json
import logging
import math
import pathlib
import sys
import time

import jax


@contextlib.contextmanager
def _without_torch():
    """tensorboardX's package __init__ imports torch when it is installed (about 2 s per process,
    for its image and graph writers' type checks); the scalar events here need none of it, so
    torch stays unimported while tensorboardX loads (its import then fails and is skipped)."""
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # `import torch` raises ImportError
    try:
        yield
    finally:
        del sys.modules["torch"]


with _without_torch():
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.summary import scalar


def summarize(sums: dict, steps: int = 1) -> dict:
    """Token-weighted sums -> loss, accuracy, perplexity (computed once, after all sums are in);
    grad_norm, summed over `steps` train steps, -> their mean; a loss's "mean/NAME" (a value
    times its batch's weight, as the remedies report a penalty or a reward) -> NAME, the
    token-weighted mean; any other key is a count, summed."""
    weight = max(float(sums["weight_sum"]), 1.0)
    loss = float(sums["loss_sum"]) / weight
    out = {"loss": loss, "tokens": float(sums["weight_sum"])}
    if "correct" in sums:
        out["accuracy"] = float(sums["correct"]) / weight
    out["perplexity"] = math.exp(min(loss, 50.0))
    if "grad_norm" in sums:
        out["grad_norm"] = float(sums["grad_norm"]) / steps
    for k in sums.keys() - {"loss_sum", "weight_sum", "correct", "grad_norm"}:
        name = k.partition("/")[2]
        if k.startswith("correct/") and f"predicted/{name}" in sums:
            # a task's accuracy per part (mlm on zh_pretrain: per source): hits / predicted
            out[f"accuracy/{name}"] = float(sums[k]) / max(float(sums[f"predicted/{name}"]), 1.0)
        elif k.startswith("mean/"):
            out[name] = float(sums[k]) / weight
        elif not k.startswith("predicted/"):
            out[k] = float(sums[k])  # a task's own counts (mlm: "dropped"), summed over batches
    return out


def _rows(path: pathlib.Path):
    """(line, row) of every whole row of a metrics.jsonl; a half-written row (a crash, a full
    disk) is skipped."""
    for line in path.read_text().splitlines(keepends=True) if path.exists() else ():
        try:
            yield line, json.loads(line)
        except ValueError:
            continue


def read_rows(workdir) -> list[dict]:
    """The whole rows of WORKDIR/metrics.jsonl, in order ([] without the file)."""
    return [row for _, row in _rows(pathlib.Path(workdir) / "metrics.jsonl")]


def keep_rows_up_to(workdir, step: int) -> int:
    """Keep the rows of WORKDIR/metrics.jsonl with step <= `step` (the step a run resumes from)
    and append the others, the record of steps about to be trained again, to
    metrics.replaced.jsonl; a half-written last line (a crash, a full disk) is dropped. The file
    is replaced atomically, so a failure here leaves it as it was. Returns the rows moved."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return 0
    keep, moved = [], []
    for line, row in _rows(path):
        if not line.endswith("\n"):
            line += "\n"
        (keep if row.get("step", 0) <= step else moved).append(line)
    if not moved and sum(map(len, keep)) == path.stat().st_size:
        return 0
    if moved:
        with (path.parent / "metrics.replaced.jsonl").open("a") as f:
            f.writelines(moved)
    tmp = path.with_name("metrics.jsonl.tmp")
    tmp.write_text("".join(keep))
    tmp.replace(path)
    return len(moved)


class MetricWriter:
    """Appends rows to WORKDIR/metrics.jsonl and TensorBoard. `purge_after`: the step a run
    resumed from; TensorBoard hides its events of later steps (they are trained again).

    TensorBoard events are written here, synchronously, with tensorboardX's `EventsWriter`
    (one record per scalar), not through its `SummaryWriter`: that one writes from a thread fed
    by a bounded queue, and when a write fails (a full disk) the thread dies and the next puts
    block forever, so a run that should stop with one line hung instead."""

    def __init__(self, workdir, purge_after: int = 0):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.file = self.path.open("ab", buffering=0)  # unbuffered: a failed row is not retried
        logdir = pathlib.Path(workdir) / "tensorboard"
        logdir.mkdir(parents=True, exist_ok=True)
        self.tb = EventsWriter(str(logdir / "events"))
        if purge_after:  # TensorBoard drops the events of later steps written before this one
            self.tb.write_event(
                Event(
                    wall_time=time.time(),
                    step=purge_after + 1,
                    session_log=SessionLog(status=SessionLog.START),
                )
            )
            self.tb.flush()

    def write(self, step: int, split: str, values: dict):
        if not self.enabled:
            return
        row = (json.dumps({"step": step, "split": split, **values}) + "\n").encode()
        end = self.file.seek(0, 2)
        try:
            while row:  # a raw write may take part of the row
                row = row[self.file.write(row) :]
        except OSError:  # a full disk: no half row is left behind
            self.file.truncate(end)
            raise
        now = time.time()
        for k, v in values.items():
            event = Event(wall_time=now, step=step, summary=scalar(f"{split}/{k}", v))
            self.tb.write_event(event)
        self.tb.flush()

    def close(self):
        if not self.enabled:
            return
        self.file.close()
        try:
            self.tb.close()
        except OSError as e:  # its final flush on a full disk: the events file is short
            logging.getLogger(__name__).warning("TensorBoard events not flushed: %s", e)
