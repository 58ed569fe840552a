"""The default experiment (configs/compare_attention.py:smoke) end to end through the CLI."""

import csv
import json
import pathlib
import subprocess
import sys

import pytest

from tests.cpu import cpu_env
from tests.preemption import sigterm_after_metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _env():
    return cpu_env(2)


def _cmd(workdir, data_dir, *overrides):
    return [
        sys.executable,
        "-m",
        "research.main",
        "--config=configs/compare_attention.py:smoke",
        f"--workdir={workdir}",
        f"--config.mqar.data.data_dir={data_dir}",
        f"--config.lm.data.data_dir={data_dir}",
        *overrides,
    ]


def _run(workdir, data_dir, *overrides):
    return subprocess.run(
        _cmd(workdir, data_dir, *overrides),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_smoke_sweep_table_csv_png_and_free_rerun(tmp_path):
    r = _run(tmp_path / "wd", tmp_path / "data")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "wd" / "compare.csv")))
    assert [(x["attention"], x["width"]) for x in rows] == [("softmax", "32"), ("elu", "32")]
    for x in rows:
        assert 0.0 <= float(x["mqar_accuracy"]) <= 1.0 and float(x["lm_perplexity"]) > 1.0
        assert float(x["train_tokens_per_s"]) > 0 and float(x["decode_ms_64"]) > 0
    # Decode state: KV cache 2 layers x 2 (K, V) x (32 + 4) positions x width x fp32 for
    # softmax; elu+1 linear: 2 layers x heads x (F Dv + F) x fp32, F = Dv = width / 2 heads;
    # both plus the key convolution's last 2 inputs per layer (2 layers x 2 x width x fp32).
    by = {x["attention"]: int(x["state_bytes"]) for x in rows}
    assert by["softmax"] == 2 * 2 * 36 * 32 * 4 + 2 * 2 * 32 * 4
    assert by["elu"] == 2 * 2 * (16 * 16 + 16) * 4 + 2 * 2 * 32 * 4
    # The elu+1 feature map has no parameters: the softmax and elu models have equal counts.
    params = {x["attention"]: int(x["params"]) for x in rows}
    assert params["softmax"] == params["elu"]
    assert (tmp_path / "wd" / "compare.png").stat().st_size > 10_000
    assert (
        "| attention | width | d_ff | MQAR acc |" in r.stdout
        and "| decode ms/tok @64 |" in r.stdout
    )
    # On a multi-core CPU (the child runs on CPU: cpu_env) the caveat follows the table's last row.
    from research.experiments.compare_attention import decode_caveat
    from research.report import usable_cpus

    caveat = decode_caveat("cpu", usable_cpus())
    last_row = next(line for line in r.stdout.splitlines() if line.startswith("| elu | 32 |"))
    assert f"{last_row}\n{caveat}\n" in r.stdout if caveat else "taskset" not in r.stdout

    # A rerun reuses every finished point; a changed config in the same workdir is refused.
    # A result saved before model.scan_layers existed is the same config (the key's default).
    path = tmp_path / "wd/runs/mqar_elu_d32_lr0.01/result.json"
    first = json.loads(path.read_text())
    del first["config"]["model"]["scan_layers"]
    path.write_text(json.dumps(first))
    # (In process: the CLI ran above; its exit 2 for a ConfigError is tests/test_cli.py's.)
    from configs import compare_attention as cfg
    from research.experiments import EXPERIMENTS
    from research.train.config import ConfigError

    c = cfg.get_config("smoke")
    c.mqar.data.data_dir = c.lm.data.data_dir = str(tmp_path / "data")
    again = EXPERIMENTS["compare_attention"](c, str(tmp_path / "wd"))
    assert [(x["attention"], x["width"]) for x in again] == [("softmax", 32), ("elu", 32)]
    assert json.loads(path.read_text()) == first
    c.mqar.num_train_steps = 9
    with pytest.raises(ConfigError, match=r"different config \(num_train_steps 8 -> 9\)"):
        EXPERIMENTS["compare_attention"](c, str(tmp_path / "wd"))


def test_the_decode_caveat_is_printed_only_for_a_multi_core_cpu():
    """Softmax's decode time varies between runs where XLA's CPU threads hand work to each other
    (docs/linear_vs_softmax.md); one core or an accelerator prints no caveat."""
    from research.experiments.compare_attention import decode_caveat

    assert decode_caveat("cpu", 2).startswith(
        "decode ms/tok on 2 CPU cores can vary between runs (XLA's threads; about 5x on 2 cores): "
        "rerun under `taskset -c 0` with the same flags and workdir"
    )
    assert decode_caveat("cpu", 1) == decode_caveat("gpu", 8) == decode_caveat("tpu", 4) == ""


def test_bad_sweep_values_are_one_line_config_errors():
    from configs import compare_attention as cfg
    from research.experiments import compare_attention
    from research.train.config import ConfigError

    c = cfg.get_config("smoke")
    c.attentions = ("softmax", "cosine")
    with pytest.raises(ConfigError, match=r"^attentions: unknown 'cosine'; allowed softmax, "):
        compare_attention.points(c)
    c = cfg.get_config("smoke")
    c.tasks = ("mqar,recall",)  # as --config.tasks=mqar,recall gives it
    with pytest.raises(ConfigError, match=r"^tasks: unknown 'recall'; allowed mqar, lm or both$"):
        compare_attention.points(c)


def test_bad_decode_tokens_is_reported_before_any_run():
    from configs import compare_attention as cfg
    from research.experiments import compare_attention
    from research.train.config import ConfigError

    c = cfg.get_config("smoke")
    for bad in (0, -1):
        c.decode_tokens = bad
        with pytest.raises(ConfigError, match=f"decode_tokens={bad}: must be a positive int"):
            compare_attention.points(c)
    c.decode_tokens = 4
    c.decode_contexts = (1024, 0)
    with pytest.raises(ConfigError, match="decode_contexts: 0 is not a positive int"):
        compare_attention.points(c)


def test_sigterm_stops_the_sweep_without_recording_the_partial_point(tmp_path):
    wd = tmp_path / "wd"
    first = wd / "runs" / "mqar_softmax_d32_lr0.01"
    long = ("--config.mqar.num_train_steps=100000", "--config.mqar.checkpoint_every_steps=100000")
    code, out, err = sigterm_after_metrics(
        _cmd(wd, tmp_path / "data", *long), first / "metrics.jsonl", 3, cwd=ROOT, env=_env()
    )
    assert code == 0, err[-3000:]
    assert f"preempted in {first} at step" in out
    assert not (first / "result.json").exists()  # a partial run is not a result
    assert [p.name for p in (wd / "runs").iterdir()] == [first.name]  # the sweep stopped
    assert any(p.name.isdigit() for p in (first / "checkpoints").iterdir())  # resumable


def test_a_sweep_without_the_lm_prints_dashes_not_nan(tmp_path):
    from configs import compare_attention as cfg
    from research.experiments import compare_attention as ca

    c = cfg.get_config("smoke")
    c.tasks, c.widths = ("mqar",), (16, 32)
    results = [
        {
            "point": {"task": "mqar", "attention": a, "width": w, "lr": 0.01},
            "eval": {"accuracy": acc, "loss": 1.0},
            "tokens_per_second": 10.0,
        }
        for a in ("softmax", "elu")
        for w in (16, 32)
        for acc in (0.5, float("nan"))
    ]
    decode = {(a, w): (64, 1000) for a in ("softmax", "elu") for w in (16, 32)}
    latency = {(a, w): {1024: 0.005, 8192: 0.0125} for a in ("softmax", "elu") for w in (16, 32)}
    rows = ca.summarize(c, results, decode, latency)
    assert [r["mqar_accuracy"] for r in rows] == [0.5] * 4  # a diverged (NaN) lr never wins
    text = ca.table(rows)
    assert "| softmax | 16 | 64 | 0.500 | 0.01 | - | - | 10 | 5.000 | 12.500 | 64 | 1,000 |" in text
    assert "| decode ms/tok @1k | decode ms/tok @8k |" in text
    assert ca.fields(rows)[-4:] == ("decode_ms_1024", "decode_ms_8192", "state_bytes", "params")
    assert "nan" not in text  # NaN means diverged; the LM was simply not run
    ca.plot(rows, tmp_path / "p.png", "title")
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_an_lm_only_sweep_and_one_data_dir_for_both_tasks(tmp_path):
    from configs import compare_attention as cfg
    from research.experiments import compare_attention as ca

    c = cfg.get_config("smoke")
    c.tasks, c.widths = ("lm",), (16, 32)
    c.data_dir = str(tmp_path / "data")
    points = ca.points(c)
    assert {p.task for p in points} == {"lm"} and len(points) == 4
    assert ca.point_config(c, points[0]).data.data_dir == str(tmp_path / "data")
    mqar_point = ca.Point("mqar", "softmax", 16, 0.01)
    assert ca.point_config(c, mqar_point).data.data_dir == str(tmp_path / "data")
    results = [
        {
            "point": {"task": "lm", "attention": a, "width": w, "lr": 0.003},
            "eval": {"accuracy": 0.1, "loss": 4.0 + w / 1000 + (a == "elu") / 100},
            "tokens_per_second": 7.0,
        }
        for a in ("softmax", "elu")
        for w in (16, 32)
    ]
    decode = {(a, w): (64, 1000) for a in ("softmax", "elu") for w in (16, 32)}
    latency = {(a, w): {1024: 0.005, 8192: 0.0125} for a in ("softmax", "elu") for w in (16, 32)}
    rows = ca.summarize(c, results, decode, latency)
    assert (
        "| softmax | 16 | 64 | - | - | 4.016 | 55.5 | 7 | 5.000 | 12.500 | 64 | 1,000 |"
        in ca.table(rows)
    )
    # The LM panel says how far apart the attentions are at a width: exp(0.01) - 1 = 1.01%.
    assert ca._spread(rows) == "\n(attentions within 1.01% at each width)"
    ca.plot(rows, tmp_path / "p.png", "title")
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_the_default_compares_softmax_a_2020_map_gla_and_gated_deltanet():
    """Every default point parses; the delta kinds drop the key convolution (they convolve q, k,
    v themselves), the others keep the config's."""
    from configs import compare_attention as cfg
    from research.experiments import compare_attention as ca
    from research.train.config import ConfigError

    c = cfg.get_config()
    points = ca.points(c)  # parses every point's config: a bad combination raises here
    assert {p.attention for p in points} == {"softmax", "taylor", "gla", "gated_deltanet"}
    models = {p.attention: ca.point_config(c, p).model for p in points}
    assert models["gated_deltanet"].attention == "gated_deltanet"
    assert models["gated_deltanet"].short_conv == 0 and models["gla"].short_conv == 3
    assert (models["taylor"].attention, models["taylor"].feature_map) == ("linear", "taylor")
    # One MQAR run per kind at its own learning rate (learning_rates_by_attention), LM at one.
    mqar = sorted((p.attention, p.lr) for p in points if p.task == "mqar")
    assert mqar == [("gated_deltanet", 1e-3), ("gla", 1e-3), ("softmax", 1e-2), ("taylor", 3e-3)]
    c.learning_rates_by_attention.gla = (1e-2, 3e-3)
    assert [p.lr for p in ca.points(c) if p.name.startswith("mqar_gla")] == [1e-2, 3e-3]
    c.learning_rates_by_attention = {"cosine": (1e-3,)}
    with pytest.raises(ConfigError, match="learning_rates_by_attention: unknown 'cosine'"):
        ca.points(c)


def test_equal_params_widens_each_mlp_to_the_largest_kinds_count():
    """equal_params: every kind's MLP is widened until its parameter count is within half an MLP
    unit of the largest kind's (one more hidden unit adds a wi column, its bias and a wo row in
    each layer: num_layers x (2 width + 1) parameters), on each task's model; that kind keeps
    4 x width and its run names, the others run as `_ffN` points."""
    from configs import compare_attention as cfg
    from research.experiments import compare_attention as ca
    from research.experiments.model_cost import parameter_count

    c = cfg.get_config()
    c.widths = (16,)  # each width is matched on its own (the rounding test below)
    assert all(p.d_ff == 0 for p in ca.points(c))  # off by default: d_ff = 4 x width for all
    c.equal_params = True
    points = ca.points(c)
    ff = {(p.task, p.attention, p.width): p.d_ff for p in points}
    assert len(ff) == 2 * 4  # tasks x kinds

    def count(task, attention, width, d_ff, shapes_only=True):
        p = ca.Point(task, attention, width, 1e-3, d_ff)
        model = ca._model(c, p, c[task].data.seq_len, shapes_only=shapes_only)
        return parameter_count(model)

    # Counting on shapes (as equal_params does) gives the built model's count.
    widened = ff["mqar", "softmax", 16]
    assert count("mqar", "softmax", 16, widened) == count("mqar", "softmax", 16, widened, False)

    for task in ("mqar", "lm"):
        for w in c.widths:
            unit = c[task].model.num_layers * (2 * w + 1)
            kinds = c.attentions
            defaults = {a: count(task, a, w, 0) for a in kinds}
            largest = max(defaults, key=defaults.get)
            assert ff[task, largest, w] == 0
            assert all(ff[task, a, w] > 4 * w for a in kinds if a != largest)
            for a in kinds:
                d_ff = ff[task, a, w] or 4 * w
                matched = count(task, a, w, d_ff)
                assert abs(matched - defaults[largest]) <= unit / 2, (task, w, a, matched)
                assert matched - defaults[a] == unit * (d_ff - 4 * w)
    names = {p.name for p in points}
    assert f"mqar_softmax_d16_lr0.01_ff{ff['mqar', 'softmax', 16]}" in names
    assert f"lm_taylor_d16_lr0.003_ff{ff['lm', 'taylor', 16]}" in names


def test_equal_param_mlp_widths_rounds_to_the_nearest_unit():
    """Counts linear in d_ff (kind a: 1000 + 10 d_ff, b: 1300 + 10 d_ff, c: 1236 + 10 d_ff, at
    width 8 so d_ff starts at 32): b is the largest (1620); a needs 30 more units, c needs 6.4
    (rounded to 6: 1616, 4 short, nearer than 7 units' 1626)."""
    from research.experiments.model_cost import equal_param_mlp_widths

    base = {"a": 1000, "b": 1300, "c": 1236}
    got = equal_param_mlp_widths(lambda k, d_ff: base[k] + 10 * d_ff, ("a", "b", "c"), 8)
    assert got == {"a": 62, "b": 32, "c": 38}


def test_the_table_shows_each_rows_mlp_width():
    """A result saved before d_ff existed reads as 4 x width; a widened point shows its own."""
    from configs import compare_attention as cfg
    from research.experiments import compare_attention as ca

    c = cfg.get_config("smoke")
    c.tasks, c.widths = ("mqar",), (16,)
    results = [
        {
            "point": {"task": "mqar", "attention": a, "width": 16, "lr": 0.01, **extra},
            "eval": {"accuracy": 0.5, "loss": 1.0},
            "tokens_per_second": 10.0,
        }
        for a, extra in (("softmax", {"d_ff": 80}), ("elu", {}))
    ]
    decode = {(a, 16): (64, 1000) for a in ("softmax", "elu")}
    latency = {(a, 16): {1024: 0.005} for a in ("softmax", "elu")}
    rows = ca.summarize(c, results, decode, latency)
    assert [(r["attention"], r["d_ff"]) for r in rows] == [("softmax", 80), ("elu", 64)]
    assert "| softmax | 16 | 80 | 0.500 |" in ca.table(rows)
    assert ca.fields(rows)[:3] == ("attention", "width", "d_ff")
