"""What bench, plan and experiments share when they report: timing, the machine, and the writers.

Timing: `median_time`, `matmul_peak` (the roofline MFU is quoted against), `decode_program` (a
model's greedy decode loop, ready to time). The machine: `machine_header` (figures are only
comparable on the same machine), `usable_cpus`, `keep_freed_memory`.
Writers: `write_csv`, `format_table` (the markdown tables printed to stdout) and `save_figure`
(the matplotlib boilerplate around each tool's own plot: titles wrapped to fit the canvas). Cells:
`plural` ("1 layer", "2 layers"), `seed_stats` and `mean_std` (mean ± std over seeds; one seed
has no std, and says so instead of a fake "± 0.00").
"""

import contextlib
import csv
import ctypes
import math
import os
import pathlib
import platform
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from research.models import DecoderLM

__all__ = [
    "decode_program",
    "fit_text",
    "format_table",
    "keep_freed_memory",
    "machine_header",
    "matmul_peak",
    "mean_std",
    "median_time",
    "over_seeds",
    "plural",
    "save_figure",
    "seed_stats",
    "usable_cpus",
    "write_csv",
]


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


def decode_program(model: DecoderLM, context: int, steps: int) -> tuple[Callable, tuple]:
    """(decode, args) to time `model`'s greedy decode, batch 1: a random prompt of `context`
    tokens is prefilled here, untimed; decode(*args) runs the `steps` greedy steps that follow as
    one jitted loop and returns (the last token, the cache). Softmax then reads a KV cache of
    the context's length, a recurrent kind updates its state."""
    graphdef, state = nnx.split(model)
    length = context + steps
    prompt = jax.random.randint(jax.random.key(0), (1, context), 0, model.cfg.vocab_size)

    @jax.jit
    def prefill(state, prompt):
        logits, cache = nnx.merge(graphdef, state).prefill(prompt, max_length=length)
        return jnp.argmax(logits, -1).astype(jnp.int32), cache

    @jax.jit
    def decode(state, token, cache):
        model = nnx.merge(graphdef, state)

        def step(_, carry):
            logits, cache = model.decode_step(*carry)
            return jnp.argmax(logits, -1).astype(jnp.int32), cache

        return lax.fori_loop(0, steps, step, (token, cache))

    token, cache = prefill(state, prompt)
    return decode, (state, token, cache)


def matmul_peak(n: int | None = None, dtype=jnp.float32) -> float:
    """Measured FLOP/s of one jitted n x n x n matmul of `dtype` on one device: the roofline MFU
    is quoted against. n defaults to 2048 on a CPU and 8192 on an accelerator (2048 there
    takes tens of microseconds, mostly dispatch, and would understate the peak)."""
    if n is None:
        n = 2048 if jax.default_backend() == "cpu" else 8192
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


def usable_cpus() -> int:
    """The cores this process may run on: fewer than os.cpu_count() under `taskset` (Linux);
    os.cpu_count() where the OS has no affinity call."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_header() -> str:
    dev = jax.devices()[0]
    model = cpu_model()
    usable = usable_cpus()
    cpus = f"cpus {os.cpu_count()}" + (f", {usable} usable" if usable != os.cpu_count() else "")
    cpus += f" ({model})" if model else ""
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


def plural(n: int, word: str, many: str | None = None) -> str:
    """ "1 layer", "2 layers", "1,024 tokens": the count and the word in its number."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def seed_stats(values) -> tuple[float, float]:
    """(mean, std) of one figure over seeds (the population std, as numpy's default). The std of
    a single seed is undefined: NaN, which `mean_std` prints as "(1 seed)" and plots draw as no
    error bar, never a fake 0. No seeds: (NaN, NaN)."""
    v = np.asarray(values, float)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std()) if len(v) > 1 else math.nan


def mean_std(mean: float, std: float, seeds: int, spec: str = ".2f") -> str:
    """A table cell: "12.34 ± 0.56" over several seeds, "12.34 (1 seed)" over one, "-" over
    none."""
    if seeds == 0:
        return "-"
    if seeds == 1:
        return f"{mean:{spec}} ({plural(seeds, 'seed')})"
    return f"{mean:{spec}} ± {std:{spec.lstrip('+')}}"


def over_seeds(seeds: Iterable[int]) -> str:
    """A plot label's spread, from each bar's seed count: "mean ± std over 3 seeds", or "1 seed,
    no std" (no error bars are drawn then)."""
    counts = sorted(set(seeds))
    if counts == [1]:
        return "1 seed, no std"
    n = str(counts[-1]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"mean ± std over {n} seeds"


def _wrap_to(text, limit: float, renderer, extent) -> None:
    """Re-wrap a Text artist's lines (at spaces) until `extent(bbox)` is within `limit` pixels."""
    lines = []
    for line in text.get_text().split("\n"):
        text.set_text(line)
        size = extent(text.get_window_extent(renderer))
        chars = len(line)
        while size > limit and chars > 12:
            chars = min(chars - 1, int(chars * limit / size))
            text.set_text("\n".join(textwrap.wrap(line, max(chars, 12), break_on_hyphens=False)))
            size = extent(text.get_window_extent(renderer))
        lines.append(text.get_text())
    text.set_text("\n".join(lines))


def fit_text(fig, title=None) -> None:
    """Wrap `title` (the figure's suptitle Text) to the canvas width, then, once the layout has
    placed the axes, each axis label longer than its axes to the axes' width (x) or height (y),
    so that nothing is cut at an edge of the saved image or runs into the title."""
    renderer = fig.canvas.get_renderer()
    if title is not None:
        _wrap_to(title, 0.97 * fig.bbox.width, renderer, lambda b: b.width)
    fig.draw_without_rendering()  # runs the layout engine: the axes' final boxes
    for ax in fig.axes:
        box = ax.get_window_extent(renderer)
        _wrap_to(ax.xaxis.label, box.width, renderer, lambda b: b.width)
        _wrap_to(ax.yaxis.label, box.height, renderer, lambda b: b.height)


@contextlib.contextmanager
def save_figure(path: str | pathlib.Path, title: str, ncols: int, figsize, title_size: int = 8):
    """Yield the axes of a 1 x `ncols` figure (Agg backend: no display needed); on exit, title
    it (wrapped to the figure's width), lay it out (constrained layout: room for the title,
    labels and legends outside the axes) and save it to `path` at 120 dpi, exactly the laid-out
    canvas (no tight bounding box that would crop or grow it). The figure is closed either way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize, layout="constrained", dpi=120)
    try:
        yield axes
        fit_text(fig, fig.suptitle(title, fontsize=title_size))
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
