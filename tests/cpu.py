"""The environment of a CPU subprocess (a CLI run, a launcher) started by a test."""

import os

_COUNT = "--xla_force_host_platform_device_count"


def cpu_env(devices: int, **extra: str) -> dict[str, str]:
    """os.environ with JAX on the CPU and `devices` fake devices, plus `extra`.

    The suite's other XLA flags (tests/conftest.py: LLVM at optimisation level 0) are kept. The
    subprocess compiles as fast as the tests do, and shares their persistent compilation cache."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_COUNT)]
    xla = " ".join([*flags, f"{_COUNT}={devices}"])
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla, **extra}
