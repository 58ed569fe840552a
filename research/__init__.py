"""seqlab: JAX/Flax research code for sequence models."""

import glob
import os

# libtpu (installed by the `test` and `tpu` extras) is started whenever JAX looks for backends,
# and on a machine without TPU chips it prints six lines of errors (no TPU metadata: "E0000 ...
# unexpected worker hostname"). Declaring a one-host machine keeps it quiet. TPU hosts (with
# /dev/accel* or /dev/vfio) and any TPU_* settings of the user's are left alone; AOT compiles for
# a named topology (research.plan) come out the same.
_TPU_ENV = ("TPU_WORKER_HOSTNAMES", "TPU_HOST_BOUNDS", "TPU_ACCELERATOR_TYPE")
if not (glob.glob("/dev/accel*") or os.path.exists("/dev/vfio")) and not any(
    k in os.environ for k in _TPU_ENV
):
    os.environ["TPU_WORKER_HOSTNAMES"] = "localhost"
    os.environ["TPU_HOST_BOUNDS"] = "1,1,1"
