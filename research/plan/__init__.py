"""Plan a run for a TPU topology without the TPU: compile ahead of time, read memory and FLOPs.

chips: per-chip figures and topology names -> devices; compiler: one step compiled into a
`Plan`; train: the real train/eval/decode steps on abstract state; attention: one attention
layer, linear vs softmax, at pod scale. `python -m research.plan` is the CLI (__main__).
"""

from research.plan.chips import CHIPS, Chip, MissingLibtpu, cpu_chip, devices_for
from research.plan.compiler import Plan, compile_for_devices
from research.plan.train import plan_train

__all__ = [
    "CHIPS",
    "Chip",
    "MissingLibtpu",
    "Plan",
    "compile_for_devices",
    "cpu_chip",
    "devices_for",
    "plan_train",
]
