"""Which environments start multi-process JAX: a one-host TPU_WORKER_HOSTNAMES does not."""

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
