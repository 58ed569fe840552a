import os
import tempfile

# Tests run on CPU with fp32 matmuls at full precision, the reference for every tolerance here.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Eight fake CPU devices for the sharding tests; single-device code simply runs on device 0.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
# The suite is compile-bound (tiny shapes, hundreds of programs): LLVM at optimisation level 0
# compiles about a fifth faster and runs the same operations (no fast-math either way).
# Subprocesses inherit it through the environment.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

# Many tests train the same smoke models in fresh processes: a persistent compilation cache
# (inherited by the subprocesses through the environment) compiles each program once per machine.
# Its key covers the program, devices and flags, so a stale entry is never reused.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "seqlab-test-jax-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# In this process only, XLA:CPU's older elemental emitters. Most in-process programs are single
# eager ops (a model called outside `jit` compiles each operation at each new shape), which these
# emitters compile about twice as fast: tests/ops, tests/models and tests/sampling took about 30%
# less time (docs/training.md). XLA reads XLA_FLAGS once, when its CPU backend starts, so the flag
# is there for that moment only: subprocesses (the CLI runs, the launchers) compile with XLA's
# default emitters, as users' runs do.
_FLAGS = os.environ["XLA_FLAGS"]
os.environ["XLA_FLAGS"] = f"{_FLAGS} --xla_cpu_use_fusion_emitters=false"
jax.devices()  # starts the backend, which reads the flags
os.environ["XLA_FLAGS"] = _FLAGS

jax.config.update("jax_default_matmul_precision", "highest")

# Each new shape compiles once, so examples are few and deadlines off; derandomize keeps CI stable.
settings.register_profile(
    "seqlab",
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("seqlab")


@pytest.fixture(scope="session")
def mlm_workdir(tmp_path_factory):
    """One smoke MLM (configs/mlm.py:smoke, 2 layers) for the BERT-family tests: built once per
    session for all xdist workers (tests/once.py) on People's Daily and the reviews, in its own
    data directory; read-only afterwards (load_trained)."""
    import numpy as np

    from configs import mlm as mlm_config
    from research.train import loop
    from research.train.config import parse
    from tests.once import once

    def build(path):
        c = mlm_config.get_config("smoke")
        c.data.data_dir = str(path / "data")
        summary = loop.train_and_evaluate(parse(c), str(path / "mlm"))
        assert np.isfinite(summary.final_train_loss)

    return once(tmp_path_factory, "zh-smoke-mlm", build)[0] / "mlm"
