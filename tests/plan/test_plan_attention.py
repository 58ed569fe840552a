"""research.plan.attention on this machine's 8 fake CPU devices (the TPU path is the same code)."""

import csv
import importlib.util
import math

import jax
import jax.numpy as jnp
import pytest

from research.ops import attention as att
from research.plan import attention as pa


def test_cpu_sweep_writes_table_csv_png_and_crossover(tmp_path, capsys):
    # One length keeps the test short (each variant compiles per length); the crossover is then
    # that length for every family, which the published tables (docs/pod_planning.md) refine.
    code = pa.main(
        ["--topology=cpu", "--lengths=1024", "--heads=2", "--head_dim=16", f"--out={tmp_path}"]
    )
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "plan_attention.csv")))
    assert {r["variant"] for r in rows} == set(pa.VARIANTS) and len(rows) == 8
    assert all(int(r["memory_bytes"]) > 0 and float(r["roofline_s"]) > 0 for r in rows)
    assert (tmp_path / "plan_attention.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    for family in ("linear", "gla", "gdn"):
        assert f"crossover, local (whole sequence per device): {family} faster" in out
        assert f"crossover, context parallel: {family} faster" in out
    # Context parallel splits the sequence: the table's per-device FLOPs (the analytic model's,
    # research.ops.attention.cost: XLA's cost analysis counts a loop body once, so the compiled
    # programs cannot give them) are 1/8 of the local ones for linear attention.
    by = {(r["variant"], int(r["length"])): r for r in rows}
    for local, cp in (("linear-chunked", "linear-cp"), ("gla-chunked", "gla-cp")):
        ratio = float(by[local, 1024]["flops"]) / float(by[cp, 1024]["flops"])
        assert ratio == pytest.approx(8.0, rel=0.3)
    # The delta rule's context parallelism runs its chunked form twice (the block's affine map on
    # [I | 0] values of width 2 Dk, then the outputs): about 8 / 3 of the local work's 1/8 each.
    ratio = float(by["gdn-chunked", 1024]["flops"]) / float(by["gdn-cp", 1024]["flops"])
    assert 2 < ratio < 4


def test_crossover_is_the_shortest_length_where_the_family_beats_softmax():
    def rows(variant, times):
        return [{"variant": variant, "length": n, "roofline_s": t} for n, t in times.items()]

    soft = rows("softmax-blockwise", {256: 1.0, 1024: 4.0, 4096: 16.0})
    gla = rows("gla-chunked", {256: 2.0, 1024: 3.0, 4096: 5.0})
    ring = rows("softmax-ring", {256: 1.0, 1024: 1.0, 4096: 1.0})
    gla_cp = rows("gla-cp", {256: 2.0, 1024: 2.0, 4096: 2.0})
    all_rows = soft + gla + ring + gla_cp
    assert pa.crossover(all_rows, local=True, family="gla") == 1024
    assert pa.crossover(all_rows, local=False, family="gla") is None


def test_analytic_softmax_flops_match_the_compiled_dense_forward():
    """The roofline uses analytic FLOPs; check them against XLA's count of the dense (loop-free)
    forward, which computes the full L x L (twice the causal count) plus softmax elementwise."""
    b, length, h, d = 1, 512, 2, 64
    x = jax.ShapeDtypeStruct((b, length, h, d), jnp.float32)
    f = jax.jit(lambda q, k, v: att.softmax_attention(q, k, v, causal=True))
    compiled = f.lower(x, x, x).compile().cost_analysis()
    compiled = compiled[0] if isinstance(compiled, list) else compiled
    analytic_causal = pa.flops_per_device("softmax-blockwise", length, h, d, 1) / 3.5
    assert compiled["flops"] == pytest.approx(2 * analytic_causal, rel=0.1)


def test_bad_topology_exits_2(capsys):
    assert pa.main(["--topology=v5e:3"]) == 2
    assert "topology='v5e:3'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--heads=0", "argument --heads: expected an integer >= 1, got 0"),
        ("--lengths=1024,0", "argument --lengths: expected an integer >= 1, got 0"),
        ("--head_dim=x", "argument --head_dim: expected an integer >= 1, got 'x'"),
    ],
)
def test_bad_sizes_exit_2_before_compiling(arg, message, capsys):
    with pytest.raises(SystemExit) as e:
        pa.main(["--topology=cpu", arg])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_length_the_devices_do_not_divide_is_refused_before_any_compile(monkeypatch, capsys):
    """--lengths=1024,1001 on 8 devices: refused before 1,024's eight variants compile."""
    compiled = []
    monkeypatch.setattr(pa, "compile_variant", lambda *a, **k: compiled.append(a) or 1 / 0)
    assert pa.main(["--topology=cpu", "--lengths=1024,1001", "--heads=2", "--head_dim=16"]) == 2
    assert "length 1001 is not divisible by the 8 devices" in capsys.readouterr().err
    assert compiled == []


def test_slices_of_the_cpu_topology_are_refused():
    from research.plan.chips import devices_for

    with pytest.raises(ValueError, match="num_slices=3: slices are TPU topologies"):
        devices_for("cpu", 3)


def test_the_cpu_chip_splits_the_hosts_compute_over_its_devices(monkeypatch):
    """8 fake devices share the host's cores and memory bandwidth: each gets an eighth of the
    measured peak (each got all of it, an 8x optimistic roofline)."""
    from research.plan import chips

    monkeypatch.setattr(chips, "matmul_peak", lambda n: 8e10)
    monkeypatch.setattr(chips, "median_time", lambda *a, **k: 2 * 4 * 2**24 / 16e9)
    one, eight = chips.cpu_chip(1), chips.cpu_chip(8)
    assert (one.peak_flops, one.hbm_bandwidth) == pytest.approx((8e10, 16e9))
    assert (eight.peak_flops, eight.hbm_bandwidth) == pytest.approx((1e10, 2e9))


_BYTES = {"bf16": 2, "f32": 4, "s32": 4, "u32": 4, "pred": 1}


def _permuted_bytes(hlo: str, loop_trips: int) -> int:
    """Bytes one device sends in a compiled program's collective-permutes, each times the trip
    counts of the while loops around it (a loop without a known trip count: `loop_trips`)."""
    import re

    comps, cur = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*->.*\{\s*$", line)
        if head:
            cur = comps.setdefault(head.group(1), [])
        elif cur is not None:
            cur.append(line)
    parent = {}  # a called computation -> (its caller, trips)
    for name, lines in comps.items():
        for line in lines:
            if " while(" in line:
                body = re.search(r"body=%?([\w.\-]+)", line).group(1)
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                parent[body] = (name, int(trips.group(1)) if trips else loop_trips)
            for callee in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", line):
                parent.setdefault(callee, (name, 1))
    total = 0
    for name, lines in comps.items():
        times, at = 1, name
        while at in parent:
            at, trips = parent[at]
            times *= trips
        for line in lines:
            if re.search(r"= .*collective-permute(-start)?\(", line):
                result = line.split("=", 1)[1].split("collective-permute")[0]
                n = sum(
                    _BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d)
                    for dt, dims in re.findall(r"\b(bf16|f32|s32|u32|pred)\[([0-9,]*)\]", result)
                )
                total += times * (n // 2 if "collective-permute-start" in line else n)
    return total


@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (the tpu extra)"
)
@pytest.mark.parametrize("topology", ["v5e:2x2", "v5e:2x4"])
def test_the_communication_counts_are_what_the_compiled_programs_send(topology, monkeypatch):
    """Each context-parallel variant's comm_bytes against the bytes its TPU program's
    collective-permutes send (loops' trip counts included), within 0.1% (a few scalars):
    the ring sent 2/3 of what was counted, GLA 1.3-1.5x, the delta rule 0.5-0.56x."""
    from research.plan import chips

    compiled = {}
    real = pa.compile_for_devices

    def keep(name, fn, *args):
        plan, program = real(name, fn, *args)
        compiled[name] = program
        return plan, program

    monkeypatch.setattr(pa, "compile_for_devices", keep)
    devices = chips.tpu_devices(topology)
    n, length, heads, head_dim = len(devices), 256 * len(devices), 2, 128
    for variant in ("softmax-ring", "linear-cp", "gla-cp", "gdn-cp"):
        # as the planner runs (the suite asks for "highest", which keeps the delta rule's
        # forward maps in fp32)
        with jax.default_matmul_precision("default"):
            pa.compile_variant(variant, devices, length, heads, head_dim)
        sent = _permuted_bytes(compiled[variant].as_text(), loop_trips=n - 1)
        want = pa.comm_bytes(variant, length, heads, head_dim, n)
        assert sent == pytest.approx(want, rel=1e-3), (variant, sent, want)


@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (the tpu extra)"
)
def test_a_tpu_program_is_traced_with_the_tpus_block_sizes():
    """Planning a TPU topology on a CPU host traced the ops with the host's (cpu) tiles: linear
    attention's chunk blocks were 1 MiB where a TPU run takes 8 MiB."""
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from research.ops.attention.common import DEFAULT_BLOCK_SIZES, default_block_sizes
    from research.plan import chips
    from research.plan.compiler import compile_for_devices

    seen = []

    def fn(x):
        seen.append(default_block_sizes())
        return x * 2

    devices = chips.tpu_devices("v5e:2x2")
    x = jax.ShapeDtypeStruct(
        (4, 128), jnp.float32, sharding=NamedSharding(Mesh(np.asarray(devices), ("d",)), P("d"))
    )
    compile_for_devices("double", jax.jit(fn), x)
    assert seen == [DEFAULT_BLOCK_SIZES["tpu"]] != [DEFAULT_BLOCK_SIZES["cpu"]]
    assert default_block_sizes() == DEFAULT_BLOCK_SIZES[jax.default_backend()]  # restored
