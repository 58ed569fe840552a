"""launch/accelerator_check.sh refuses a machine without an accelerator in one line, and the
measurement it runs (research.bench.accelerator) keeps to its time budget and writes one CSV
and one PNG named after the device (on CPU: tiny shapes; speed is not asserted)."""

import csv
import pathlib
import subprocess
import sys

import pytest

from research.bench import accelerator

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_script_exits_1_with_one_line_without_an_accelerator(tmp_path):
    """No nvidia-smi on PATH and no /dev/accel*: refused before any install."""
    if list(pathlib.Path("/dev").glob("accel*")) or list(pathlib.Path("/dev/vfio").glob("[0-9]*")):
        pytest.skip("a TPU host: the script would measure it (this test needs a CPU-only host)")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run(
        [str(ROOT / "launch/accelerator_check.sh")], env=env, capture_output=True, text=True
    )
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "no GPU (nvidia-smi) and no TPU" in lines[0]
    # a given interpreter whose jax sees only the CPU is refused the same way
    env["SEQLAB_PYTHON"] = sys.executable  # the suite's own interpreter (jax installed)
    r = subprocess.run(
        [str(ROOT / "launch/accelerator_check.sh")], env=env, capture_output=True, text=True
    )
    assert r.returncode == 1 and "sees no GPU or TPU (backend: cpu)" in r.stderr


def test_rows_per_backend_and_the_device_file_name():
    assert accelerator.attention_impls("gpu")[0] == "softmax-cudnn"
    tpu = accelerator.attention_impls("tpu")
    assert tpu[0] == "softmax-tpu_flash" and set(accelerator.PALLAS_ROWS) <= set(tpu)
    assert not any(i.endswith("-pallas") for i in accelerator.attention_impls("gpu"))
    assert accelerator.device_name() == "cpu"


def test_the_budget_stops_measuring_and_says_what_was_not_measured(tmp_path, capsys):
    argv = ["--lengths", "32,64", "--batch", "1", "--heads", "1", "--head_dim", "8"]
    argv += ["--repeats", "1", "--train_layers", "1", "--train_d_model", "16"]
    argv += ["--train_heads", "2", "--train_length", "16", "--train_batch", "8"]
    argv += ["--train_vocab", "32", "--budget_s", "1", "--out", str(tmp_path)]
    rows = accelerator.main(argv)
    out = capsys.readouterr().out
    assert 1 <= len(rows) < 8  # the first measurement, then the budget was spent
    assert "| train 1L d16 h2 len 16 batch 8 vocab 32 bf16 on 8 device(s)" in out
    assert "not measured (over --budget_s 1): " in out and "train gated_deltanet" in out
    with open(tmp_path / "cpu.csv") as f:
        written = list(csv.DictReader(f))
    assert [r["impl"] for r in written] == [r["impl"] for r in rows]
    assert (tmp_path / "cpu.png").stat().st_size > 10_000
    assert f"wrote {tmp_path / 'cpu.csv'} and {tmp_path / 'cpu.png'}" in out


TINY = ["--lengths", "32", "--batch", "1", "--heads", "1", "--head_dim", "8", "--repeats", "1"]
TINY += ["--train_layers", "1", "--train_d_model", "16", "--train_heads", "2"]
TINY += ["--train_length", "16", "--train_batch", "8", "--train_vocab", "32"]


def test_a_bad_train_shape_is_refused_before_any_measurement(monkeypatch, tmp_path, capsys):
    def measured(*args, **kw):
        raise AssertionError("measured before the train flags were checked")

    monkeypatch.setattr(accelerator.attention_rows, "measure_jax", measured)
    for bad, message in (
        (["--train_heads", "5"], "d_model (16) must be divisible by num_heads (5)"),
        (["--train_batch", "12"], "--train_batch 12 must be divisible by the 8 devices"),
    ):
        try:
            accelerator.main([*TINY, *bad, "--out", str(tmp_path)])
        except SystemExit as e:
            assert e.code == 2
        else:
            raise AssertionError("not refused")
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_rows_already_measured_are_written_when_a_train_step_fails(monkeypatch, tmp_path):
    """The attention rows reach the CSV before the train steps run: a train step that fails
    (an out-of-memory compile, a timeout's kill) leaves them on disk; the header names the
    train shape, the CSV its columns."""

    def failing(ns):
        raise RuntimeError("RESOURCE_EXHAUSTED")

    monkeypatch.setattr(accelerator.train_bench, "run", failing)
    try:
        accelerator.main([*TINY, "--budget_s", "600", "--out", str(tmp_path)])
    except RuntimeError:
        pass
    else:
        raise AssertionError("the train step's failure was swallowed")
    with open(tmp_path / "cpu.csv") as f:
        written = list(csv.DictReader(f))
    impls = accelerator.attention_impls("cpu")
    assert [r["impl"] for r in written] == [i for i in impls for _ in ("fwd", "fwd+bwd")]
    assert {"batch", "layers", "dtype", "devices", "matmul_peak_gflops"} <= written[0].keys()
    assert all(r["batch"] == "1" for r in written)


def _fake_device_python(tmp_path, pytest_step: str, bench_step: str) -> dict:
    """An environment whose SEQLAB_PYTHON reports a GPU and runs the two steps as given."""
    stub = tmp_path / "python"
    stub.write_text(
        "#!/bin/bash\n"
        'case "$*" in\n'
        "  *default_backend*) echo gpu ;;\n"
        '  *device_kind*) echo "Fake GPU" ;;\n'
        f'  "-m pytest"*) {pytest_step} ;;\n'
        f'  "-m research.bench.accelerator"*) {bench_step} ;;\n'
        "esac\n"
    )
    stub.chmod(0o755)
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SEQLAB_PYTHON": str(stub)}


@pytest.mark.parametrize(
    "pytest_step, bench_step, code, said",
    [
        ("exit 1", "exit 0", 3, ["a device test FAILED"]),
        ("exit 0", "exit 1", 4, ["the measurements FAILED (exit code 1"]),
        ("exit 1", "exit 124", 3, ["a device test FAILED", "FAILED (out of time (480 s)"]),
    ],
)
def test_each_failed_step_is_reported_and_has_its_exit_code(
    tmp_path, pytest_step, bench_step, code, said
):
    """A failed or timed-out measurement ended the script at once with its own code (1, which
    means "no accelerator", or 124), skipping the device tests' verdict."""
    env = _fake_device_python(tmp_path, pytest_step, bench_step)
    r = subprocess.run(
        [str(ROOT / "launch/accelerator_check.sh")], env=env, capture_output=True, text=True
    )
    assert r.returncode == code, r.stderr
    assert all(s in r.stderr for s in said), r.stderr


def test_a_signal_to_the_script_stops_the_step_holding_the_device(tmp_path):
    """`timeout` moved each step into a process group of its own and the script had no trap:
    the step kept running (and holding the device) after the job was stopped."""
    import os
    import signal
    import time

    pid_file = tmp_path / "step.pid"
    env = _fake_device_python(tmp_path, f"echo $$ > {pid_file}; exec sleep 60", "exit 0")
    script = subprocess.Popen([str(ROOT / "launch/accelerator_check.sh")], env=env)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the step did not start"
        time.sleep(0.05)
    step = int(pid_file.read_text())
    script.send_signal(signal.SIGTERM)
    assert script.wait(timeout=10) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):  # gone before the script returned
        os.kill(step, 0)
