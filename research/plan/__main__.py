"""Does this config fit a TPU topology, and how fast could it go? Compiler figures, no TPU needed.

    python -m research.plan --config=configs/lm.py --topology=v5e:16x16 [--num_slices=1] \
        [--eval] [--decode=128] [--config.batch_size=256 --config.mesh.fsdp=16 ...]
    python -m research.plan --config=configs/lm.py:smoke --topology=cpu   # this machine

Prints per-device argument/output/temp memory against the chip's HBM, compiled FLOPs and bytes
per step, and a roofline step time and tokens/s. Exit codes: 0 fits, 3 does not fit,
2 bad arguments (unknown topology, mesh not matching the chip count, config errors, no libtpu).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from research.cli import fail, loaded_config, parse_flags
from research.report import format_table

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:preset]", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology (v5e:16x16, v5p:4x8x8) or cpu")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "multislice: number of slices")
_EVAL = flags.DEFINE_bool("eval", False, "also compile the eval step")
_DECODE = flags.DEFINE_integer(
    "decode", 0, "also compile greedy decoding of this many tokens after a seq_len prompt"
)

GiB = 2**30


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _row(p, chip, tokens: int) -> dict:
    """One table row of a Plan: column title -> cell."""
    t = p.roofline_seconds(chip)
    return {
        "step": p.name, "arguments": _bytes(p.argument_bytes), "outputs": _bytes(p.output_bytes),
        "aliased": _bytes(p.alias_bytes), "temp": _bytes(p.temp_bytes),
        "total": _bytes(p.total_bytes), "HBM": _bytes(chip.hbm_bytes),
        "margin": _bytes(chip.hbm_bytes - p.total_bytes), "GFLOP": f"{p.flops / 1e9:,.3f}",
        "GB accessed": f"{p.bytes_accessed / 1e9:,.2f}", "roofline s": f"{t:.4g}",
        "tokens/s": f"{tokens / t:,.0f}" if p.name == "train" and t > 0 else "-",
        "model GFLOP": f"{p.model_flops / 1e9:,.3f}" if p.model_flops else "-",
        "ICI GB": f"{p.collective_bytes / 1e9:,.2f}" if p.name == "train" else "-",
        "MFU <=": f"{100 * p.mfu_bound(chip):.1f}%" if p.model_flops else "-",
        "compile s": f"{p.compile_seconds:.1f}",
    }  # fmt: skip


def report(plans, chip, *, topology: str, chips: int, mesh, c) -> tuple[str, bool]:
    """(the table, fits) for compiled plans on `chips` devices of `chip`."""
    tokens = c.batch_size * c.data.seq_len
    lines = [
        f"{topology}: {chips} x {chip.name}, {chip.hbm_bytes / GiB:.1f} GiB each | mesh "
        f"{dict(mesh.shape)} | model d{c.model.d_model} x {c.model.num_layers} layers, "
        f"{c.model.attention} attention, remat {c.model.get('remat', 'none')} | batch "
        f"{c.batch_size} x {c.data.seq_len} tokens",
        format_table([_row(p, chip, tokens) for p in plans]),
    ]
    fits = all(chip.hbm_bytes - p.total_bytes >= 0 for p in plans)
    notes = [f"{p.name}: the compiler stopped: {p.note}" for p in plans if p.note]
    worst = max(p.total_bytes for p in plans) - chip.hbm_bytes
    verdict = "fits" if fits else f"does not fit by {_bytes(worst)} per device"
    m = c.model
    loops = c.accum_steps > 1 or m.attention != "softmax" or m.softmax_implementation != "xla"
    if loops or any(p.name == "decode" for p in plans):
        # XLA's cost analysis counts a while-loop body once, whatever its trip count.
        notes.append("note: loops (decoding, blockwise/linear attention or gradient "
                     "accumulation): XLA counts a loop body once, so those steps' FLOPs, bytes "
                     "and roofline are underestimates. Memory is exact.")  # fmt: skip
    lines += notes
    lines.append(
        "\nmemory per device; FLOPs and bytes per device per step (XLA estimates); model "
        "GFLOP: analytic 6TN + 12TLSd (research.plan.train.model_flops); ICI GB: FSDP gathers "
        "and gradient reductions (collective_bytes); roofline = max(FLOPs/peak, bytes/HBM "
        "bandwidth, ICI bytes/ICI bandwidth), a lower bound; MFU <= model FLOPs / (roofline x "
        f"peak).\n{verdict}"
    )
    return "\n".join(lines), fits


def main(argv):
    from research.plan import MissingLibtpu, devices_for, plan_train
    from research.train import sharding
    from research.train.config import ConfigError

    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; use --config.key=value to override config keys")
    c = loaded_config(_CONFIG)
    if c is None or not _TOPOLOGY.value:
        fail("both --config=configs/NAME.py[:PRESET] and --topology=NAME are required")
    if "experiment" in c:
        fail("plan a single training config (configs/lm.py, configs/mqar.py), not a sweep")
    try:
        devices, chip = devices_for(_TOPOLOGY.value, _NUM_SLICES.value)
        plans = plan_train(c, devices, eval_step=_EVAL.value, decode_tokens=_DECODE.value)
    except (MissingLibtpu, ConfigError, ValueError) as e:
        fail(str(e))
    mesh = sharding.make_mesh(dict(c.mesh), devices)
    text, fits = report(plans, chip, topology=_TOPOLOGY.value, chips=len(devices), mesh=mesh, c=c)
    print(text)
    return 0 if fits else 3


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
