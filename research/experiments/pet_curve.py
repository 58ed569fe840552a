"""The zero-shot signal along + MLM training (docs/pet.md's curve): PET's `zero_shot_mlm` runs
scored at every kept checkpoint when the experiment's `signal_curve` is on.

Each entry is one (pattern, step, seed) of `research.tasks.pet.zero_shot_signal`: the AUC of
the label-score gap, the accuracy with a threshold chosen on validation labels, and with the
label-free median threshold. Rows give mean ± std over seeds per (pattern, step).
"""

import pathlib

import numpy as np

from research.config import ConfigError
from research.experiments import sweep
from research.models import params as params_io
from research.report import format_table, mean_std, over_seeds, save_figure, seed_stats, write_csv

FIGURES = ("auc_validation", "auc_test", "threshold_test", "median_validation", "median_test")


def check(c, settings, verbalizer) -> None:
    """With `signal_curve` on: ConfigError unless it can draw one (the + MLM runs, a signal of
    two words, every scheduled checkpoint kept), before anything trains."""
    if not c.signal_curve:
        return
    if "zero_shot_mlm" not in settings:
        raise ConfigError(f"signal_curve=True needs zero_shot_mlm in settings, got {settings}")
    if len(verbalizer) != 2:
        raise ConfigError(
            f"signal_curve=True needs a verbalizer of 2 words (the label-score gap), got "
            f"{len(verbalizer)}"
        )
    sweep.check_keeps_every_checkpoint(c, ("mlm",), "the signal curve")


def steps(out: pathlib.Path, every: int, on: bool = True) -> list[tuple[int, str]]:
    """(step, cache subdirectory) of the + MLM run's checkpoints on its schedule and its last
    (one a stop saved in between would be a point of one seed); none when not `on`. The last
    step's signal is the zero_shot_mlm row's own (subdirectory ""), not computed twice."""
    kept = params_io.checkpoint_steps(out / "checkpoints") if on else []
    return [
        (s, "" if s == kept[-1] else f"step{s}") for s in kept if s % every == 0 or s == kept[-1]
    ]


def report(curve: list[dict], workdir: pathlib.Path, header: str, majority: float) -> list[dict]:
    """Summarize `curve`, write workdir/mlm_curve.csv and .png, print the table; the rows."""
    rows = summarize(curve)
    write_csv(workdir / "mlm_curve.csv", rows)
    plot(rows, workdir / "mlm_curve.png", header, majority)
    print(f"The zero-shot signal along + MLM training:\n\n{table(rows)}\n")
    print(f"wrote {workdir / 'mlm_curve.csv'} and {workdir / 'mlm_curve.png'}")
    return rows


def summarize(curve: list[dict]) -> list[dict]:
    """One row per (pattern, step), in that order: mean and std over seeds of each figure."""
    rows = []
    for p, step in sorted({(e["pattern"], e["step"]) for e in curve}):
        mine = [e for e in curve if (e["pattern"], e["step"]) == (p, step)]
        row = {"pattern_id": f"p{p}", "step": step, "seeds": len(mine)}
        for f in FIGURES:
            row[f"{f}_mean"], row[f"{f}_std"] = seed_stats([e[f] for e in mine])
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    def cell(f, spec=".2f"):
        return lambda r: mean_std(r[f"{f}_mean"], r[f"{f}_std"], r["seeds"], spec)

    def pair(a, b, spec=".2f"):
        return lambda r: f"{cell(a, spec)(r)} / {cell(b, spec)(r)}"

    return format_table(
        rows,
        [
            "pattern",
            "+ MLM step",
            "AUC of the gap, val / test",
            "threshold on validation: test",
            "median threshold (no label), val / test",
        ],
        [
            "{pattern_id}",
            "{step:,}",
            pair("auc_validation", "auc_test", ".3f"),
            cell("threshold_test"),
            pair("median_validation", "median_test"),
        ],
        align="lrrrr",
    )


def plot(rows: list[dict], path, title: str, majority: float) -> None:
    """The gap's test AUC and the two thresholds' test accuracy against the + MLM step, per
    pattern; `majority`: the majority answer's test accuracy (%), drawn as a line."""
    with save_figure(path, title, 2, (11, 4.2), title_size=7) as (left, right):
        for p in dict.fromkeys(r["pattern_id"] for r in rows):
            mine = [r for r in rows if r["pattern_id"] == p]
            steps = [r["step"] for r in mine]
            left.errorbar(
                steps, [r["auc_test_mean"] for r in mine], [r["auc_test_std"] for r in mine],
                marker="o", capsize=3, label=p,
            )  # fmt: skip
            for f, style, name in (
                ("median_test", "-o", "median threshold (no label)"),
                ("threshold_test", "--s", "threshold on validation"),
            ):
                right.errorbar(
                    steps, [r[f"{f}_mean"] for r in mine], [r[f"{f}_std"] for r in mine],
                    fmt=style, capsize=3, label=f"{p} {name}",
                )  # fmt: skip
        left.axhline(0.5, color="gray", lw=0.8, ls=":", label="no signal")
        right.axhline(majority, color="gray", lw=0.8, ls=":", label="majority answer")
        left.set_ylabel(f"test AUC of the label-score gap, {over_seeds(r['seeds'] for r in rows)}")
        right.set_ylabel("test accuracy (%)")
        for ax in (left, right):
            ax.set_xlabel("+ MLM step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)


def majority_accuracy(train_labels, test_labels) -> float:
    """The accuracy (%) on `test_labels` of always answering the train split's commonest label."""
    majority = np.argmax(np.bincount(np.asarray(train_labels)))
    return 100 * float(np.mean(np.asarray(test_labels) == majority))
