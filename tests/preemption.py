"""Signal a training command once it has logged a few metrics (preemption and Ctrl-C tests)."""

import functools
import os
import signal
import subprocess
import time


def signal_after_metrics(
    cmd, metrics, lines: int, sig=signal.SIGTERM, *, group: bool = False, during=None, **popen
) -> tuple[int, str, str]:
    """Start `cmd`, wait for `lines` lines in the `metrics` file, send it `sig`; (code, out, err).

    The signal goes to `cmd`'s process only (a launcher forwards it to its children itself), or
    with `group` to every process of its own new process group, as `timeout`, a job manager's
    stop or `kill -- -PGID` do. `during()` is called just before the signal, while it runs.
    The command starts with `sig` at its default action: a run keeps a signal its parent ignores
    ignored (SIGHUP under nohup, SIGINT in a script's background job), and so would a suite run
    that way."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=group,
        preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL),
        **popen,
    )
    wait_for_lines(proc, metrics, lines)
    if during is not None:
        during()
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def wait_for_lines(proc, path, lines: int) -> None:
    """Wait until `path` has `lines` lines or `proc` has exited."""
    while proc.poll() is None and not (path.exists() and path.read_text().count("\n") >= lines):
        time.sleep(0.05)


sigterm_after_metrics = functools.partial(signal_after_metrics, sig=signal.SIGTERM)
