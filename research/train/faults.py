"""Faults a long run meets, each shown as one line: a full disk, unreadable checkpoints.

Orbax and TensorStore report one failed save or restore from many threads and coroutines (tens of
"Event loop is closed" tracebacks, a 40-line TensorStore spec, "Exception ignored" at shutdown).
`divert_noise(workdir)` sends that noise to WORKDIR/errors.log, with every detail kept, so the
terminal shows the one line the loop raises; any other error still reaches stderr as usual.
"""

import errno
import logging
import pathlib
import sys
import threading
import time
import traceback

from research.config import ConfigError


class NoSpaceLeft(RuntimeError):
    """The disk filled while saving or logging; the checkpoints named in the message are intact
    (research.main exits 3)."""


class UnreadableCheckpoints(ConfigError):
    """Every checkpoint of a workdir is unreadable: refused rather than silently restarted."""


# One failed TensorStore read or write surfaces with these words in many threads at once.
_NOISE = (
    "Event loop is closed",
    "No space left on device",
    "os_error_code='28'",
    "RESOURCE_EXHAUSTED",
    "Encountered error while reading array",
    "Python is likely shutting down",
    "Error opening",
    "Error reading",
    "DATA_LOSS",
)


def is_disk_full(e: BaseException | None) -> bool:
    """Whether `e`, its causes, contexts or group members come from a full disk or an exceeded
    disk quota (ENOSPC or EDQUOT, as Python's OSError or as TensorStore's RESOURCE_EXHAUSTED
    ... os_error_code='28' / '122')."""
    seen = set()
    todo = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(x)
        if any(s in text for s in ("No space left on device", "Disk quota exceeded")):
            return True
        if f"os_error_code='{errno.ENOSPC}'" in text or f"os_error_code='{errno.EDQUOT}'" in text:
            return True
        todo += [x.__cause__, x.__context__, *getattr(x, "exceptions", ())]
    return False


def one_line(e: BaseException, limit: int = 160) -> str:
    """The most specific reason in `e`'s cause chain as one short line (TensorStore specs and
    Orbax's wrapping text dropped)."""
    chain = []
    while e is not None and e not in chain:
        chain.append(e)
        # `raise ... from None` (a JSONDecodeError over a StopIteration) hides the context
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    for x in reversed(chain):  # the innermost error names the file and what was wrong with it
        text = str(x).split("See full TensorStore details")[0].strip().rstrip(".")
        text = " ".join(text.split())
        if text:
            return text if len(text) <= limit else text[: limit - 3] + "..."
    return type(chain[0]).__name__


def _noise(text: str) -> bool:
    return any(word in text for word in _NOISE)


class _Divert:
    """Hooks that write expected-fault noise to a log file instead of stderr."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.lock = threading.Lock()
        self.count = 0
        self.unraisable, self.threading = sys.unraisablehook, threading.excepthook

    def log(self, title: str, text: str) -> None:
        with self.lock:
            self.count += 1
            try:
                with self.path.open("a") as f:
                    f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {title}\n{text}\n")
            except OSError:  # the disk may be the fault: the detail is lost, the line is not
                pass

    def unraisable_hook(self, u):
        text = "".join(traceback.format_exception(u.exc_type, u.exc_value, u.exc_traceback))
        if _noise(text):
            self.log(f"{u.err_msg or 'Exception ignored in'}: {u.object!r}", text)
        else:
            self.unraisable(u)

    def threading_hook(self, args):
        text = "".join(
            traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
        )
        if _noise(text):
            self.log(f"exception in thread {getattr(args.thread, 'name', '?')}", text)
        else:
            self.threading(args)


class _LogFilter(logging.Filter):
    def __init__(self, divert: _Divert):
        super().__init__()
        self.divert = divert

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        if not _noise(text):
            return True
        self.divert.log(f"{record.levelname} {record.name}", text)
        return False


_installed: _Divert | None = None


def divert_noise(workdir: str) -> pathlib.Path | None:
    """Route the thread, coroutine and log noise of expected I/O faults to WORKDIR/errors.log
    for the rest of the process (shutdown included, where most of it is printed). Returns the
    log's path, or None for a remote workdir (gs://...), where nothing is diverted."""
    global _installed
    if "://" in workdir:
        return None
    path = pathlib.Path(workdir).expanduser() / "errors.log"
    if _installed is not None:
        _installed.path = path
        return path
    divert = _installed = _Divert(path)
    sys.unraisablehook = divert.unraisable_hook
    threading.excepthook = divert.threading_hook
    log_filter = _LogFilter(divert)
    for handler in logging.getLogger().handlers:  # absl's handler sits on the root logger
        handler.addFilter(log_filter)
    logging.getLogger().addFilter(log_filter)
    for name in ("absl", "orbax", "asyncio", "concurrent.futures"):
        logging.getLogger(name).addFilter(log_filter)
    return path
