"""What every benchmark records: the machine, versions, and the measured dense-matmul peak."""

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
