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
    # + 32 + 2 norms * 2 * 32) + final norm 2 * 32; 6 N + 6 * layers * d * length per token
    # (PaLM's 12, halved for the causal mask as MaxText counts).
    n = 64 * 32 + (4 * 32 * 32 + 4 * 32) + (2 * 32 * 128 + 128 + 32) + 2 * 2 * 32 + 2 * 32
    want = (6 * n + 6 * 1 * 32 * 16) * 8 * 16 / 1e12
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


def test_a_recurrent_kind_is_credited_its_own_mixing_not_softmaxs():
    """Gated DeltaNet's step was credited softmax's 12 d length per layer and token (MFU 23% too
    high at the accelerator check's shape); now 3 x its chunked form's count, by hand: at
    C = Dk = Dv = 16 (one chunk of 16 tokens, 2 heads) the delta form's
    4 C Dk + 4 C (Dk + Dv) + 2 C^2 / 3 + 2 Dk (Dk + Dv) + 2 Dk^2 Dv / C + 2 Dk Dv per head."""
    import jax
    from flax import nnx

    from research.models import DecoderLM, ModelConfig

    cfg = ModelConfig(
        vocab_size=64, d_model=32, num_heads=2, num_layers=1, d_ff=64, max_length=16,
        attention="gated_deltanet", chunk_size=16,
    )  # fmt: skip
    params = nnx.to_pure_dict(nnx.state(DecoderLM(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    n = sum(x.size for x in jax.tree.leaves(params))  # no position table: learned, 16 x 32
    n -= 16 * 32
    c = dk = dv = 16
    per_head = (
        4 * c * dk + 4 * c * (dk + dv) + 2 * c * c / 3 + 2 * dk * (dk + dv)
        + 2 * dk * dk * dv / c + 2 * dk * dv
    )  # fmt: skip
    want = 6 * n + 3 * 1 * 2 * per_head
    assert train.model_flops_per_token(cfg, params) == pytest.approx(want)


@pytest.mark.parametrize(
    "dtype, backend, devices",
    [("float32", "gpu", 8), ("bfloat16", "gpu", 8), ("float32", "cpu", 1)],
)
def test_mfu_is_against_every_devices_peak_in_the_runs_dtype(monkeypatch, dtype, backend, devices):
    """On accelerators the step runs on all 8 devices in the model's dtype: MFU divides by 8 x
    one device's peak measured in that dtype (it divided by one device's fp32 peak). Fake CPU
    devices share the host, whose one measured matmul already uses every core: 1 x."""
    import jax
    import jax.numpy as jnp

    seen = []

    def peak(n=None, dtype=jnp.float32):
        seen.append(jnp.dtype(dtype))
        return 1e9

    monkeypatch.setattr(train, "matmul_peak", peak)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)  # the mesh stays on the CPU
    argv = ["--layers", "1", "--d_model", "32", "--heads", "2", "--length", "16"]
    r = train.main([*argv, "--batch", "8", "--vocab", "64", "--steps", "2", "--dtype", dtype])
    assert seen == [jnp.dtype(dtype)] and r["devices"] == devices and jax.device_count() == 8
    flops_per_second = r["model_tflops_per_step"] * 1e12 / r["step_seconds"]
    assert r["mfu"] == pytest.approx(flops_per_second / (devices * 1e9))
    assert r["matmul_peak_gflops"] == pytest.approx(devices)


def test_model_flops_count_the_output_projection_once_tied_or_not():
    """The token table is a lookup; tied, it is also the output projection (counted once),
    untied the projection is its own parameter: the same matmul FLOPs either way (untied, the
    table was counted as well)."""
    from flax import nnx

    from research.models import DecoderLM, ModelConfig

    counts = []
    for tie in (True, False):
        cfg = ModelConfig(
            vocab_size=64, d_model=16, num_heads=2, num_layers=1, d_ff=32, max_length=16,
            tie_embeddings=tie, positions="learned",
        )  # fmt: skip
        params = nnx.to_pure_dict(nnx.state(DecoderLM(cfg, rngs=nnx.Rngs(0)), nnx.Param))
        counts.append(train.model_flops_per_token(cfg, params))
    assert counts[0] == counts[1]
