"""What every benchmark records: the machine, versions, and the measured dense-matmul peak."""

import ctypes
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np


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


def machine_header() -> str:
    dev = jax.devices()[0]
    return (
        f"device {dev.platform}:{dev.device_kind} x{jax.device_count()} | cpus {os.cpu_count()} | "
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
