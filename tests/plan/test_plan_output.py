"""research.plan's printout from hand-made Plans (no compile): the verdict block leads, fits in
100 columns and says fits or not by how much; a footnote is printed only for a marker shown."""

import math

import pytest

from configs import lm
from research.plan import Plan, chips
from research.plan.output import ANALYTIC, WIDTH, report, verdict

GiB = 2**30
V5E = chips.CHIPS["v5e"]


def _plan(name="train", total_gib=4.0, flops=2e12, model_flops=1.5e12, **kw) -> Plan:
    """A train step of `total_gib` per chip: 1 GiB of arguments, the rest temporaries."""
    temp = int((total_gib - 1) * GiB)
    defaults = dict(
        argument_bytes=GiB,
        output_bytes=GiB,
        alias_bytes=GiB,
        temp_bytes=temp,
        flops=flops,
        bytes_accessed=50e9,
        compile_seconds=12.3,
        model_flops=model_flops if name == "train" else 0.0,
        collective_bytes=2e9 if name == "train" else 0.0,
    )
    return Plan(name, **{**defaults, **kw})


def _report(plans, c=None, topology="v5e:16x16", mesh_shape=None):
    c = c or lm.get_config("smoke")
    mesh_shape = mesh_shape or {"data": 16, "fsdp": 16, "tensor": 1}
    return report(plans, V5E, topology=topology, chips=256, mesh_shape=mesh_shape, c=c)


def _block(text: str) -> list[str]:
    """The verdict block: the lines before the first blank line."""
    return text.split("\n\n")[0].splitlines()


def _head(text: str) -> str:
    """The verdict's first item (it may wrap) as one line, spaces collapsed."""
    block = _block(text)
    return " ".join(" ".join([block[0], *(x for x in block[1:2] if x.startswith("    "))]).split())


def test_verdict_block_leads_fits_in_100_columns_and_says_by_how_much():
    text, fits = _report([_plan(total_gib=4.0), _plan("eval", total_gib=2.0, flops=1e12)])
    block = _block(text)
    head = _head(text)
    assert fits and head.startswith(
        "FITS v5e:16x16 (256 x TPU v5e, 16.00 GiB HBM each, 15.75 GiB usable): "
        "11.75 GiB to spare per chip"
    )  # the margin is to what the compiler lets a program use, not the nominal HBM
    assert "train 4.00 GiB (25%), eval 2.00 GiB (13%) of 15.75 GiB usable" in text
    # The roofline: 50 GB / 819 GB/s = 61 ms beats 2 TFLOP / 197 TFLOP/s and 2 GB / 200 GB/s.
    t = _plan().roofline_seconds(V5E)
    assert t == pytest.approx(50e9 / V5E.hbm_bandwidth)
    assert f">= {t * 1e3:.3g} ms (roofline, a lower bound)" in text
    assert f"<= {8 * 32 / t:,.0f} tokens/s" in text
    mfu = 1.5e12 / (t * V5E.peak_flops)
    assert f"MFU bound        <= {100 * mfu:.1f}% (model FLOPs / (roofline x peak))" in text
    assert all(len(line) <= WIDTH for line in block), block
    # The tables follow the block; the old 16-column table's HBM and margin columns are gone.
    assert text.index("| step | arguments |") > text.index(block[-1])
    assert all(line.count("|") <= 11 for line in text.splitlines())

    over, fits = _report([_plan(total_gib=20.5), _plan("eval", total_gib=3.0, flops=1e12)])
    head = _head(over)
    assert not fits and head.startswith("DOES NOT FIT v5e:16x16")
    assert head.endswith("train is 4.75 GiB over")  # over the 15.75 GiB the compiler allows
    assert "train 20.50 GiB (130%)" in over


def test_a_long_verdict_block_is_wrapped_to_100_columns():
    c = lm.get_config("smoke")
    c.model.update(
        d_model=8192,
        num_layers=128,
        scan_layers=True,
        remat="save_dot_except_mlpwi",
        softmax_implementation="tpu_flash",
    )
    c.batch_size, c.data.seq_len = 1024, 131072
    plans = [
        _plan(total_gib=1500.25),
        _plan("eval", total_gib=900.5, flops=1e12),
        _plan("decode", total_gib=800.75, flops=1e12),
    ]
    mesh = {"data": 2, "fsdp": 64, "tensor": 4, "sequence": 8}
    text, fits = _report(plans, c, topology="v5p:16x16x16", mesh_shape=mesh)
    block = _block(text)
    assert not fits and len(block) > 6  # something was wrapped
    assert all(len(line) <= WIDTH for line in block), block
    assert "save_dot_except_mlpwi" in text and "decode 800.75 GiB" in " ".join(block)
    # Every line but the tables' is within 100 columns too.
    assert all(len(line) <= WIDTH for line in text.splitlines() if not line.startswith("|"))


def test_the_analytic_footnote_appears_iff_its_marker_does():
    # XLA counted more FLOPs than the analytic model: the roofline uses XLA's, no marker.
    plain, _ = _report([_plan(flops=2e12, model_flops=1.5e12)])
    assert ANALYTIC not in plain
    assert "XLA counted fewer" not in plain
    # A scanned body counted once: XLA's FLOPs below the model's; the marker and its footnote.
    scanned, _ = _report([_plan(flops=0.5e12, model_flops=1.5e12)])
    train_row = [line for line in scanned.splitlines() if line.startswith("| train")][-1]
    assert train_row.split("|")[-3].strip().endswith(ANALYTIC)  # the "MFU <=" cell
    notes = [line for line in scanned.splitlines() if line.startswith(ANALYTIC)]
    assert len(notes) == 1 and "analytic count" in scanned
    # In the verdict the same fact is said in words, not with the marker.
    assert ANALYTIC not in "\n".join(_block(scanned))
    assert "from the analytic FLOPs (XLA counted fewer)" in "\n".join(_block(scanned))


def test_a_step_the_compiler_stopped_has_no_time_and_its_note():
    stopped = _plan(
        total_gib=40.0,
        flops=math.nan,
        bytes_accessed=math.nan,
        note="Ran out of memory in memory space hbm.",
    )
    text, fits = _report([stopped])
    block = _block(text)
    assert not fits and _head(text).endswith("train is at least 24.25 GiB over")
    assert any("no time: the compiler stopped" in line for line in block)
    assert "train: the compiler stopped: Ran out of memory in memory space hbm." in text
    assert "nan" not in text.lower()


def test_a_step_the_compiler_refused_or_over_the_usable_memory_does_not_fit():
    """The compiler refused a 15.9 GiB step (out of memory): never FITS, whatever its figure
    (it printed FITS with 92 MiB to spare); a compiled 15.9 GiB step exceeds v5e's usable 15.75
    GiB (though not its nominal 16)."""
    oom = _plan(total_gib=15.9, flops=math.nan, bytes_accessed=math.nan, note="Ran out of memory")
    text, fits = _report([oom])
    assert not fits and _head(text).endswith("train is at least 153.60 MiB over")
    text, fits = _report([_plan(total_gib=15.9)])
    assert not fits and _head(text).endswith("train is 153.60 MiB over")
    text, fits = _report([_plan(total_gib=15.7)])
    assert fits


def test_verdict_counts_one_layer_as_a_layer():
    c = lm.get_config("smoke")
    c.model.num_layers = 1
    lines, _ = verdict([_plan()], V5E, topology="v5e:2x2", chips=4, mesh_shape={"data": 4}, c=c)
    assert any("d32 x 1 layer (unrolled)" in line for line in lines)
