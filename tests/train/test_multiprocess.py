"""2 processes x 2 CPU devices (gloo collectives) train exactly like 1 process x 4 devices."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _losses(workdir):
    rows = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_two_processes_match_one_process(tmp_path):
    data = tmp_path / "data"
    common = ["--config=configs/lm.py:smoke", f"--config.data.data_dir={data}",
              "--config.data.shards=2"]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable}
    one = subprocess.run(
        [sys.executable, "-m", "research.main", *common, f"--workdir={tmp_path / 'one'}"],
        cwd=ROOT, env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        ["./launch/multiprocess_cpu.sh", "2", *common, f"--workdir={tmp_path / 'two'}"],
        cwd=ROOT, env={**env, "DEVICES_PER_PROCESS": "2"}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, (
        two.stdout[-3000:] + (tmp_path / "two" / "process_1.log").read_text()
    )
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    # Same data, same math; only the all-reduce order differs across processes (~1e-7 here).
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)
    # Each checkpoint holds one data-iterator state per process.
    ckpt = tmp_path / "two" / "checkpoints" / "12" / "data"
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= {p.name for p in ckpt.iterdir()}
