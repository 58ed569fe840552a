"""research.report: the shared writers produce exactly the CSV and tables the tools print."""

import csv

import matplotlib.pyplot as plt
import pytest

from research import report


def test_write_csv_round_trips_with_the_given_columns(tmp_path):
    rows = [{"impl": "softmax-xla", "length": 512, "seconds": 0.25, "extra": "left out"},
            {"impl": "linear-chunked", "length": 1024, "seconds": None, "extra": "x"}]  # fmt: skip
    report.write_csv(tmp_path / "t.csv", rows, ["impl", "length", "seconds"])
    with open(tmp_path / "t.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["impl", "length", "seconds"]
        back = list(reader)
    assert back == [{"impl": "softmax-xla", "length": "512", "seconds": "0.25"},
                    {"impl": "linear-chunked", "length": "1024", "seconds": ""}]  # fmt: skip
    report.write_csv(tmp_path / "all.csv", rows[:1])  # columns default to the first row's keys
    assert (tmp_path / "all.csv").read_text().splitlines() == [
        "impl,length,seconds,extra", "softmax-xla,512,0.25,left out"]  # fmt: skip


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
        "| step | total |", "|---|---|", "| train | 1.00 GiB |", "| eval | 12 B |"]  # fmt: skip
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


def test_save_figure_writes_a_png_and_closes_the_figure(tmp_path):
    before = len(plt.get_fignums())
    with report.save_figure(tmp_path / "f.png", "title", 2, (6, 3)) as axes:
        axes[0].plot([1, 2], [3, 4])
    assert (tmp_path / "f.png").stat().st_size > 1000
    assert len(plt.get_fignums()) == before
