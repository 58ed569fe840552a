"""Send SIGTERM to a training command once it has logged a few metrics (preemption tests)."""

import signal
import subprocess
import time


def sigterm_after_metrics(cmd, metrics, lines: int, **popen) -> tuple[int, str, str]:
    """Start `cmd`, wait for `lines` lines in the `metrics` file, SIGTERM it; (code, out, err)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    while proc.poll() is None and not (
        metrics.exists() and metrics.read_text().count("\n") >= lines
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err
