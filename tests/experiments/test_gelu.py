import json

import pytest

from configs import gelu as config_module
from research.config import ConfigError
from research.experiments import gelu
from tests.experiments import assert_only_process_0_writes


def test_forms_report_has_the_notes_constants_and_errors():
    r = gelu.forms_report(num_points=100_000)
    assert r["fit"]["tanh_coefficient"] == pytest.approx(0.0447149, abs=2e-6)
    assert r["fit"]["sigmoid_scale"] == pytest.approx(1.7017449, abs=2e-6)
    # the note's 3.6e-4 is the error of erf(x/sqrt2) = 2 Phi(x) - 1, twice Phi's
    assert 2 * r["tanh"]["phi_error"] == pytest.approx(gelu.NOTE_MAX_ERROR["tanh"], rel=0.05)
    assert r["sigmoid"]["phi_error"] == pytest.approx(gelu.NOTE_MAX_ERROR["sigmoid"], rel=0.05)
    assert r["tanh"]["gelu_error"] < r["sigmoid"]["gelu_error"]


def test_a_run_with_no_measured_rate_is_no_step_time(tmp_path, monkeypatch):
    """A point resumed at its last step measured 0 tokens/s: a ZeroDivisionError, every rerun."""
    c = config_module.get_config("smoke")
    c.activations = ("gelu",)

    def fake(pc, out, meta, **kw):
        return {"eval": {"loss": 3.0}, "tokens_per_second": 0.0, "note": ""}

    monkeypatch.setattr(gelu.sweep, "train_point", fake)
    (row,) = gelu.run(c, str(tmp_path / "wd"))
    assert row["eval_loss_mean"] == 3.0 and row["step_ms_mean"] != row["step_ms_mean"]  # NaN


def test_smoke_study_trains_every_form_and_resumes(tmp_path):
    c = config_module.get_config("smoke")
    wd = tmp_path / "gelu"
    rows = gelu.run(c, str(wd))
    assert [r["activation"] for r in rows] == ["gelu", "gelu_tanh", "gelu_sigmoid"]
    exact = rows[0]
    assert exact["diff_mean"] == 0.0 and exact["phi_max_error"] == 0.0
    # beside the note's figure, the error the note measures (erf's for tanh: 2x Phi's)
    for r, form in zip(rows[1:], ("tanh", "sigmoid"), strict=True):
        assert r["note_measure_error"] == pytest.approx(gelu.NOTE_MAX_ERROR[form], rel=0.05)
    assert gelu.table(rows).splitlines()[2].endswith("| - |")  # the exact form: no note figure
    for r in rows:
        assert r["step_ms_mean"] > 0 and 0 < r["eval_loss_mean"] < 10
    # same seed, same data and initial weights: only the activation differs, a little (the
    # tanh form's 2e-4 error may not show in a 12-step run's fp32 loss; the sigmoid's does)
    assert rows[2]["diff_mean"] != 0.0
    assert abs(rows[1]["diff_mean"]) < 1e-3 and abs(rows[2]["diff_mean"]) < 0.05
    for name in ("gelu.png", "gelu_forms.png"):
        assert (wd / name).stat().st_size > 10_000
    assert len((wd / "gelu.csv").read_text().splitlines()) == 4
    first = json.loads((wd / "results.json").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in wd.glob("runs/*/*")}
    assert len(stamps) >= 6  # result.json and metrics of 3 runs
    again = gelu.run(c, str(wd))  # every run cached by result.json: nothing retrains
    assert {p: p.stat().st_mtime_ns for p in wd.glob("runs/*/*")} == stamps
    assert json.loads((wd / "results.json").read_text()) == first
    assert again == rows
    names = ("gelu.csv", "gelu.png", "gelu_forms.png", "gelu_forms.json", "results.json")
    assert_only_process_0_writes(gelu, lambda: gelu.run(c, str(wd)), wd, names, rows)


def test_unknown_form(tmp_path):
    c = config_module.get_config("smoke")
    c.activations = ("gelu", "relu")
    with pytest.raises(ConfigError, match="'relu' is not a GELU form"):
        gelu.run(c, str(tmp_path))
