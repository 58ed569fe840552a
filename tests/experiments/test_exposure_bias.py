"""configs/exposure_bias.py:smoke end to end: the sweep, SCST seeded from the baseline, outputs."""

import csv
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(workdir, data_dir, *overrides):
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2"
    )
    cmd = [sys.executable, "-m", "research.main", "--config=configs/exposure_bias.py:smoke",
           f"--workdir={workdir}", f"--config.base.data.data_dir={data_dir}",
           "--config.variants=baseline,random_replacement,scst",
           "--config.base.seq2seq.eval_beams=1,2", *overrides]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_smoke_sweep(tmp_path):
    r = _run(tmp_path / "wd", tmp_path / "data")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "wd" / "exposure_bias.csv")))
    assert [(x["variant"], x["beam"]) for x in rows] == [
        (v, b) for v in ("baseline", "random_replacement", "scst") for b in ("1", "2")]  # fmt: skip
    for x in rows:
        assert 0.0 <= float(x["rougeL_mean"]) <= 100.0 and 0.0 <= float(x["bleu_mean"]) <= 100.0
    assert (tmp_path / "wd" / "exposure_bias.png").stat().st_size > 10_000
    assert "| beam | baseline | random_replacement | scst |" in r.stdout
    # SCST resumed from the baseline's checkpoint 2 steps before the end (4 of 6 steps).
    scst = tmp_path / "wd" / "runs" / "scst_seed0"
    assert "resumed from step 4" in r.stdout
    steps = [json.loads(x)["step"] for x in (scst / "metrics.jsonl").read_text().splitlines()]
    assert min(steps) == 5


def test_unilm_with_linear_attention_is_refused(tmp_path):
    r = _run(tmp_path, tmp_path / "data", "--config.base.seq2seq.layout=unilm",
             "--config.base.model.attention=linear")  # fmt: skip
    assert r.returncode == 2 and "needs model.attention='softmax'" in r.stderr
    assert "Traceback" not in r.stderr
