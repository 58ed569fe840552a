"""MetricWriter: metrics.jsonl rows and TensorBoard events, and no hang when TensorBoard's writer
thread dies (a full disk)."""

import errno
import json
import threading

import tensorboardX.event_file_writer as efw

from research.train.metrics import MetricWriter


def test_a_dead_tensorboard_writer_thread_does_not_hang_the_run(tmp_path, monkeypatch):
    """tensorboardX writes events from a thread fed by a queue; once the disk is full that
    thread dies. With its default queue of 10, the 11th add_scalar blocked forever (seen as a
    hung disk-full run). 200 rows x 3 scalars after the thread died must finish, and every row
    must still reach metrics.jsonl."""

    def full_disk(self, event):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = MetricWriter(tmp_path)  # created while there was room
    monkeypatch.setattr(efw.EventsWriter, "write_event", full_disk)
    done = threading.Event()

    def run():
        for step in range(1, 201):
            writer.write(step, "train", {"loss": 1.0 / step, "tok_s": 10.0, "lr": 0.1})
        writer.close()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(timeout=60), "MetricWriter hung after TensorBoard's writer thread died"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == list(range(1, 201))
