"""What `python -m research.plan` prints and draws: the verdict block, the tables, the sweep plots.

`report` leads with a verdict block of at most `WIDTH` columns (fits or not and by how much, the
memory per chip against the chip's HBM, the train step's roofline time, tokens/s and MFU bound),
then two narrower tables (memory; FLOPs, bytes and time per step) and the notes. Footnotes are
printed only for markers the tables show.
"""

import math
import textwrap

from research.report import format_table, plural, save_figure

GiB = 2**30
WIDTH = 100  # columns of the verdict block and of every note line (the tables may be wider)
ANALYTIC = "(a)"  # MFU marker: the roofline's compute time rests on the analytic FLOP count


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _share(used: float, hbm: float) -> str:
    """used / hbm as a percentage; "<1%" rather than a misleading "0%"."""
    return "<1%" if 0 < used / hbm < 0.01 else f"{used / hbm:.0%}"


def _seconds(t: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t / 1e-9:.3g} ns"


def analytic(p) -> bool:
    """Whether XLA counted fewer FLOPs than the analytic model + remat FLOPs (a scanned or Pallas
    body), so the roofline's compute time rests on the analytic count."""
    return bool(p.model_flops) and p.flops < p.model_flops + p.remat_flops


def mfu_cell(p, chip) -> str:
    """The MFU bound, with ANALYTIC where the roofline used the analytic FLOP count."""
    if not p.model_flops or not math.isfinite(p.flops):
        return "-"
    return f"{100 * p.mfu_bound(chip):.1f}%" + (f" {ANALYTIC}" if analytic(p) else "")


def _attention(m) -> str:
    impl = m.get("softmax_implementation", "xla")
    return f"softmax ({impl})" if m.attention == "softmax" else m.attention


def describe_model(m, layers: str | None = None) -> str:
    """ "d2048 x 24 layers (scanned), softmax (tpu_flash) attention, remat full"; `layers`
    replaces the layer count ("N layers" for a sweep over depth)."""
    stacked = "scanned" if m.get("scan_layers", False) else "unrolled"
    return (
        f"d{m.d_model} x {layers or plural(m.num_layers, 'layer')} ({stacked}), "
        f"{_attention(m)} attention, remat {m.get('remat', 'none')}"
    )


def _memory_row(p, chip) -> dict:
    return {
        "step": p.name,
        "arguments": fmt_bytes(p.argument_bytes),
        "outputs": fmt_bytes(p.output_bytes),
        "aliased": fmt_bytes(p.alias_bytes),
        "temp": fmt_bytes(p.temp_bytes),
        "total": fmt_bytes(p.total_bytes),
        "of usable": _share(p.total_bytes, chip.limit_bytes),
    }


def _compute_row(p, chip, tokens: int) -> dict:
    done = math.isfinite(p.flops)  # NaN where the compiler stopped (out of memory)
    t = p.roofline_seconds(chip) if done else math.nan
    train = p.name == "train"
    return {
        "step": p.name,
        "GFLOP": f"{p.flops / 1e9:,.3f}" if done else "-",
        "model GFLOP": f"{p.model_flops / 1e9:,.3f}" if p.model_flops else "-",
        "GB accessed": f"{p.bytes_accessed / 1e9:,.2f}" if done else "-",
        "ICI GB": f"{p.collective_bytes / 1e9:,.2f}" if train else "-",
        "roofline s": f"{t:.4g}" if done else "-",
        "tokens/s": f"{tokens / t:,.0f}" if train and done and t > 0 else "-",
        "MFU <=": mfu_cell(p, chip),
        "compile s": f"{p.compile_seconds:.1f}",
    }


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_on_hyphens=False)


def fits_chip(plans, chip) -> bool:
    """Whether every compiled step fits the chip: none refused by the compiler (out of memory)
    and each within the memory the compiler lets a program use."""
    return all(not p.note and p.total_bytes <= chip.limit_bytes for p in plans)


def verdict(plans, chip, *, topology: str, chips: int, mesh_shape: dict, c) -> tuple[list, bool]:
    """(the verdict block's lines, each at most WIDTH columns; fits)."""
    worst = max(plans, key=lambda p: p.total_bytes)
    fits = fits_chip(plans, chip)
    hbm = fmt_bytes(chip.hbm_bytes)
    limit = fmt_bytes(chip.limit_bytes)
    usable = f", {limit} usable" if chip.limit_bytes != chip.hbm_bytes else ""
    where = f"{topology} ({chips} x {chip.name}, {hbm} HBM each{usable})"
    if fits:
        spare = fmt_bytes(chip.limit_bytes - worst.total_bytes)
        head = f"FITS {where}: {spare} to spare per chip"
    else:
        refused = next((p for p in plans if p.note), None)
        worst = refused or worst
        over = fmt_bytes(max(worst.total_bytes - chip.limit_bytes, 0))
        # Where the compiler stopped, it had not seen the whole program: a lower bound.
        least = "at least " if worst.note else ""
        head = f"DOES NOT FIT {where}: {worst.name} is {least}{over} over"
    memory = ", ".join(
        f"{p.name} {fmt_bytes(p.total_bytes)} ({_share(p.total_bytes, chip.limit_bytes)})"
        for p in plans
    )
    items = [("memory per chip", f"{memory} of {limit} usable")]
    train = next((p for p in plans if p.name == "train"), None)
    if train is not None and math.isfinite(train.flops):
        t = train.roofline_seconds(chip)
        tokens = c.batch_size * c.data.seq_len
        items.append(
            (
                "train step",
                f">= {_seconds(t)} (roofline, a lower bound), <= {tokens / t:,.0f} tokens/s",
            )
        )
        if train.model_flops:
            how = (
                "from the analytic FLOPs (XLA counted fewer)"
                if analytic(train)
                else "model FLOPs / (roofline x peak)"
            )
            items.append(("MFU bound", f"<= {100 * train.mfu_bound(chip):.1f}% ({how})"))
        else:
            items.append(
                (
                    "MFU bound",
                    f"none: no analytic FLOP count for task={c.task} (the roofline takes XLA's, "
                    "which sees a loop body once)",
                )
            )
    elif train is not None:
        items.append(("train step", "no time: the compiler stopped (see the note below)"))
    items += [
        ("mesh, batch", f"{mesh_shape}, batch {c.batch_size} x {c.data.seq_len} tokens"),
        ("model", describe_model(c.model)),
    ]
    label = max(len(k) for k, _ in items) + 2
    lines = [*_wrap(head, "    ")]
    for key, value in items:
        lines += _wrap(f"  {key:<{label}}{value}", " " * (label + 2))
    return lines, fits


def report(plans, chip, *, topology: str, chips: int, mesh_shape: dict, c) -> tuple[str, bool]:
    """(what the planner prints, fits) for compiled plans on `chips` devices of `chip`: the
    verdict block, the memory and compute tables, then notes and footnotes (each at most WIDTH
    columns; a footnote only for a marker the tables show)."""
    lines, fits = verdict(plans, chip, topology=topology, chips=chips, mesh_shape=mesh_shape, c=c)
    tokens = c.batch_size * c.data.seq_len
    compute = [_compute_row(p, chip, tokens) for p in plans]
    lines += [
        "",
        "memory per chip:",
        format_table([_memory_row(p, chip) for p in plans]),
        "",
        "FLOPs, bytes and time per chip per step:",
        format_table(compute),
        "",
    ]
    notes = [f"{p.name}: the compiler stopped: {p.note}" for p in plans if p.note]
    m = c.model
    loops = (
        c.accum_steps > 1
        or m.attention != "softmax"
        or m.softmax_implementation != "xla"
        or m.get("scan_layers", False)
    )
    if loops or any(p.name == "decode" for p in plans):
        # XLA's cost analysis counts a while-loop body once, whatever its trip count.
        notes.append(
            "note: loops (scanned layers, decoding, blockwise/linear attention or "
            "gradient accumulation): XLA counts a loop body once, so those steps' "
            "GFLOP and GB accessed are underestimates (the roofline takes the larger of "
            "XLA's and the model + remat FLOPs). Memory is exact."
        )
    notes += [
        "aliased: outputs written into the donated arguments (counted once in total).",
        "GFLOP, GB accessed: XLA's estimates. model GFLOP: analytic 6TN + 3TLM, M the "
        "attention's mixing FLOPs per token (research.plan.train.model_flops), without the "
        "forward FLOPs remat recomputes. ICI GB: FSDP gathers and gradient reductions "
        "(collective_bytes).",
        "roofline = max(FLOPs/peak, bytes/HBM bandwidth, ICI bytes/ICI bandwidth), a lower bound "
        "on the step time; MFU <= model FLOPs / (roofline x peak).",
    ]
    if any(ANALYTIC in r["MFU <="] for r in compute):
        notes.append(
            f"{ANALYTIC}: XLA counted fewer FLOPs than model + remat (a scanned layer "
            "body is counted once, a Pallas kernel not at all), so the roofline uses "
            "the analytic count."
        )
    for note in notes:
        lines += _wrap(note, "  ")
    return "\n".join(lines), fits


def plot_fsdp(rows, chip, path, title) -> None:
    """Per-device memory against mesh.fsdp (log-log), the chip's HBM dashed."""
    with save_figure(path, title, 1, (6, 4)) as ax:
        x = [r["fsdp"] for r in rows]
        for key, label in (
            ("argument_bytes", "arguments"),
            ("temp_bytes", "temporaries"),
            ("total_bytes", "total"),
        ):
            ax.plot(x, [r[key] / GiB for r in rows], marker="o", label=label)
        ax.axhline(
            chip.limit_bytes / GiB, color="k", ls="--", lw=1, label=f"{chip.name} usable HBM"
        )
        ax.set(yscale="log", xlabel="mesh.fsdp (devices per FSDP group)", ylabel="GiB per device")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def plot_layers(rows, chip, path, title) -> None:
    """Compile time, and per-device memory against the chip's HBM, against model.num_layers."""
    with save_figure(path, title, 2, (10, 4)) as (ax, mem):
        x = [r["layers"] for r in rows]
        ax.plot(x, [r["compile_s"] for r in rows], marker="o")
        ax.set(xlabel="model.num_layers", ylabel="compile time (s)", ylim=(0, None))
        for key, label in (("argument_bytes", "arguments"), ("temp_bytes", "temporaries")):
            mem.plot(x, [r[key] / GiB for r in rows], marker="o", label=label)
        mem.axhline(
            chip.limit_bytes / GiB, color="k", ls="--", lw=1, label=f"{chip.name} usable HBM"
        )
        mem.set(xlabel="model.num_layers", ylabel="GiB per device")
        for a in (ax, mem):
            a.grid(alpha=0.3)
        mem.legend(fontsize=8)
