"""One run per workdir: an exclusive lock on WORKDIR/run.lock, held for the life of the process.

The lock is `fcntl.flock` on a local file, so the kernel drops it when its holder dies, however
it dies; the file names the holder ({"pid", "host", "since"}) for the refusal message. A clean
exit empties the file; a holder that died (SIGKILL, a crash) leaves its name behind, and the next
run takes the lock over with one line. The file itself is never deleted: a run that opened it
just before a deletion would lock a file nobody else sees, and two runs would train together.

Multi-process runs take it once, on process 0, and every process learns the outcome. Remote
workdirs (gs://...) are not locked: object stores have no such lock.
"""

import datetime
import fcntl
import json
import os
import socket
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from research.config import ConfigError

_held = []  # the open lock files of this process (closing one would release its lock)


class WorkdirInUse(ConfigError):
    """Another live process trains in this workdir (research.main exits 2)."""


def acquire(workdir: str) -> None:
    """Lock `workdir` for this run or raise WorkdirInUse naming the holder, on every process."""
    if "://" in workdir:
        return
    refusal = _acquire_local(workdir) if jax.process_index() == 0 else ""
    if jax.process_count() > 1:
        refused = multihost_utils.broadcast_one_to_all(np.int32(bool(refusal)))
        if int(refused) and not refusal:
            refusal = f"{workdir} is in use by another run (process 0 says who)"
    if refusal:
        raise WorkdirInUse(refusal)


def _acquire_local(workdir: str) -> str:
    """'' when locked by this process, else the refusal line."""
    path = os.path.join(os.path.expanduser(workdir), "run.lock")
    f = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(f)
        f.close()
        who = (
            (
                f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since "
                f"{holder.get('since', '?')}"
            )
            if holder
            else "another process"
        )
        return (
            f"{workdir} is in use by {who}; wait for that run to end or stop it "
            "(it saves on SIGTERM), or use another --workdir"
        )
    except OSError as e:  # a file system without flock (some NFS mounts): run unlocked
        f.close()
        print(
            f"warning: cannot lock {workdir} ({e.strerror or e}); running unlocked",
            file=sys.stderr,
            flush=True,
        )
        return ""
    previous = _read(f)
    if previous and previous.get("pid") != os.getpid():
        print(
            f"taking over the lock of {workdir} from pid {previous.get('pid')} on host "
            f"{previous.get('host')} (since {previous.get('since')}), which is no longer "
            "running",
            file=sys.stderr,
            flush=True,
        )
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}))
    f.flush()
    _held.append(f)
    return ""


def release() -> None:
    """Empty the lock files of this process and unlock them (a clean exit: no takeover line
    next time). The kernel unlocks them anyway when the process ends."""
    while _held:
        f = _held.pop()
        try:
            f.seek(0)
            f.truncate()
            f.close()
        except OSError:
            pass


def _read(f) -> dict:
    f.seek(0)
    try:
        holder = json.loads(f.read() or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}
