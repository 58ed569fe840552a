import csv
import json
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import embedding_dim as config_module
from research.config import ConfigError
from research.experiments import embedding_dim
from tests.experiments import assert_only_process_0_writes


def test_needed_dim_is_the_smallest_within_tolerance():
    nll = {4: 5.30, 8: 5.12, 16: 5.05, 32: 5.04, 64: 5.06}
    assert embedding_dim.needed_dim(nll, 0.02) == 16
    assert embedding_dim.needed_dim(nll, 0.0) == 32
    assert embedding_dim.needed_dim(nll, 1.0) == 4
    assert embedding_dim.needed_dim({**nll, 2: math.nan}, 0.02) == 16


def test_a_diverged_dim_is_never_the_best():
    """min() over the dims kept a NaN mean that came first: "best n 4 | nan"."""
    row = {"corpus": "c", "vocab_size": 100, "train_pairs": 9, "unigram_nll": 5.0, "seed": 0}
    results = [{**row, "dim": d, "eval_nll": x} for d, x in ((4, math.nan), (8, 3.0), (16, 2.5))]
    (summary,) = embedding_dim.summarize(results, tolerance=0.1)
    assert (summary["best_dim"], summary["best_nll"], summary["needed_dim"]) == (16, 2.5, 16)
    # Every dim diverged at this N: a row of NaN and a table (it raised after the whole sweep).
    results = [{**r, "eval_nll": math.nan} for r in results]
    (summary,) = embedding_dim.summarize(results, tolerance=0.1)
    assert math.isnan(summary["best_nll"]) and math.isnan(summary["needed_dim"])
    assert "| nan |" in embedding_dim.table([summary])


def test_lazy_adam_is_adam_on_touched_rows_and_leaves_the_others_alone():
    params = {"u": jnp.arange(12.0).reshape(4, 3) / 7}
    init, update = embedding_dim.lazy_adam(0.1)
    ref = optax.adam(0.1)
    state, ref_state, ref_params = init(params), ref.init(params), params
    rng = np.random.default_rng(0)
    for _ in range(3):  # every row touched: exactly Adam
        g = {"u": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
        params, state = update(g, state, params)
        up, ref_state = ref.update(g, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, up)
        np.testing.assert_allclose(params["u"], ref_params["u"], rtol=1e-5, atol=1e-6)
    g = {"u": jnp.zeros((4, 3)).at[1].set(1.0)}  # only row 1 touched
    new, state2 = update(g, state, params)
    np.testing.assert_array_equal(
        np.asarray(new["u"])[[0, 2, 3]], np.asarray(params["u"])[[0, 2, 3]]
    )
    np.testing.assert_array_equal(np.asarray(state2["m"]["u"])[0], np.asarray(state["m"]["u"])[0])
    assert not np.allclose(new["u"][1], params["u"][1])


@pytest.mark.parametrize("negatives", [0, 8])
def test_skipgram_learns_a_deterministic_successor(negatives):
    # context = (center + 1) mod N: a perfect model has NLL 0, the unigram model ln N.
    n = 32
    centers = np.random.default_rng(0).integers(0, n, 4000)
    pairs = np.stack([centers, (centers + 1) % n], 1).astype(np.int32)
    r = embedding_dim.train_skipgram(
        pairs,
        pairs[:512],
        vocab_size=n,
        dim=16,
        num_pairs=100_000,
        batch_size=256,
        learning_rate=0.05,
        negatives=negatives,
    )
    assert r["eval_nll"] < 0.15 * math.log(n), r


def _smoke(tmp_path):
    c = config_module.get_config("smoke")
    return c, tmp_path / "emb"


def test_sweep_writes_outputs_and_resumes(tmp_path, capsys):
    c, wd = _smoke(tmp_path)
    rows = embedding_dim.run(c, str(wd))
    assert [(r["vocab_size"]) for r in rows] == [300, 3000]
    lines = (wd / "embedding_dim_points.csv").read_text().splitlines()
    assert len(lines) == 1 + 4 and "eval_nll" in lines[0]
    # The best and needed n, recomputed from the points' held-out NLL (mean over seeds).
    points_csv = list(csv.DictReader(lines))
    for r in rows:
        nll = {}
        for p in points_csv:
            if int(p["vocab_size"]) == r["vocab_size"]:
                nll.setdefault(int(p["dim"]), []).append(float(p["eval_nll"]))
        mean = {d: sum(v) / len(v) for d, v in nll.items()}
        best = min(mean, key=mean.get)
        assert r["best_dim"] == best and r["best_nll"] == pytest.approx(mean[best])
        assert r["needed_dim"] == min(d for d in mean if mean[d] <= mean[best] + c.tolerance)
        assert r["rule_dim"] == pytest.approx(8.33 * math.log(r["vocab_size"]))
    assert (wd / "embedding_dim.png").stat().st_size > 10_000
    points = sorted((wd / "points").glob("*.json"))
    assert len(points) == 4
    before = {p.name: json.loads(p.read_text()) for p in points}
    capsys.readouterr()
    points[0].unlink()  # as if the sweep had been killed during that point
    embedding_dim.run(c, str(wd))
    out = capsys.readouterr().out
    after = {p.name: json.loads(p.read_text()) for p in sorted((wd / "points").glob("*.json"))}
    retrained = [
        n
        for n in after
        if after[n]["result"]["train_seconds"] != before[n]["result"]["train_seconds"]
    ]
    assert retrained == [points[0].name], out
    for name in after:  # same seed, same points: the retrained one agrees with the first run
        assert after[name]["result"]["eval_nll"] == pytest.approx(
            before[name]["result"]["eval_nll"], abs=1e-5
        )
    latest = embedding_dim.run(c, str(wd))  # every point cached
    names = ("embedding_dim.csv", "embedding_dim_points.csv", "embedding_dim.png")
    rerun = lambda: embedding_dim.run(c, str(wd))  # noqa: E731
    assert_only_process_0_writes(embedding_dim, rerun, wd, names, latest)
    c.learning_rate = 0.5
    with pytest.raises(ConfigError, match="different config"):
        embedding_dim.run(c, str(wd))


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("corpora", ("wiki",), "'wiki' unknown"),
        ("dims", (0, 4), "dims"),
        ("num_pairs", 0, "num_pairs=0"),
        ("learning_rate", -1.0, "learning_rate"),
    ],
)
def test_bad_config(tmp_path, key, value, match):
    c, wd = _smoke(tmp_path)
    c[key] = value
    with pytest.raises(ConfigError, match=match):
        embedding_dim.run(c, str(wd))
    assert not (wd / "points").exists() or not any((wd / "points").iterdir())
