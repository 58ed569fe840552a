"""The throughput benchmark runs and counts FLOPs correctly (its speed is reported, not tested)."""

import pytest

from research.bench import train


@pytest.mark.parametrize(
    "extra", [[], ["--scan_layers", "--remat", "full"]], ids=["unrolled", "scan"]
)
def test_bench_runs_and_writes_csv(tmp_path, extra):
    args = [
        "--layers",
        "1",
        "--d_model",
        "32",
        "--heads",
        "2",
        "--length",
        "16",
        "--batch",
        "8",
        "--vocab",
        "64",
        "--steps",
        "2",
        "--out",
        str(tmp_path),
        *extra,
    ]
    r = train.main(args)
    assert r["scan_layers"] == bool(extra) and r["remat"] == ("full" if extra else "none")
    assert (tmp_path / "train_bench.csv").read_text().startswith("layers,")
    assert r["tokens_per_second"] > 0 and 0 < r["mfu"]
    # PaLM count by hand: N = tied embedding 64*32 + 1 layer (4 * 32*32 + 4 * 32 + 2 * 32*128 + 128
    # + 32 + 2 norms * 2 * 32) + final norm 2 * 32; 6 N + 12 * layers * d * length per token.
    n = 64 * 32 + (4 * 32 * 32 + 4 * 32) + (2 * 32 * 128 + 128 + 32) + 2 * 2 * 32 + 2 * 32
    want = (6 * n + 12 * 1 * 32 * 16) * 8 * 16 / 1e12
    assert abs(r["model_tflops_per_step"] - want) < 1e-12


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "argument --steps: expected an integer >= 1, got 0"),
        (["--layers", "x"], "argument --layers: expected an integer >= 1, got 'x'"),
        (["--d_model", "30", "--heads", "8"], "d_model (30) must be divisible by num_heads (8)"),
    ],
)
def test_bad_arguments_exit_with_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
