"""GELU's two elementary approximations in practice (docs/research_notes.md section 2).

1. The forms: GELU(x) = x Phi(x) against x/2 (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))) and
   x sigmoid(1.702 x); the constants re-derived by minimax fits
   (research.ops.activations.fit_gelu_constants), their maximum errors, and a plot.
2. The same LM (c.lm, configs/lm.py sized for a CPU) trained with each form (model.activation
   gelu | gelu_tanh | gelu_sigmoid) for every seed: final eval loss, mean ± std over seeds, the
   paired difference to the exact form (same seed = same data order and initial weights), and
   the training step time. Each run is an ordinary resumable run in runs/FORM_seedS, cached by
   result.json, so rerunning the command skips finished runs.
"""

import copy
import json
import math
import pathlib
import time

import jax
import numpy as np

from research.config import ConfigError, as_list, seed_list
from research.experiments import sweep
from research.models.config import ACTIVATIONS
from research.ops.activations import SIGMOID_SCALE, TANH_COEFFICIENT, fit_gelu_constants, gelu
from research.report import (
    format_table,
    machine_header,
    mean_std,
    over_seeds,
    plural,
    save_figure,
    seed_stats,
    write_csv,
)

FORMS = {"gelu": "none", "gelu_tanh": "tanh", "gelu_sigmoid": "sigmoid"}
# The note's maximum errors: of erf(x/sqrt2) by the tanh form's inner tanh (so 2x that of Phi),
# and of Phi by the sigmoid.
NOTE_MAX_ERROR = {"tanh": 3.6e-4, "sigmoid": 9.5e-3}
NOTE_MEASURE = {"tanh": 2.0, "sigmoid": 1.0}  # the note's error / Phi's (erf(x/sqrt2) = 2 Phi - 1)
# Keys every point sets (research.main refuses overrides of them).
SWEPT = {"lm.seed": "use --config.seeds", "lm.model.activation": "use --config.activations"}


def forms_report(num_points: int = 400_000) -> dict:
    """The fitted constants and the maximum errors of the published forms, in float64:
    phi_error = max |Phi_approx(x) - Phi(x)| and gelu_error = max |GELU_approx(x) - GELU(x)|
    over x in [-10, 10] (the tails are flat beyond)."""
    from scipy import special  # here, not at import: every CLI process imports this module

    fit = fit_gelu_constants(num_points)
    x = np.linspace(-10.0, 10.0, num_points)
    phi = special.ndtr(x)
    approx = {
        "tanh": 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + TANH_COEFFICIENT * x**3))),
        "sigmoid": special.expit(SIGMOID_SCALE * x),
    }
    out = {"fit": fit}
    for name, p in approx.items():
        out[name] = {
            "phi_error": float(np.max(np.abs(p - phi))),
            "gelu_error": float(np.max(np.abs(x * (p - phi)))),
        }
    return out


def plot_forms(path: pathlib.Path, report: dict, title: str) -> None:
    """Three panels: the forms, Phi_approx - Phi, and GELU_approx - GELU (float32 JAX values of
    research.ops.activations.gelu against float64 scipy)."""
    from scipy import special

    x = np.linspace(-6.0, 6.0, 2001)
    exact = x * special.ndtr(x)
    with save_figure(path, title, 3, (14, 4.0), 8) as axes:
        for name, approx in FORMS.items():
            y = np.asarray(gelu(np.float32(x), approx), np.float64)
            axes[0].plot(x, y, label=name, lw=1)
            if approx != "none":
                err = report[approx]
                axes[1].plot(
                    x,
                    (y - exact) / np.where(x == 0, 1, x),
                    label=f"{name}: max |.| {err['phi_error']:.2e}",
                )
                axes[2].plot(x, y - exact, label=f"{name}: max |.| {err['gelu_error']:.2e}")
        axes[0].set_title("GELU(x) = x Phi(x) and its approximations", fontsize=8)
        axes[1].set_title("Phi_approx(x) - Phi(x)", fontsize=8)
        axes[1].set_yscale("symlog", linthresh=1e-4)
        axes[2].set_title("GELU_approx(x) - GELU(x)", fontsize=8)
        axes[2].set_yscale("symlog", linthresh=1e-4)
        for ax in axes:
            ax.set_xlabel("x")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)


def run(c, workdir: str) -> list[dict]:
    workdir = pathlib.Path(workdir).expanduser()
    forms = as_list(c.activations, str, name="activations", distinct=True)
    for f in forms:
        if f not in FORMS:
            raise ConfigError(f"activations: {f!r} is not a GELU form; allowed: {', '.join(FORMS)}")
    seeds = seed_list(c.seeds)
    assert set(FORMS) <= set(ACTIVATIONS)
    t0 = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    report = forms_report()
    fit = report["fit"]
    fit_line = (
        f"fitted: tanh b/a = {fit['tanh_coefficient']:.7f} (max erf error "
        f"{fit['tanh_max_error']:.2e}), sigmoid lambda = {fit['sigmoid_scale']:.7f} "
        f"(max Phi error {fit['sigmoid_max_error']:.2e})"
    )
    main = jax.process_index() == 0  # in a multi-process run one process writes and prints
    if main:
        plot_forms(workdir / "gelu_forms.png", report, fit_line)
        (workdir / "gelu_forms.json").write_text(json.dumps(report, indent=1))
        print(f"{fit_line}\nwrote {workdir / 'gelu_forms.png'}", flush=True)

    results = []
    for seed in seeds:
        for form in forms:
            pc = copy.deepcopy(c.lm)
            pc.unlock()
            pc.seed = seed
            pc.model.activation = form
            out = workdir / "runs" / f"{form}_seed{seed}"
            msg = sweep.start_message(out, f"training {form} seed {seed}")
            print(f"[gelu {time.perf_counter() - t0:.0f} s] {msg}", flush=True)
            r = sweep.train_point(pc, out, {"activation": form, "seed": seed})
            # a run of one step (or resumed at its last) measured no rate: 0, or NaN if diverged
            rate = r["tokens_per_second"]
            step_ms = 1e3 * pc.batch_size * pc.data.seq_len / rate if rate > 0 else math.nan
            results.append(
                {
                    "activation": form,
                    "seed": seed,
                    "eval_loss": r["eval"]["loss"],
                    "tokens_per_second": r["tokens_per_second"],
                    "step_ms": step_ms,
                }
            )
            print(f"  eval loss {r['eval']['loss']:.5f}, {step_ms:.1f} ms/step", flush=True)
    rows = summarize(results, report)
    lm = c.lm
    header = (
        f"{machine_header()}\nLM on {lm.data.source}: d_model {lm.model.d_model}, "
        f"{plural(lm.model.num_layers, 'layer')}, d_ff {lm.model.d_ff}, seq {lm.data.seq_len}, "
        f"batch {lm.batch_size}, {lm.num_train_steps} steps; seeds {list(seeds)}"
    )
    if main:
        write_csv(workdir / "gelu.csv", rows)
        (workdir / "results.json").write_text(json.dumps(results, indent=1))
        plot(rows, results, workdir / "gelu.png", header)
        print(
            f"\n{header}\n{fit_line}\n\n{table(rows)}\n\nwrote {workdir / 'gelu.csv'}, gelu.png "
            f"and gelu_forms.png ({time.perf_counter() - t0:.0f} s)"
        )
    return rows


def summarize(results: list[dict], report: dict) -> list[dict]:
    """One row per form: eval loss and step time, mean ± std over seeds, and the paired
    difference to the exact form's loss on the same seed."""
    exact = {r["seed"]: r["eval_loss"] for r in results if r["activation"] == "gelu"}
    rows = []
    for form in dict.fromkeys(r["activation"] for r in results):
        mine = [r for r in results if r["activation"] == form]
        loss = seed_stats([r["eval_loss"] for r in mine])
        ms = seed_stats([r["step_ms"] for r in mine])
        diff = [r["eval_loss"] - exact[r["seed"]] for r in mine if r["seed"] in exact]
        paired = seed_stats(diff)
        approx = FORMS[form]
        rows.append(
            {
                "activation": form,
                "seeds": len(mine),
                "eval_loss_mean": loss[0],
                "eval_loss_std": loss[1],
                "paired_seeds": len(diff),
                "diff_mean": paired[0],
                "diff_std": paired[1],
                "step_ms_mean": ms[0],
                "step_ms_std": ms[1],
                "phi_max_error": report[approx]["phi_error"] if approx != "none" else 0.0,
                # the note's measure: erf(x/sqrt2)'s error for tanh (= 2 x Phi's), Phi's for
                # the sigmoid; none for the exact form
                "note_measure_error": (
                    NOTE_MEASURE[approx] * report[approx]["phi_error"]
                    if approx != "none"
                    else math.nan
                ),
                "note_max_error": NOTE_MAX_ERROR.get(approx, math.nan),
            }
        )
    return rows


def table(rows) -> str:
    return format_table(
        rows,
        [
            "activation",
            "seeds",
            "eval loss",
            "minus exact (paired)",
            "ms/step",
            "max |Phi error|",
            "max error as the note measures it: ours / note's",
        ],
        [
            "{activation}",
            "{seeds}",
            lambda r: mean_std(r["eval_loss_mean"], r["eval_loss_std"], r["seeds"], ".5f"),
            lambda r: mean_std(r["diff_mean"], r["diff_std"], r["paired_seeds"], "+.5f"),
            lambda r: mean_std(r["step_ms_mean"], r["step_ms_std"], r["seeds"], ".1f"),
            "{phi_max_error:.2e}",
            lambda r: (
                "-"
                if math.isnan(r["note_max_error"])
                else f"{r['note_measure_error']:.2e} / {r['note_max_error']:.1e}"
            ),
        ],
        align="lrrrrrr",
    )


def plot(rows, results, path, title):
    with save_figure(path, title, 2, (10, 4.0), 7) as axes:
        x = np.arange(len(rows))
        names = [r["activation"] for r in rows]
        for i, r in enumerate(rows):
            pts = [p["eval_loss"] for p in results if p["activation"] == r["activation"]]
            axes[0].plot([i] * len(pts), pts, "o", ms=4, alpha=0.6)
        axes[0].errorbar(
            x,
            [r["eval_loss_mean"] for r in rows],
            yerr=[r["eval_loss_std"] for r in rows],
            fmt="k_",
            capsize=6,
        )
        spread = over_seeds(r["seeds"] for r in rows)
        axes[0].set_ylabel(f"final eval loss (nats/token)\ndots: seeds; bar: {spread}")
        axes[1].bar(
            x, [r["step_ms_mean"] for r in rows], yerr=[r["step_ms_std"] for r in rows], capsize=4
        )
        axes[1].set_ylabel(f"training step (ms), {spread}")
        for ax in axes:
            ax.set_xticks(x, names)
            ax.grid(alpha=0.3, axis="y")
