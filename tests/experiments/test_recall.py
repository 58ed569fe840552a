"""configs/recall.py:smoke end to end in process (training mixture, test segments, table, CSV,
PNG, cached accuracies), the recall count against a per-example NumPy count, and bad input."""

import csv
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import recall as config
from research.config import ConfigError
from research.experiments import EXPERIMENTS, recall
from research.models import DecoderLM, ModelConfig
from research.train.trained import load_trained


def _smoke(tmp_path):
    c = config.get_config("smoke")
    c.mqar.data.data_dir = str(tmp_path / "data")
    return c


def test_smoke_study_table_csv_png_and_cached_accuracies(tmp_path, capsys):
    c = _smoke(tmp_path)
    wd = tmp_path / "wd"
    rows = EXPERIMENTS["recall"](c, str(wd))
    assert [(r["attention"], r["width"]) for r in rows] == [("softmax", 16), ("elu", 16)]
    out = capsys.readouterr().out
    assert "| attention | width | lr | 32:4 | 64:8 | mean | state bytes | params |" in out
    table = list(csv.DictReader(open(wd / "recall.csv")))
    assert [x["attention"] for x in table] == ["softmax", "elu"]
    assert (wd / "recall.png").stat().st_size > 10_000
    # Each run trained on the mixture, padded to its longest segment (32 tokens).
    run = load_trained(wd / "runs" / "softmax_d16_lr0.003")
    assert run.config.data.mqar_segments == ("16:2", "32:4") and run.config.data.seq_len == 32
    # The state at the longest test length (64): softmax's KV cache, 2 layers x (K, V) x 64
    # positions x width 16 x fp32; elu+1 linear attention's does not grow with the length: per
    # layer 2 heads x (F Dv + F) fp32 with F = Dv = 8. Both keep the key convolution's last 2
    # inputs (2 layers x 2 x 16 x fp32).
    by = {r["attention"]: r for r in rows}
    assert by["softmax"]["state_bytes"] == 2 * 2 * 64 * 16 * 4 + 2 * 2 * 16 * 4
    assert by["elu"]["state_bytes"] == 2 * 2 * (8 * 8 + 8) * 4 + 2 * 2 * 16 * 4
    for r in rows:
        assert set(r["accuracy"]) == {"32:4", "64:8"}
        assert r["mean"] == pytest.approx(np.mean(list(r["accuracy"].values())))

    # A rerun trains nothing and reads each run's recall.json; other test segments are measured.
    path = wd / "runs" / "softmax_d16_lr0.003" / "recall.json"
    saved = json.loads(path.read_text())
    saved["accuracy"]["32:4"] = 0.75  # a marker: only a cached read can return it
    path.write_text(json.dumps(saved))
    again = EXPERIMENTS["recall"](c, str(wd))
    assert again[0]["accuracy"]["32:4"] == 0.75
    assert "reusing the finished run" in capsys.readouterr().out
    c.test_segments = ("32:4",)
    measured = recall.evaluate_point(c, path.parent)
    assert measured["32:4"] != 0.75 and set(measured) == {"32:4"}
    assert json.loads(path.read_text())["accuracy"] == measured  # the cache follows the key

    # A second seed: seed 0's run is reused, seed 1 trains in its own directory with its own
    # seed. A marker in seed 0's cached accuracies makes the two seeds differ: the row is their
    # mean, ± their (population) std.
    c.test_segments, c.attentions, c.seeds = ("32:4", "64:8"), ("softmax",), (0, 1)
    EXPERIMENTS["recall"](c, str(wd))
    out = capsys.readouterr().out
    assert f"reusing the finished run in {wd / 'runs' / 'softmax_d16_lr0.003'}\n" in out
    assert f"training in {wd / 'runs' / 'softmax_d16_lr0.003_s1'}" in out
    assert load_trained(wd / "runs" / "softmax_d16_lr0.003_s1").config.train.seed == 1
    saved = json.loads(path.read_text())
    saved["accuracy"]["32:4"] = 0.75
    path.write_text(json.dumps(saved))
    (row,) = EXPERIMENTS["recall"](c, str(wd))
    out = capsys.readouterr().out
    runs = list(csv.DictReader(open(wd / "recall_runs.csv")))
    assert [int(r["seed"]) for r in runs] == [0, 1] and float(runs[0]["32:4"]) == 0.75
    assert float(runs[0]["mean"]) == pytest.approx((0.75 + float(runs[0]["64:8"])) / 2)
    assert [int(r["d_ff"]) for r in runs] == [64, 64]  # 4 x width 16
    means = [float(r["mean"]) for r in runs]
    assert row["seeds"] == [0, 1] and row["seed_means"] == pytest.approx(means)
    assert row["mean"] == pytest.approx(np.mean(means))
    assert row["std"] == pytest.approx(np.std(means)) and row["std"] > 0
    assert row["accuracy"]["32:4"] == pytest.approx((0.75 + float(runs[1]["32:4"])) / 2)
    assert f"{row['mean']:.3f} ± {row['std']:.3f}" in out and "mean per seed" in out
    assert list(csv.DictReader(open(wd / "recall.csv")))[0]["seeds"] == "2"


def test_recall_counts_weighted_positions_whose_argmax_is_the_value():
    """Batched, padded and jitted recall equals a per-example NumPy count: half the weighted
    targets are set to the model's own prediction (hits), the rest to another token."""
    cfg = ModelConfig(vocab_size=32, d_model=16, num_heads=2, num_layers=1, d_ff=32, max_length=64)
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    n, length = 5, 12
    inputs = rng.integers(0, 32, (n, length)).astype(np.int32)
    weights = (rng.random((n, length)) < 0.4).astype(np.float32)
    weights[0, 0] = 1.0
    pred = np.stack([np.argmax(np.asarray(model(jnp.asarray(x[None])))[0], -1) for x in inputs])
    hit = rng.random((n, length)) < 0.5
    targets = np.where(hit, pred, (pred + 1) % 32).astype(np.int32)
    want = (hit * weights).sum() / weights.sum()
    data = {"inputs": inputs, "targets": targets, "weights": weights}
    got = recall.accuracy(model, data, batch_size=2)  # 5 examples: the last batch is padded
    assert got == pytest.approx(want, abs=1e-6) and 0 < want < 1


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("attentions", ("softmax", "cosine"), "attentions: unknown 'cosine'"),
        ("train_segments", ("16:5",), "train_segments: '16:5' needs 1 <= 4 * pairs <= length"),
        ("test_segments", ("64",), "test_segments: '64' is not 'LENGTH:PAIRS'"),
        ("test_segments", ("256:64",), "test_segments: '256:64' needs mqar.data.vocab_size > 130"),
        ("test_examples", 0, "test_examples=0: must be a positive int"),
        ("eval_batch_size", 0, "eval_batch_size=0: must be a positive int"),
        ("seeds", (0, 0), "seeds=(0, 0): must be distinct ints in [0, 2**31 - 1]"),
        ("seeds", (-1,), "seeds=(-1,): must be distinct ints in [0, 2**31 - 1]"),
        ("d_ff", -1, "d_ff=-1: must be an int >= 0"),
    ],
)
def test_bad_study_config_is_one_line_before_anything_trains(tmp_path, key, value, message):
    c = _smoke(tmp_path)
    c[key] = value
    with pytest.raises(ConfigError) as e:
        EXPERIMENTS["recall"](c, str(tmp_path / "wd"))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert not (tmp_path / "wd").exists()


def test_a_mqar_seed_is_refused_in_favour_of_seeds(tmp_path):
    c = _smoke(tmp_path)
    c.mqar.seed = 1
    with pytest.raises(ConfigError, match=r"^mqar.seed=1: .* use --config.seeds=1$"):
        EXPERIMENTS["recall"](c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_a_position_table_shorter_than_the_test_segments_is_refused(tmp_path):
    """Learned positions train a table of the longest training segment; a longer test segment
    would fail only after every point had trained."""
    c = _smoke(tmp_path)
    c.mqar.model.positions = "learned"
    longest = max(int(s.split(":")[0]) for s in c.train_segments)
    c.test_segments = (f"{2 * longest}:4",)
    with pytest.raises(ConfigError) as e:
        EXPERIMENTS["recall"](c, str(tmp_path / "wd"))
    assert str(e.value) == (
        f"mqar.model.positions='learned' keeps a table of the training length ({longest} "
        f"tokens) but test_segments reach {2 * longest}: use rotary or none"
    )
    assert not (tmp_path / "wd").exists()


def test_the_learning_rate_is_chosen_by_its_mean_over_seeds():
    """Rate 1e-3 has the best single run (0.9) but the lower mean (0.5 against 0.6); rate 1e-2
    has the best run of all but a diverged (NaN) seed, so it ranks last. One seed: std NaN."""
    c = config.get_config()
    c.attentions = ("softmax",)

    def run(lr, seed, mean):
        return {
            "attention": "softmax", "width": 64, "lr": lr, "seed": seed, "mean": mean,
            "accuracy": {"64:4": mean}, "state_bytes": 1, "params": 2,
        }  # fmt: skip

    results = [run(1e-3, 0, 0.9), run(1e-3, 1, 0.1), run(3e-3, 0, 0.6), run(3e-3, 1, 0.6)]
    results += [run(1e-2, 0, 0.99), run(1e-2, 1, float("nan"))]
    (row,) = recall.summarize(c, results)
    assert row["lr"] == 3e-3 and row["mean"] == pytest.approx(0.6) and row["std"] == 0.0
    assert row["seeds"] == [0, 1] and row["accuracy"] == {"64:4": pytest.approx(0.6)}
    (row,) = recall.summarize(c, [run(1e-3, 0, 0.9), run(3e-3, 0, 0.6)])
    assert row["lr"] == 1e-3 and np.isnan(row["std"])


def test_presets_parse_and_the_zoology_preset_is_zoology_s_protocol():
    for preset in ("", "zoology", "smoke"):
        recall.points(config.get_config(preset))  # every point's config parses
    c = config.get_config("zoology")
    assert tuple(c.train_segments) == ("64:4", "128:8", "256:16", "256:32", "256:64")
    assert max(int(s.split(":")[0]) for s in c.test_segments) == 1024
    assert {int(s.split(":")[1]) for s in c.test_segments} == {4, 8, 16, 32, 64, 128, 256}
    with pytest.raises(ValueError, match="unknown preset 'big'"):
        config.get_config("big")


def test_d_ff_widens_the_mlp_without_changing_the_state():
    """The control for model size: d_ff changes the parameters by exactly the MLP's (2 layers x
    (2 x width + the up-projection's bias) per unit of d_ff), not the decode state, and names
    its runs apart."""
    c = config.get_config()
    c.attentions, c.seeds = ("taylor",), (0, 2)
    base = recall.points(c)[0]
    c.d_ff = 1664
    wide = recall.points(c)
    assert [p.name for p in wide] == ["taylor_d64_lr0.003_ff1664", "taylor_d64_lr0.003_ff1664_s2"]
    pc = recall.point_config(c, wide[1])
    assert pc.model.d_ff == 1664 and pc.seed == 2
    (s0, n0), (s1, n1) = (recall.state_and_params(c, p, 1024) for p in (base, wide[0]))
    assert s1 == s0 and n1 - n0 == 2 * (2 * 64 + 1) * (1664 - 4 * 64)
