"""Multi-process start-up: explicit coordinator, SLURM, Cloud TPU, or a single process (no-op)."""

import os

import jax

from research.config import ConfigError


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: must be an integer") from None


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1):
    """Calls `jax.distributed.initialize` when this is a multi-process run.

    Explicit arguments (or SEQLAB_COORDINATOR / SEQLAB_NUM_PROCESSES / SEQLAB_PROCESS_ID) win;
    otherwise SLURM with more than one task, or a multi-host Cloud TPU, is auto-detected by JAX.
    On CPU, cross-process collectives use gloo. A ConfigError (one line) for inconsistent
    values, and for a process count or id without a coordinator (each process would train
    alone on the same workdir).
    """
    coordinator_address = coordinator_address or os.environ.get("SEQLAB_COORDINATOR", "")
    num_processes = num_processes or _env_int("SEQLAB_NUM_PROCESSES", 0)
    if process_id < 0:
        process_id = _env_int("SEQLAB_PROCESS_ID", -1)
    if not coordinator_address and (num_processes > 0 or process_id >= 0):
        raise ConfigError(
            f"num_processes={num_processes}, process_id={process_id} without a coordinator: "
            "give --coordinator_address=HOST:PORT (or SEQLAB_COORDINATOR) to every process, or "
            "neither (SLURM and multi-host TPUs are found by JAX)"
        )
    if coordinator_address:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ConfigError(
                f"with coordinator {coordinator_address!r}, need num_processes >= 1 and "
                f"0 <= process_id < num_processes, got {num_processes} and {process_id}"
            )
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or _tpu_hosts() > 1:
        jax.distributed.initialize()  # JAX reads the cluster from SLURM / the TPU metadata


def _tpu_hosts() -> int:
    """Hosts named in TPU_WORKER_HOSTNAMES (comma-separated; research/__init__.py sets
    "localhost" off TPU hosts to quiet libtpu). One host needs no distributed start-up."""
    names = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([n for n in names.split(",") if n.strip()])
