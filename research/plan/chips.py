"""Published per-chip TPU figures for roofline estimates, and topology names -> devices.

A roofline step time is max(FLOPs / peak FLOP/s, HBM bytes / HBM bandwidth) per chip (+ the
collective bytes over the chip's ICI bandwidth where we know them): a lower bound, not a forecast.
This machine's CPU devices are a 'chip' too (`cpu_chip`), measured, so plans can be run here.
"""

import dataclasses
import os
import re

import jax
import jax.numpy as jnp

from research.report import matmul_peak, median_time


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int
    peak_flops: float  # dense bf16 FLOP/s per chip
    hbm_bandwidth: float  # bytes/s per chip
    ici_bandwidth: float  # bytes/s per chip, all links, one direction
    usable_bytes: int = 0  # what the compiler lets a program use (0: all of hbm_bytes)

    @property
    def limit_bytes(self) -> int:
        """The memory a step must fit in: the compiler's limit (a little below the HBM)."""
        return self.usable_bytes or self.hbm_bytes


GiB = 2**30
# Sources: cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e} "system architecture" tables (2025).
# usable_bytes: the "available HBM" libtpu 0.0.42.1's compiler names when a program exceeds it
# (a 200 GiB program compiled ahead of time for one chip; v4 as one megacore device).
CHIPS = {
    # v4: 32 GiB HBM2, 275 TFLOP/s bf16, 1,200 GB/s HBM. The page gives no per-chip ICI
    # figure (only 24 TB/s bisection per 4,096-chip pod); 300 GB/s one way is our assumption
    # (six links), not a published number: v4 plans' communication times are estimates.
    "v4": Chip("TPU v4", 32 * GiB, 275e12, 1200e9, 300e9, int(30.75 * GiB)),
    # v5e: 16 GiB HBM2e, 197 TFLOP/s bf16, 819 GB/s HBM, 1,600 Gbps ICI per chip.
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12, 819e9, 200e9, int(15.75 * GiB)),
    # v5p: 96 GiB HBM2e (the page says 95 GB; libtpu lets a program use 95.74 GiB, so the
    # stacks hold 96 GiB), 459 TFLOP/s bf16, 2,765 GB/s HBM, 4,800 Gbps ICI per chip.
    "v5p": Chip("TPU v5p", 96 * GiB, 459e12, 2765e9, 600e9, int(95.74 * GiB)),
    # v6e (Trillium): 32 GiB HBM, 918 TFLOP/s bf16, 1,638 GB/s HBM, 800 GB/s bidirectional ICI
    # per chip: 400 GB/s one way, halved as v5e's 400 and v5p's 1,200 are (an earlier version
    # of the page said 3,584 Gbps, which we had used as 448 GB/s one way).
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12, 1638e9, 400e9, int(31.25 * GiB)),
}
MULTISLICE_NOTE = (
    "note: {n} slices: memory is the compiler's for the multislice program, but every "
    "collective byte is costed at ICI bandwidth; traffic between slices crosses the data-center "
    "network (v5p: 50 Gbps per chip, against 600 GB/s ICI one way), which is not modeled, so "
    "the "
    "roofline time is optimistic for any mesh axis that spans slices"
)
_NAME = re.compile(r"^(v4|v5e|v5p|v6e):(\d+)x(\d+)(?:x(\d+))?$")


def parse_topology(name: str) -> tuple[Chip, tuple[int, ...]]:
    """'v5e:16x16' -> (chip, (16, 16)); ValueError naming what is allowed otherwise."""
    m = _NAME.match(name)
    if not m:
        raise ValueError(
            f"topology={name!r}: expected CHIP:AxB[xC] with CHIP one of {', '.join(CHIPS)} "
            "(for example v5e:4x4, v5e:16x16, v5p:4x8x8), or 'cpu' for this machine's devices"
        )
    dims = tuple(int(d) for d in m.groups()[1:] if d is not None)
    if m.group(1) in ("v4", "v5p") and len(dims) != 3:
        raise ValueError(f"topology={name!r}: {m.group(1)} slices are 3-D, for example 4x4x4")
    if m.group(1) in ("v5e", "v6e") and len(dims) != 2:
        raise ValueError(f"topology={name!r}: {m.group(1)} slices are 2-D, for example 16x16")
    return CHIPS[m.group(1)], dims


def tpu_devices(name: str, num_slices: int = 1):
    """Devices of a TPU topology, compiled for on this host (needs libtpu: the `tpu` extra)."""
    _, dims = parse_topology(name)
    from jax.experimental import topologies

    # Compiling needs no chip, so concurrent planners (and test workers) may share libtpu
    # instead of failing on its single-process lockfile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

    # Hosts hold up to 2x2 chips (v5e/v6e 4-chip hosts; v4/v5p 2x2x1).
    bounds = (min(2, dims[0]), min(2, dims[1]), 1)
    try:
        topo = topologies.get_topology_desc(
            platform="tpu",
            topology_name=name,
            # v4's two TensorCores are one device per chip as JAX sees v4 hardware ("default"
            # would plan one device per core against per-chip figures); the others are already.
            chip_config_name="megacore" if name.startswith("v4:") else "default",
            chips_per_host_bounds=bounds,
            num_slices=num_slices,
        )
    except RuntimeError as e:
        if "support not installed" in str(e):
            raise MissingLibtpu() from None
        raise ValueError(f"topology={name!r} is not valid: {str(e).splitlines()[0]}") from None
    return list(topo.devices)


class MissingLibtpu(RuntimeError):
    def __init__(self):
        super().__init__(
            "compiling for TPU needs libtpu: pip install -e '.[tpu]' (installs jax[tpu] at this "
            "project's jax version); --topology=cpu plans for this machine's devices instead"
        )


def cpu_chip(num_devices: int) -> Chip:
    """This machine as a 'chip': RAM, measured matmul FLOP/s and copy bandwidth split over the
    (possibly fake) devices, which share the host's cores and memory, so CPU plans use the same
    roofline arithmetic. (One device's measurement uses the whole host.)"""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    x = jnp.ones((1 << 24,), jnp.float32)
    copy = jax.jit(lambda x: x + 1)
    bandwidth = 2 * x.nbytes / median_time(copy, x, repeats=3)  # read + write
    n = num_devices
    return Chip("cpu", ram // n, matmul_peak(1024) / n, bandwidth / n, float("inf"))


def devices_for(topology: str, num_slices: int = 1):
    """(devices, chip) for 'cpu' (this machine's devices) or a TPU topology name."""
    if num_slices < 1:
        raise ValueError(f"num_slices={num_slices}: must be >= 1")
    if topology == "cpu" and num_slices != 1:
        raise ValueError(f"num_slices={num_slices}: slices are TPU topologies; 'cpu' is one host")
    if topology == "cpu":
        devices = jax.devices("cpu")
        return devices, cpu_chip(len(devices))
    chip, _ = parse_topology(topology)
    return tpu_devices(topology, num_slices), chip
