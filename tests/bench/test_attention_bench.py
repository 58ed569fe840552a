"""The attention benchmark runs end to end on tiny shapes (speed is reported, not asserted)."""

import ctypes
import math
import os

import pytest

from research.bench import attention
from research.ops.attention.cost import attention_flops
from research.report import keep_freed_memory


def test_attention_bench_writes_table_csv_png(tmp_path, capsys):
    rows = attention.main(
        [
            "--lengths",
            "64,128",
            "--contexts",
            "64",
            "--repeats",
            "1",
            "--long_length",
            "256",
            "--heads",
            "2",
            "--head_dim",
            "8",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert (tmp_path / "attention.csv").read_text().startswith("kind,impl,length")
    assert (tmp_path / "attention.png").stat().st_size > 10_000
    assert "| target | measured | goal | status |" in out and "jax" in out.splitlines()[0]
    assert "malloc" in out.splitlines()[0]
    assert {r["kind"] for r in rows if r["length"] == 256} == {"fwd", "fwd+bwd"}  # --long_length
    impls = {r["impl"] for r in rows if r["kind"] == "fwd"}
    assert set(attention.IMPLS) <= impls
    assert set(attention.RECURRENT_IMPLS) <= impls  # gated linear attention and delta rule
    for r in rows:
        assert r["status"] == "ok" and math.isfinite(r["seconds"]) and r["seconds"] > 0
    # FLOP model: causal softmax 2 B H L^2 D.
    assert attention_flops("softmax-xla", batch=1, length=128, heads=2, head_dim=8) == (
        2 * 2 * 128 * 128 * 8
    )
    # last: without the test extra the checks above still ran
    torch = pytest.importorskip("torch", reason="needs the test extra")
    assert f"torch {torch.__version__} SDPA on CPU as reference" in out.splitlines()[0]


def test_impls_runs_a_subset_and_refuses_unknown_names(tmp_path, capsys):
    argv = ["--lengths", "32", "--contexts", "32", "--repeats", "1", "--long_length", "0"]
    argv += ["--heads", "1", "--head_dim", "4", "--out", str(tmp_path)]
    rows = attention.main([*argv, "--impls", "gla_scalar-chunked,gla_scalar-scan"])
    assert "torch" not in capsys.readouterr().out.splitlines()[0]  # no torch row, no torch note
    assert {r["impl"] for r in rows if r["kind"] != "decode"} == {
        "gla_scalar-chunked",
        "gla_scalar-scan",
    }
    with pytest.raises(SystemExit) as e:
        attention.main([*argv, "--impls", "gla-fast"])
    assert e.value.code == 2
    assert "unknown impl 'gla-fast'; allowed: softmax-xla," in capsys.readouterr().err


def test_memory_budget_skips_instead_of_running():
    r = attention.measure_jax("softmax-xla", "fwd", 1, 4096, 4, 64, repeats=1, budget_bytes=1)
    assert r["status"].startswith("skipped") and r["memory_bytes"] > 4096 * 4096 * 4


def _resident_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_keep_freed_memory_keeps_a_freed_16mib_buffer_resident():
    # glibc's default unmaps a freed 16 MiB block (it was mmap'ed); after the call it stays.
    assert keep_freed_memory() == "glibc malloc keeps freed memory (mallopt)"
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    n = 16 << 20
    block = libc.malloc(n)
    ctypes.memset(block, 1, n)  # touch every page
    before = _resident_bytes()
    libc.free(ctypes.c_void_p(block))
    assert before - _resident_bytes() < n // 4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lengths", "512,-5"], "argument --lengths: expected an integer >= 1, got -5"),
        (["--lengths", "512,abc"], "argument --lengths: expected an integer >= 1, got 'abc'"),
        (["--contexts", "0"], "argument --contexts: expected an integer >= 1, got 0"),
        (["--head_dim", "0"], "argument --head_dim: expected an integer >= 1, got 0"),
        (["--long_length", "-1"], "argument --long_length: expected an integer >= 0, got -1"),
        (["--memory_budget_gb", "nan"], "argument --memory_budget_gb: expected a number > 0"),
    ],
)
def test_bad_arguments_exit_with_a_usage_error(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        attention.main([*argv, "--out", str(tmp_path)])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing ran, nothing written


def test_accelerator_rows_run_the_kernels_or_say_skipped(tmp_path, capsys):
    """bf16, the Pallas kernels (under the interpreter here) and cuDNN (no GPU: skipped, not
    failed), and a crossover line per linear row."""
    argv = ["--lengths", "32", "--contexts", "32", "--repeats", "1", "--long_length", "0"]
    argv += ["--heads", "1", "--head_dim", "8", "--dtype", "bfloat16", "--out", str(tmp_path)]
    impls = "softmax-blockwise,softmax-cudnn,softmax-tpu_flash,delta-pallas"
    rows = attention.main([*argv, "--impls", impls])
    status = {(r["impl"], r["kind"]): r["status"] for r in rows if r["kind"] != "decode"}
    assert status[("delta-pallas", "fwd+bwd")] == "ok"
    assert status[("softmax-cudnn", "fwd")] == "skipped: gpu"
    assert status[("softmax-tpu_flash", "fwd")] == "skipped: tpu"
    out = capsys.readouterr().out
    assert "bf16, causal" in out.splitlines()[0]
    assert "crossover (fwd+bwd): delta-pallas " in out  # beats softmax from L = .. or never


def test_crossover_is_the_first_length_a_linear_row_beats_every_softmax_row():
    def row(impl, n, s):
        return {"impl": impl, "kind": "fwd+bwd", "length": n, "seconds": s}

    rows = [row("softmax-xla", n, n * n * 1e-6) for n in (1024, 4096, 16384)]
    rows += [row("softmax-blockwise", n, n * n * 0.5e-6) for n in (1024, 4096, 16384)]
    rows += [row("gla-pallas", n, n * 3e-3) for n in (1024, 4096, 16384)]  # 3.1, 12.3, 49 s
    rows += [row("delta-pallas", n, 1e3) for n in (1024, 4096, 16384)]
    got = {c["impl"]: c["crossover_length"] for c in attention.crossovers(rows)}
    # the fastest softmax (blockwise) takes 0.52, 8.4, 134 s: gla wins from 16384, delta never
    assert got == {"gla-pallas": 16384, "delta-pallas": None}


def test_a_crossover_holds_at_every_longer_length_and_torch_counts_on_cpu_only():
    """A win at 1k, a loss at 4k and a win at 16k crosses over at 16k, not 1k; a torch row (on
    the CPU) is a softmax row to beat on a CPU backend, and none on an accelerator."""

    def row(impl, n, s):
        return {"impl": impl, "kind": "fwd+bwd", "length": n, "seconds": s}

    rows = [row("softmax-blockwise", n, s) for n, s in ((1024, 1.0), (4096, 1.0), (16384, 9.0))]
    rows += [row("gla-chunked", n, s) for n, s in ((1024, 0.5), (4096, 2.0), (16384, 3.0))]
    assert attention.crossovers(rows, backend="cpu")[0]["crossover_length"] == 16384
    rows += [row(attention.TORCH, 16384, 1.0)]  # faster than gla at 16k
    assert attention.crossovers(rows, backend="cpu")[0]["crossover_length"] is None
    assert attention.crossovers(rows, backend="gpu")[0]["crossover_length"] == 16384


def test_targets_compare_within_one_run_only():
    """Off a CPU backend the torch targets read n/a (torch ran on the CPU); Performer's quoted
    time (another machine's) is reference, never met or missed; the 1M row's memory counts when
    it was skipped as over budget (it was compiled)."""
    from research.bench.attention_targets import targets

    def row(kind, impl, n, s, mem=float("nan"), status="ok"):
        return {"kind": kind, "impl": impl, "length": n, "seconds": s, "memory_bytes": mem,
                "status": status}  # fmt: skip

    rows = [
        row("fwd+bwd", attention.TORCH, 16384, 4.0),
        row("fwd+bwd", "linear-chunked", 16384, 0.05),
    ]
    rows += [row("fwd+bwd", "linear-chunked", 2**20, float("nan"), 20e9, "skipped: over budget")]
    by = {t["target"]: t for t in targets(rows, backend="cpu")}
    torch_target = next(t for name, t in by.items() if name.startswith("linear chunked vs torch"))
    assert (torch_target["measured"], torch_target["status"]) == ("80", "met")
    performer = next(t for name, t in by.items() if "quoted" in name)
    assert (performer["measured"], performer["status"]) == ("4.4", "reference")
    memory = next(t for name, t in by.items() if "(>= 1M)" in name)
    assert (memory["measured"], memory["status"]) == ("20", "MISSED")
    on_gpu = {t["target"]: t for t in targets(rows, backend="gpu")}
    assert all(t["status"] == "n/a" for name, t in on_gpu.items() if "torch" in name)


def test_pallas_rows_off_tpu_and_cpu_are_skipped_not_a_crash(monkeypatch):
    """On a GPU the Pallas (Mosaic) kernels do not run, not even interpreted: a skipped row."""
    import jax

    from research.bench import attention_rows

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    r = attention_rows.measure_jax("linear-pallas", "fwd", 1, 128, 1, 16, 1, 2**30)
    assert r["status"] == "skipped: tpu"


def test_torch_rows_use_the_usable_cores_and_the_runs_dtype(monkeypatch):
    torch = pytest.importorskip("torch", reason="needs the test extra")
    import jax.numpy as jnp

    from research.bench import attention_rows

    monkeypatch.setattr(attention_rows, "usable_cpus", lambda: 1)
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append(q.dtype)
        return real(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    before = torch.get_num_threads()
    try:
        attention_rows.measure_torch("fwd+bwd", 1, 16, 1, 8, 1, jnp.bfloat16)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {torch.bfloat16}
