r"""Does this config fit a TPU topology, and how fast could it go? Compiler figures, no TPU needed.

    python -m research.plan --config=configs/lm.py --topology=v5e:16x16 [--num_slices=1] \
        [--eval] [--decode=128] [--config.batch_size=256 --config.mesh.fsdp=16 ...]
    python -m research.plan --config=configs/lm.py:smoke --topology=cpu   # this machine
    python -m research.plan --config=configs/lm.py:1b --topology=v5e:16x16 \
        --fsdp_sweep=16,32,64,128,256 --out=/tmp/seqlab/plan   # memory against FSDP size
    python -m research.plan --config=configs/lm.py:1b --topology=v5e:16x16 \
        --layers_sweep=6,12,24,48 --out=/tmp/seqlab/plan   # compile time against depth

Prints a verdict block first (at most 100 columns: fits or not and by how much, memory per chip
against the chip's HBM, the train step's roofline time, tokens/s and MFU bound), then the
per-device argument/output/temp memory and the compiled FLOPs and bytes per step as tables.
--fsdp_sweep plans the train step once per mesh.fsdp at the config's global batch (mesh.data
takes the remaining devices) and writes plan_fsdp.csv and plan_fsdp.png to --out: with FSDP,
arguments x fsdp should stay constant.
--layers_sweep plans it once per model.num_layers and writes plan_layers_{scanned,unrolled}.csv
and .png: with model.scan_layers=True the compile time should stay flat in depth.
Exit codes: 0 fits, 3 does not fit, 2 bad arguments (unknown topology, mesh not matching the
chip count, config errors, no libtpu).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from research.cli import fail, loaded_config, out_dir_error, parse_flags
from research.plan.output import (
    describe_model,
    fits_chip,
    fmt_bytes,
    mfu_cell,
    plot_fsdp,
    plot_layers,
    report,
)
from research.report import format_table, plural

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:preset]", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology (v5e:16x16, v5p:4x8x8) or cpu")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "multislice: number of slices")

_EVAL = flags.DEFINE_bool("eval", False, "also compile the eval step")
_DECODE = flags.DEFINE_integer(
    "decode",
    0,
    "also compile greedy decoding of this many tokens after a seq_len prompt",
    lower_bound=0,
)

_SWEEP = flags.DEFINE_list("fsdp_sweep", [], "plan the train step for each of these mesh.fsdp")
_LAYERS = flags.DEFINE_list("layers_sweep", [], "plan the train step for each model.num_layers")
_OUT = flags.DEFINE_string("out", "/tmp/seqlab/plan", "sweeps: where CSV and PNG go")

GiB = 2**30


def _positive(flag, v: str) -> int:
    if not v.isdigit() or int(v) < 1:
        raise ValueError(f"--{flag.name}={','.join(flag.value)}: {v!r} is not a positive integer")
    return int(v)


def fsdp_sweep(c, devices, chip, sizes: list[int]) -> int:
    """The train step planned at each mesh.fsdp in `sizes` (data fills the devices); table, CSV
    and PNG of per-device memory against fsdp. Exit 0 when every plan fits, else 3."""
    import copy
    import pathlib

    from research.plan import plan_train
    from research.report import write_csv

    rows = []
    for f in sizes:
        ci = copy.deepcopy(c)
        ci.mesh.update(fsdp=f, data=-1)
        p = plan_train(ci, devices)[0]
        rows.append(
            {
                "fsdp": f,
                "data": len(devices) // (f * ci.mesh.get("tensor", 1)),
                "argument_bytes": p.argument_bytes,
                "temp_bytes": p.temp_bytes,
                "total_bytes": p.total_bytes,
                "fits": fits_chip([p], chip),
                "collective_bytes": p.collective_bytes,
                "mfu": mfu_cell(p, chip),
                "compile_s": p.compile_seconds,
            }
        )
    cols = (
        "fsdp",
        "data",
        "arguments",
        "arguments x fsdp",
        "temp",
        "total",
        "fits",
        "ICI GB",
        "MFU <=",
        "compile s",
    )
    fmts = (
        "{fsdp}",
        "{data}",
        lambda r: fmt_bytes(r["argument_bytes"]),
        lambda r: fmt_bytes(r["argument_bytes"] * r["fsdp"]),
        lambda r: fmt_bytes(r["temp_bytes"]),
        lambda r: fmt_bytes(r["total_bytes"]),
        lambda r: "yes" if r["fits"] else "NO",
        lambda r: f"{r['collective_bytes'] / 1e9:.2f}",
        "{mfu}",
        "{compile_s:.0f}",
    )
    title = f"{_TOPOLOGY.value}: {describe_model(c.model)}, batch {c.batch_size} x {c.data.seq_len}"
    scaled = [r["argument_bytes"] * r["fsdp"] for r in rows]
    print(title)
    print(format_table(rows, cols, fmts))
    print(f"arguments x fsdp: max / min = {max(scaled) / min(scaled):.4f}")
    if any("(a)" in r["mfu"] for r in rows):
        print(
            "(a): XLA counted fewer FLOPs than model + remat, so the roofline uses the analytic "
            "count"
        )
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "plan_fsdp.csv", rows)
    plot_fsdp(rows, chip, out / "plan_fsdp.png", title)
    print(f"wrote {out / 'plan_fsdp.csv'} and {out / 'plan_fsdp.png'}")
    return 0 if all(r["fits"] for r in rows) else 3


def layers_sweep(c, devices, chip, depths: list[int]) -> int:
    """The train step planned at each model.num_layers in `depths`; table, CSV and PNG of
    compile time and per-device memory against depth. Exit 0 when every plan fits, else 3."""
    import copy
    import pathlib

    from research.plan import plan_train
    from research.report import write_csv

    rows = []
    for n in sorted(depths):
        ci = copy.deepcopy(c)
        ci.model.num_layers = n
        p = plan_train(ci, devices)[0]
        rows.append(
            {
                "layers": n,
                "compile_s": p.compile_seconds,
                "argument_bytes": p.argument_bytes,
                "temp_bytes": p.temp_bytes,
                "total_bytes": p.total_bytes,
                "fits": fits_chip([p], chip),
            }
        )
        print(f"  {plural(n, 'layer')}: compiled in {p.compile_seconds:.1f} s", flush=True)
    cols = ("layers", "compile s", "compile / shallowest", "arguments", "temp", "total", "fits")
    first = rows[0]["compile_s"]
    fmts = (
        "{layers}",
        "{compile_s:.1f}",
        lambda r: f"{r['compile_s'] / first:.2f}x",
        lambda r: fmt_bytes(r["argument_bytes"]),
        lambda r: fmt_bytes(r["temp_bytes"]),
        lambda r: fmt_bytes(r["total_bytes"]),
        lambda r: "yes" if r["fits"] else "NO",
    )
    model = describe_model(c.model, layers="N layers")
    title = f"{_TOPOLOGY.value}: {model}, batch {c.batch_size} x {c.data.seq_len}"
    times = [r["compile_s"] for r in rows]
    print(title)
    print(format_table(rows, cols, fmts))
    print(f"compile time: max / min = {max(times) / min(times):.2f}")
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    stem = "plan_layers_" + ("scanned" if c.model.get("scan_layers", False) else "unrolled")
    write_csv(out / f"{stem}.csv", rows)
    plot_layers(rows, chip, out / f"{stem}.png", title)
    print(f"wrote {out / stem}.csv and .png")
    return 0 if all(r["fits"] for r in rows) else 3


def main(argv):
    from research.plan import MissingLibtpu, chips, devices_for, plan_train
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
        if _NUM_SLICES.value > 1:
            print(chips.MULTISLICE_NOTE.format(n=_NUM_SLICES.value), flush=True)
        if _SWEEP.value and _LAYERS.value:
            fail("give one of --fsdp_sweep and --layers_sweep")
        problem = out_dir_error(_OUT.value) if _SWEEP.value or _LAYERS.value else None
        if problem:
            fail(f"--out={_OUT.value}: cannot write the sweep there: {problem}")
        if _SWEEP.value:
            return fsdp_sweep(c, devices, chip, [_positive(_SWEEP, v) for v in _SWEEP.value])
        if _LAYERS.value:
            return layers_sweep(c, devices, chip, [_positive(_LAYERS, v) for v in _LAYERS.value])
        plans = plan_train(c, devices, eval_step=_EVAL.value, decode_tokens=_DECODE.value)
    except (MissingLibtpu, ConfigError, ValueError) as e:
        fail(str(e))
    mesh = sharding.make_mesh(dict(c.mesh), devices)
    text, fits = report(
        plans, chip, topology=_TOPOLOGY.value, chips=len(devices), mesh_shape=dict(mesh.shape), c=c
    )
    print(text)
    return 0 if fits else 3


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
