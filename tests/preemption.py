"""Signal a training command once it has logged a few metrics (preemption and Ctrl-C tests)."""

import functools
import signal
import subprocess
import time


def signal_after_metrics(
    cmd, metrics, lines: int, sig=signal.SIGTERM, **popen
) -> tuple[int, str, str]:
    """Start `cmd`, wait for `lines` lines in the `metrics` file, send it `sig`; (code, out, err).

    The signal goes to `cmd`'s process only (a launcher forwards it to its children itself)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    while proc.poll() is None and not (
        metrics.exists() and metrics.read_text().count("\n") >= lines
    ):
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


sigterm_after_metrics = functools.partial(signal_after_metrics, sig=signal.SIGTERM)
