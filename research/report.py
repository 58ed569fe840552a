"""What bench, plan and experiments share when they report: timing, the machine, and the writers.

Timing: `median_time`, `matmul_peak` (the roofline MFU is quoted against). The machine:
`machine_header` (figures are only comparable on the same machine), `keep_freed_memory`.
Writers: `write_csv`, `format_table` (the markdown tables printed to stdout) and `save_figure`
(the matplotlib boilerplate around each tool's own plot).
"""

import contextlib
import csv
import ctypes
import os
import pathlib
import platform
import time
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["format_table", "keep_freed_memory", "machine_header", "matmul_peak", "median_time",
           "save_figure", "write_csv"]  # fmt: skip


def median_time(fn, *args, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of fn(*args) (results blocked on), after `warmup` untimed calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_peak(n: int = 2048, dtype=jnp.float32) -> float:
    """Measured FLOP/s of one jitted n x n x n matmul: the roofline that MFU is quoted against."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    return 2 * n**3 / median_time(f, a, a, repeats=5, warmup=2)


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The CPU's marketing name ("model name" in /proc/cpuinfo), or None where there is none."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return None


def machine_header() -> str:
    dev = jax.devices()[0]
    model = cpu_model()
    cpus = f"cpus {os.cpu_count()}" + (f" ({model})" if model else "")
    return (
        f"device {dev.platform}:{dev.device_kind} x{jax.device_count()} | {cpus} | "
        f"{platform.machine()} | python {platform.python_version()} | jax {jax.__version__}"
    )


def keep_freed_memory() -> str:
    """Ask glibc malloc to keep freed memory in the process (mallopt: mmap threshold 32 MiB, trim
    threshold 2 GiB, top pad 512 MiB) and return a note for the header. By default glibc gives a
    freed 16 MiB buffer back to the OS and the next call page-faults it in again; on this VM that
    added ~25% to chunked linear attention's time and made repeats bimodal. It applies to all
    code in the process (JAX and torch alike), as an LD_PRELOADed tcmalloc would."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "malloc: system (not glibc)"
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
    settings = ((m_mmap_threshold, 32 << 20), (m_trim_threshold, 2**31 - 1), (m_top_pad, 512 << 20))
    if all(libc.mallopt(option, value) == 1 for option, value in settings):
        return "glibc malloc keeps freed memory (mallopt)"
    return "malloc: mallopt refused, system defaults"


def write_csv(path, rows: Iterable[dict], columns: Sequence[str] | None = None) -> None:
    """CSV with a header of `columns` (default: the first row's keys); other keys are left out,
    None is written as an empty cell."""
    rows = list(rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns or rows[0]), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


Format = str | Callable[[object], str]


def format_table(
    rows: Iterable,
    columns: Sequence[str] | None = None,
    formats: Sequence[Format] | None = None,
    align: str | None = None,
) -> str:
    """A markdown table: a header of `columns`, then one line per row. Each format is either a
    str.format template filled from the row's keys ("{length:,}") or a function of the row;
    without formats, rows are dicts of ready cells keyed by column (columns default to the
    first row's keys). `align` has one letter per column, "r" right-aligned ("---:")."""
    rows = list(rows)
    columns = list(columns or rows[0])
    if formats is None:
        formats = [lambda r, c=c: str(r[c]) for c in columns]
    if len(formats) != len(columns) or (align is not None and len(align) != len(columns)):
        raise ValueError("format_table: one format (and align letter) per column")
    rule = "".join("---:|" if a == "r" else "---|" for a in (align or "-" * len(columns)))
    lines = ["| " + " | ".join(columns) + " |", "|" + rule]
    for r in rows:
        cells = (f.format_map(r) if isinstance(f, str) else f(r) for f in formats)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@contextlib.contextmanager
def save_figure(path: str | pathlib.Path, title: str, ncols: int, figsize, title_size: int = 8):
    """Yield the axes of a 1 x `ncols` figure (Agg backend: no display needed); on exit, title
    it, lay it out and save it to `path` at 120 dpi. The figure is closed either way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    try:
        yield axes
        fig.suptitle(title, fontsize=title_size)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
