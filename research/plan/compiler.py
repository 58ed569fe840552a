"""Compile one jitted step ahead of time and read XLA's per-device figures into a `Plan`."""

import dataclasses
import math
import re
import time

import jax

from research.ops.attention.common import target_backend
from research.plan.chips import Chip


@dataclasses.dataclass
class Plan:
    """Per-device compiler figures for one compiled step."""

    name: str  # "train" | "eval" | "decode"
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written into donated arguments (counted once)
    temp_bytes: int
    flops: float
    bytes_accessed: float
    compile_seconds: float
    note: str = ""  # set when the compiler refused (out of memory): its own message
    model_flops: float = 0.0  # analytic FLOPs per device per step (train: `model_flops`)
    remat_flops: float = 0.0  # analytic forward FLOPs recomputed by remat (`remat_flops`)
    collective_bytes: float = 0.0  # FSDP / data-parallel bytes over ICI per device per step

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    def roofline_seconds(self, chip: Chip) -> float:
        """max(FLOPs / peak, HBM bytes / HBM bandwidth, collective bytes / ICI bandwidth).

        FLOPs: the larger of XLA's count and the analytic model + remat FLOPs; XLA counts a
        loop body (scanned layers, blockwise attention) once, whatever its trip count, and does
        not see inside a Pallas kernel."""
        flops = max(self.flops, self.model_flops + self.remat_flops)
        return max(
            flops / chip.peak_flops,
            self.bytes_accessed / chip.hbm_bandwidth,
            self.collective_bytes / chip.ici_bandwidth,
        )

    def mfu_bound(self, chip: Chip) -> float:
        """Model FLOPs utilisation at the roofline time: an upper bound (the roofline is a
        lower bound on the step time)."""
        t = self.roofline_seconds(chip)
        return self.model_flops / (t * chip.peak_flops) if t > 0 else math.nan


def _shard_bytes(tree) -> int:
    """Bytes one device holds of abstract arrays with shardings (the largest shard)."""
    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
    )


_OOM = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\)")


def compile_for_devices(name, fn, *args) -> tuple[Plan, object]:
    """(Plan, compiled) of jitted `fn` lowered for abstract `args` (whose shardings name the
    devices); compiled is None when the compiler ran out of memory (the Plan says by how much)."""
    t0 = time.perf_counter()
    platform = next(iter(jax.tree.leaves(args)[0].sharding.device_set)).platform
    try:
        with target_backend(platform):  # the target's block sizes, not the host's
            lowered = fn.lower(*args)
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        # The TPU compiler stops when the program exceeds the usable HBM; its figure ("required
        # for HLO temporaries") is the whole live set, arguments and outputs included (a
        # donated 20 GiB argument doubled in place: 20.00G), so temporaries are the rest.
        m = _OOM.search(str(e))
        if "RESOURCE_EXHAUSTED" not in str(e) or not m:
            raise
        needed = float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")
        note = str(e).split("RESOURCE_EXHAUSTED: ")[-1].splitlines()[0]
        arguments = _shard_bytes(args)
        plan = Plan(
            name,
            arguments,
            0,
            0,
            max(int(needed) - arguments, 0),
            math.nan,
            math.nan,
            time.perf_counter() - t0,
            note,
        )
        return plan, None
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older jax returned a list per device
    plan = Plan(
        name,
        int(m.argument_size_in_bytes),
        int(m.output_size_in_bytes),
        int(m.alias_size_in_bytes),
        int(m.temp_size_in_bytes),
        float(cost.get("flops", 0.0)),
        float(cost.get("bytes accessed", 0.0)),
        seconds,
    )
    return plan, compiled
