"""MetricWriter: metrics.jsonl rows and TensorBoard events written synchronously, so a full disk
raises at once instead of hanging a writer thread."""

import errno
import json
import struct

import pytest
import tensorboardX.event_file_writer as efw
from tensorboardX.proto.event_pb2 import Event, SessionLog

from research.train.metrics import MetricWriter


def _events(logdir) -> list:
    """Every Event of the TFRecord files in logdir: [u64 length][u32 crc][data][u32 crc]."""
    out = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            out.append(Event.FromString(data[i + 12 : i + 12 + n]))
            i += 12 + n + 4
    return out


def test_rows_reach_metrics_jsonl_and_tensorboard(tmp_path):
    writer = MetricWriter(tmp_path, purge_after=4)
    writer.write(5, "train", {"loss": 2.5, "tok_s": 100.0})
    writer.write(6, "eval", {"loss": 2.25})
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert rows == [
        {"step": 5, "split": "train", "loss": 2.5, "tok_s": 100.0},
        {"step": 6, "split": "eval", "loss": 2.25},
    ]
    events = _events(tmp_path / "tensorboard")
    assert events[0].file_version == "brain.Event:2"
    # The purge marker: TensorBoard hides earlier-written events of steps >= 5.
    assert events[1].step == 5 and events[1].session_log.status == SessionLog.START
    scalars = [(e.step, v.tag, v.simple_value) for e in events[2:] for v in e.summary.value]
    assert scalars == [(5, "train/loss", 2.5), (5, "train/tok_s", 100.0), (6, "eval/loss", 2.25)]


def test_a_full_disk_while_writing_tensorboard_raises_at_once(tmp_path, monkeypatch):
    """tensorboardX's SummaryWriter wrote from a thread fed by a bounded queue; on a full disk the
    thread died and the next puts blocked forever (a disk-full run hung instead of stopping with
    its one line). Written synchronously, the failure is an OSError in the caller, which the loop
    reports as a full disk; the row already in metrics.jsonl is whole."""
    writer = MetricWriter(tmp_path)
    writer.write(1, "train", {"loss": 1.0})

    def full_disk(self, event):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(efw.EventsWriter, "write_event", full_disk)
    with pytest.raises(OSError) as e:
        writer.write(2, "train", {"loss": 0.5})
    assert e.value.errno == errno.ENOSPC
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [1, 2]


def test_a_training_process_imports_neither_torch_nor_scipy():
    """tensorboardX imports torch when it is installed (the test extra has it): about 2 s of every
    training process's start. The training loop loads tensorboardX without it; torch still
    imports afterwards, for code that wants it. scipy (the GELU fit, PET's AUC) is imported where
    it is used: at import time it cost every CLI process about 0.5 s of CPU."""
    import subprocess
    import sys

    code = (
        "import sys, configs.common, research.main, research.train.loop, research.tasks, "
        "research.experiments; print('torch' in sys.modules, 'scipy' in sys.modules); "
        "import torch; print(torch.ones(1).item())"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["False", "False", "1.0"]


def test_a_losss_token_weighted_values_are_logged_as_means():
    """The remedies report a penalty, a reward or scheduled sampling's teacher-forcing
    probability as value x batch weight, so that sums over batches weigh them by tokens; the
    row gave those sums (0.9 x 640 tokens x 50 steps for a probability of 0.9), not the
    means. "mean/NAME" -> NAME / weight; other keys stay counts."""
    from research.train import metrics

    sums = {"loss_sum": 80.0, "weight_sum": 40.0, "mean/teacher_forcing_prob": 0.9 * 40.0}
    row = metrics.summarize({**sums, "mean/reward": 0.25 * 40.0, "dropped": 3.0})
    assert row["teacher_forcing_prob"] == pytest.approx(0.9)
    assert row["reward"] == pytest.approx(0.25) and row["dropped"] == 3.0
    assert not any(k.startswith("mean/") for k in row)
