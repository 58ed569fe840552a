"""Output that outlives its terminal: a run whose stdout or stderr is closed keeps training.

A job manager's `kill -- -PGID` ends the pipe readers of a launch (`| tee`, `| head`, a relay)
together with the run, and an ssh session that drops takes the terminal with it. Python then
raises BrokenPipeError (EPIPE) or OSError (EIO) on the next print or progress-bar update, and
the run would die before it saves. `survive_closed_output(workdir)` wraps sys.stdout and
sys.stderr: the first failed write points that file descriptor at WORKDIR/console.log (so C++
logging follows too) and the run goes on, saving on its schedule and on the signal.
"""

import errno
import os
import sys
import time

# EPIPE: the reader is gone; EIO: the terminal hung up; EBADF/ENXIO: the descriptor is gone.
_GONE = (errno.EPIPE, errno.EIO, errno.EBADF, errno.ENXIO)


class _Survivor:
    """A text stream that moves to a log file when its descriptor stops accepting output."""

    def __init__(self, stream, fd: int, log_path: str):
        self._stream, self._fd, self._log_path = stream, fd, log_path
        self.moved = False

    def _move(self, error: OSError) -> None:
        # the workdir is made only once the config is parsed: the reader may go before that
        os.makedirs(os.path.dirname(self._log_path) or ".", exist_ok=True)
        log = open(self._log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the stream
        log.write(
            f"[seqlab] {time.strftime('%Y-%m-%d %H:%M:%S')}: fd {self._fd} was closed "
            f"({error.strerror or error}); its output continues here\n"
        )
        os.dup2(log.fileno(), self._fd)  # C-level writers (absl, XLA) follow the descriptor
        self._stream = log
        self.moved = True

    def _call(self, name, *args):
        try:
            return getattr(self._stream, name)(*args)
        except OSError as e:
            if self.moved or e.errno not in _GONE:
                raise
            self._move(e)
            return getattr(self._stream, name)(*args)

    def write(self, text):
        return self._call("write", text)

    def flush(self):
        return self._call("flush")

    def isatty(self):
        return False if self.moved else self._stream.isatty()

    def __getattr__(self, name):  # encoding, fileno, errors, ...
        return getattr(self._stream, name)


def survive_closed_output(workdir: str) -> None:
    """Wrap sys.stdout and sys.stderr (once); their output moves to WORKDIR/console.log (a
    temporary directory for remote workdirs) when their reader goes away."""
    if isinstance(sys.stdout, _Survivor):
        return
    index = os.environ.get("SEQLAB_PROCESS_ID", "0")
    name = "console.log" if index in ("", "0", "-1") else f"console_{index}.log"
    folder = os.environ.get("TMPDIR", "/tmp") if "://" in workdir else os.path.expanduser(workdir)
    path = os.path.join(folder, name)
    sys.stdout = _Survivor(sys.stdout, 1, path)
    sys.stderr = _Survivor(sys.stderr, 2, path)
