"""research.report: the shared writers produce exactly the CSV and tables the tools print."""

import csv
import math
import os

import matplotlib.pyplot as plt
import numpy as np
import pytest

from research import report


def test_write_csv_round_trips_with_the_given_columns(tmp_path):
    rows = [
        {"impl": "softmax-xla", "length": 512, "seconds": 0.25, "extra": "left out"},
        {"impl": "linear-chunked", "length": 1024, "seconds": None, "extra": "x"},
    ]
    report.write_csv(tmp_path / "t.csv", rows, ["impl", "length", "seconds"])
    with open(tmp_path / "t.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["impl", "length", "seconds"]
        back = list(reader)
    assert back == [
        {"impl": "softmax-xla", "length": "512", "seconds": "0.25"},
        {"impl": "linear-chunked", "length": "1024", "seconds": ""},
    ]
    report.write_csv(tmp_path / "all.csv", rows[:1])  # columns default to the first row's keys
    assert (tmp_path / "all.csv").read_text().splitlines() == [
        "impl,length,seconds,extra",
        "softmax-xla,512,0.25,left out",
    ]


def test_format_table_matches_the_printed_markdown():
    rows = [
        {"impl": "softmax-xla", "length": 16384, "seconds": 0.123456, "peak": 0.2},
        {"impl": "linear-chunked", "length": 1048576, "seconds": 2.5, "peak": 0.0512},
    ]
    formats = ("{impl}", "{length:,}", "{seconds:.4g}", lambda r: f"{r['peak']:.1%}")
    text = report.format_table(rows, ("impl", "length", "seconds", "of peak"), formats, "--rr")
    assert text == (
        "| impl | length | seconds | of peak |\n"
        "|---|---|---:|---:|\n"
        "| softmax-xla | 16,384 | 0.1235 | 20.0% |\n"
        "| linear-chunked | 1,048,576 | 2.5 | 5.1% |"
    )
    cells = [{"step": "train", "total": "1.00 GiB"}, {"step": "eval", "total": "12 B"}]
    assert report.format_table(cells).splitlines() == [
        "| step | total |",
        "|---|---|",
        "| train | 1.00 GiB |",
        "| eval | 12 B |",
    ]
    with pytest.raises(ValueError, match="one format"):
        report.format_table(rows, ("impl", "length"), ("{impl}",))


def test_machine_header_names_the_cpu_model(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Example CPU @ 2.00GHz\nflags\t\t: fpu\n")
    assert report.cpu_model(str(info)) == "Example CPU @ 2.00GHz"
    assert report.cpu_model(str(tmp_path / "missing")) is None
    header = report.machine_header()
    assert "jax" in header and "cpus" in header
    if report.cpu_model():
        assert f"({report.cpu_model()})" in header


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity call on this OS")
def test_usable_cpus_follows_this_threads_affinity():
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})  # what `taskset -c N` sets for a whole process
        assert report.usable_cpus() == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert report.usable_cpus() == len(allowed)


def test_machine_header_says_when_the_process_is_pinned(monkeypatch):
    """Under `taskset` the header names the usable cores beside the machine's."""
    monkeypatch.setattr(report.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(report, "usable_cpus", lambda: 1)
    assert "| cpus 8, 1 usable" in report.machine_header()
    monkeypatch.setattr(report, "usable_cpus", lambda: 8)
    header = report.machine_header()
    assert "| cpus 8" in header and "usable" not in header


def test_save_figure_writes_a_png_and_closes_the_figure(tmp_path):
    before = len(plt.get_fignums())
    with report.save_figure(tmp_path / "f.png", "title", 2, (6, 3)) as axes:
        axes[0].plot([1, 2], [3, 4])
    assert (tmp_path / "f.png").stat().st_size > 1000
    assert len(plt.get_fignums()) == before


def test_plural_and_mean_std_cells():
    assert [report.plural(n, "layer") for n in (0, 1, 2, 1024)] == [
        "0 layers",
        "1 layer",
        "2 layers",
        "1,024 layers",
    ]
    assert report.plural(1, "query", "queries") == "1 query"
    assert report.plural(3, "query", "queries") == "3 queries"
    mean, std = report.seed_stats([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, pytest.approx(np.std([1.0, 2.0, 3.0])))
    assert report.mean_std(mean, std, 3) == "2.00 ± 0.82"
    # One seed has no spread to report: NaN, printed as "(1 seed)", never "± 0.00".
    one = report.seed_stats([61.06])
    assert one[0] == 61.06 and math.isnan(one[1])
    assert report.mean_std(*one, 1) == "61.06 (1 seed)"
    assert report.mean_std(-0.000123, math.nan, 1, "+.5f") == "-0.00012 (1 seed)"
    assert report.mean_std(0.5, 0.25, 2, "+.3f") == "+0.500 ± 0.250"
    assert report.mean_std(*report.seed_stats([]), 0) == "-"
    assert report.over_seeds([3, 3]) == "mean ± std over 3 seeds"
    assert report.over_seeds([1, 1]) == "1 seed, no std"
    assert report.over_seeds([1, 3]) == "mean ± std over 1-3 seeds"


@pytest.mark.parametrize("seeds", [1, 3])
def test_experiment_tables_show_a_std_only_over_several_seeds(seeds):
    """The tables of every experiment that reports over seeds: "± std" over several seeds;
    over one, "(1 seed)" and no "± 0.00"; "1 layer", not "1 layers"."""
    from research.experiments import embedding_dim, exposure_bias, gelu, pet, qagen, theseus

    keys = list(qagen.METRICS)
    evals = [
        {**{k: 20.0 + s for k in keys}, **{f"baseline_{k}": 80.0 for k in keys}}
        for s in range(seeds)
    ]
    rows = qagen.summarize(evals)
    assert rows[0]["seeds"] == seeds and math.isnan(rows[0]["model_std"]) == (seeds == 1)
    tables = {"qagen": qagen.table(rows)}
    results = [
        {"setting": "fine_tune", "pattern": "-", "seed": s, "validation": 60.0 + s, "test": 50.0}
        for s in range(seeds)
    ]
    tables["pet"] = pet.table(pet.summarize(results, ["fine_tune"], ["t"]), ["t"])
    results = [
        {
            "kind": kind,
            "layers": k,
            "seed": s,
            "validation": 55.0 + s,
            "test": 54.0,
            "pooled": 54.5 + s,
            "params": 10,
            "tokens_per_s": 100.0,
        }
        for kind, k in (("predecessor", 2), ("theseus", 1))
        for s in range(seeds)
    ]
    tables["theseus"] = theseus.table(theseus.summarize(results, 2))
    results = [
        {"activation": form, "seed": s, "eval_loss": 2.0 + 0.01 * s, "step_ms": 30.0}
        for form in gelu.FORMS
        for s in range(seeds)
    ]
    forms = {"tanh": {"phi_error": 1e-4}, "sigmoid": {"phi_error": 1e-2}}
    tables["gelu"] = gelu.table(gelu.summarize(results, forms))
    results = [
        {
            "point": {"variant": "baseline", "seed": s},
            "eval": {f"beam1_{m}": 40.0 + s for m in exposure_bias.METRICS},
        }
        for s in range(seeds)
    ]
    rows = exposure_bias.summarize(results, ["baseline"], [1])
    tables["exposure_bias"] = exposure_bias.table(rows, ["baseline"], [1])
    results = [
        {
            "corpus": "c",
            "vocab_size": 100,
            "dim": d,
            "seed": s,
            "eval_nll": 3.0 + s / d,
            "train_pairs": 10,
            "unigram_nll": 4.0,
        }
        for d in (8, 16)
        for s in range(seeds)
    ]
    tables["embedding_dim"] = embedding_dim.table(embedding_dim.summarize(results, 0.01))

    assert "theseus (1 layer)" in tables["theseus"] and "1 layers" not in tables["theseus"]
    assert "predecessor (2 layers)" in tables["theseus"]
    for name, text in tables.items():
        assert "nan" not in text.lower(), (name, text)
        if seeds == 1:
            assert "(1 seed" in text and "±" not in text.split("\n\n")[0], (name, text)
        else:
            assert "(1 seed" not in text and "±" in text, (name, text)
    if seeds == 3:
        assert "| question BLEU-4 | 21.00 ± 0.82 | 80.00 |" in tables["qagen"]
    else:
        assert "| question BLEU-4 | 20.00 (1 seed) | 80.00 |" in tables["qagen"]
        assert "40.00 / 40.00 / 40.00 / 40.00 (1 seed; exact 40.0)" in tables["exposure_bias"]
        assert "one seed, no std" in tables["exposure_bias"]
