"""Which environments start multi-process JAX: a one-host TPU_WORKER_HOSTNAMES does not."""

import pytest

from research.config import ConfigError
from research.train import distributed


def test_only_several_tpu_hosts_start_a_distributed_run(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda *a: calls.append(a))
    monkeypatch.delenv("SEQLAB_COORDINATOR", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    for hosts, starts in (("localhost", False), ("", False), ("t1-w-0,t1-w-1", True)):
        monkeypatch.setenv("TPU_WORKER_HOSTNAMES", hosts)
        calls.clear()
        distributed.initialize()
        assert bool(calls) == starts, hosts


def test_inconsistent_process_flags_are_one_config_error(monkeypatch):
    """A process id out of range gave a traceback; a count or id without a coordinator was
    ignored (each process then trained alone on the same workdir); a non-integer environment
    value gave int()'s traceback. Each is a ConfigError (main: one line, exit 2), before JAX
    starts anything."""
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda *a: calls.append(a))
    for name in ("SEQLAB_COORDINATOR", "SEQLAB_NUM_PROCESSES", "SEQLAB_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="need num_processes >= 1 and 0 <= process_id"):
        distributed.initialize("h:1234", 2, 5)
    with pytest.raises(ConfigError, match="num_processes=2, process_id=1 without a coordinator"):
        distributed.initialize("", 2, 1)
    monkeypatch.setenv("SEQLAB_NUM_PROCESSES", "two")
    with pytest.raises(ConfigError, match="SEQLAB_NUM_PROCESSES='two': must be an integer"):
        distributed.initialize("h:1234", 0, 0)
    assert not calls
