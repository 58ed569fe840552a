import os

# Tests run on CPU with fp32 matmuls at full precision, the reference for every tolerance here.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

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
