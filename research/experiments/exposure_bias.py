"""Exposure-bias remedies side by side on one seq2seq task, several seeds (docs/research_notes.md
section 1).

Each (variant, seed) is an ordinary seq2seq training run (`research.tasks.seq2seq`) in
workdir/runs/VARIANT_seedS, cached by result.json. The token-level variants train from scratch
for the same number of steps as the baseline; SCST and MRT start from the baseline's checkpoint
at step `num_train_steps - finetune_steps` and train their mixed loss for the remaining steps
(sequence-level training fine-tunes a cross-entropy model; Rennie et al. 2017, Shen et al. 2016),
so every variant sees the same steps and learning-rate schedule. The table has the layout of
docs/research_notes.md section 1: beam 1/2/3 rows, "Rouge-L / Rouge-1 / Rouge-2 / BLEU" cells,
mean and standard deviation over seeds, computed by research.tasks.seq2seq.metrics.text_scores.

`penalty_epsilons` (non-empty) replaces the gradient_penalty variant by one variant per
epsilon, gradient_penalty_eps{EPS}. A config with an `init` key (configs/exposure_bias.py:zh)
starts every run from that pretrained BERT (base.seq2seq.init); init "" first trains
`pretrain` (configs/mlm.py) in workdir/pretrain, as the qagen experiment does.
"""

import copy
import os
import pathlib
import shutil
import time

import jax
import numpy as np

from research.config import as_list, seed_list
from research.experiments import sweep
from research.models.params import checkpoint_steps
from research.report import (
    format_table,
    machine_header,
    over_seeds,
    plural,
    save_figure,
    seed_stats,
    write_csv,
)
from research.tasks import bert
from research.tasks.seq2seq import REMEDIES
from research.train.config import ConfigError, parse

VARIANTS = ("baseline",) + tuple(r for r in REMEDIES if r != "none")
SEQUENCE_LEVEL = ("scst", "mrt")
METRICS = ("rougeL", "rouge1", "rouge2", "bleu", "exact", "sentence_bleu")  # cells: the first 4
PENALTY_PREFIX = "gradient_penalty_eps"
# Keys every run sets (research.main refuses overrides of them).
SWEPT = {
    "base.seed": "use --config.seeds",
    "base.seq2seq.remedy": "use --config.variants",
    # the presets with a pretrained MLM (zh, zh_smoke)
    "pretrain.seed": "use --config.seeds (the MLM pretrains with the first)",
    "pretrain.data.data_dir": "use --config.base.data.data_dir",
}


def expand_variants(variants, epsilons) -> list[str]:
    """`variants` with gradient_penalty replaced by gradient_penalty_eps{EPS} per epsilon."""
    out = []
    for v in variants:
        if v == "gradient_penalty" and epsilons:
            out += [f"{PENALTY_PREFIX}{float(e):g}" for e in epsilons]
        else:
            out.append(v)
    return out


def _remedy(variant: str) -> tuple[str, float | None]:
    """(remedy, penalty epsilon or None) of a variant name."""
    if variant.startswith(PENALTY_PREFIX):
        try:
            eps = float(variant.removeprefix(PENALTY_PREFIX))
        except ValueError:
            raise ConfigError(f"variants: {variant!r} is not {PENALTY_PREFIX}NUMBER") from None
        if not eps > 0:
            raise ConfigError(f"variants: {variant!r}: the epsilon must be positive")
        return "gradient_penalty", eps
    if variant not in VARIANTS:
        raise ConfigError(
            f"variants: unknown {variant!r}; allowed {', '.join(VARIANTS)} or "
            f"{PENALTY_PREFIX}NUMBER"
        )
    return ("none" if variant == "baseline" else variant), None


def point_config(c, variant: str, seed: int, init: str | None = None):
    pc = copy.deepcopy(c.base)
    pc.unlock()
    pc.seed = seed
    remedy, eps = _remedy(variant)
    pc.seq2seq.remedy = remedy
    if eps is not None:
        pc.seq2seq.penalty_epsilon = eps
    if init is not None:
        pc.seq2seq.init = init
    if variant == "baseline":  # its checkpoint at the fine-tuning start seeds SCST and MRT
        pc.checkpoint_every_steps = pc.num_train_steps - c.finetune_steps
    return pc


def _pretrained(c, workdir: pathlib.Path, seed: int) -> str | None:
    """The BERT every run starts from (c.init; "" = train c.pretrain first); None without an
    `init` key (runs from random weights)."""
    if "init" not in c:
        return None
    pre = copy.deepcopy(c.pretrain)  # configs/mlm.py's own data section, the base's data_dir
    pre.seed, pre.data.data_dir = seed, c.base.data.data_dir
    return sweep.pretrain_first(c.init, pre, workdir, _log)


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def _files(root: pathlib.Path) -> dict[str, int]:
    """Every file under root, relative path -> size."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _seed_from_baseline(c, workdir, variant, seed) -> bool:
    """Copy the baseline's checkpoint at the fine-tuning start into the variant's run; whether
    that is still the run's newest checkpoint (it has saved none of its own)."""
    start = c.base.num_train_steps - c.finetune_steps
    src = workdir / "runs" / f"baseline_seed{seed}" / "checkpoints" / str(start)
    dst = workdir / "runs" / f"{variant}_seed{seed}" / "checkpoints" / str(start)
    if not src.exists():
        raise ConfigError(
            f"{src} is missing: the baseline run must keep its step-{start} checkpoint"
        )
    if not dst.parent.exists() and jax.process_index() == 0:
        # Copied beside the run, then renamed into it: a copy cut short (a signal, a full disk)
        # never leaves a partial step that the next attempt would take for the checkpoint.
        dst.parent.parent.mkdir(parents=True, exist_ok=True)
        for old in dst.parent.parent.glob("checkpoints.copy-*"):  # an attempt killed mid-copy
            shutil.rmtree(old, ignore_errors=True)
        tmp = dst.parent.parent / f"checkpoints.copy-{os.getpid()}"
        shutil.copytree(src, tmp / str(start))
        tmp.rename(dst.parent)
    elif dst.exists() and _files(dst) != _files(src) and jax.process_index() == 0:
        # A copy cut short by the code before the rename: replace it, rather than let the run
        # find it unreadable (and --start_fresh then train the variant from scratch).
        shutil.rmtree(dst)
        shutil.copytree(src, dst)
    if jax.process_count() > 1:  # every process sees the copy before any run starts
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("exposure_bias seeded checkpoint")
    return max(checkpoint_steps(dst.parent), default=start) <= start


def run(c, workdir: str) -> list[dict]:
    workdir = pathlib.Path(workdir).expanduser()
    variants, seeds = as_list(c.variants, name="variants", distinct=True), seed_list(c.seeds)
    eps = c.get("penalty_epsilons") or ()
    epsilons = as_list(eps, float, name="penalty_epsilons", distinct=True) if eps else ()
    # checked again after the expansion: 'gradient_penalty' with eps 0.1 names one given by name
    variants = as_list(expand_variants(variants, epsilons), name="variants", distinct=True)
    for v in variants:
        _remedy(v)
    if "baseline" not in variants:
        raise ConfigError("variants must include baseline (SCST and MRT fine-tune it)")
    if not 0 < c.finetune_steps < c.base.num_train_steps:
        raise ConfigError(f"finetune_steps={c.finetune_steps}: must be in (0, num_train_steps)")
    for v in variants:  # every mistake is reported before the first run starts
        parse(point_config(c, v, seeds[0], c.get("init") or None))
    init = _pretrained(c, workdir, seeds[0])
    order = ["baseline"] + [v for v in variants if v != "baseline"]
    todo = [(v, s) for s in seeds for v in order]
    t0, results = time.perf_counter(), []
    for i, (v, s) in enumerate(todo, 1):
        out = workdir / "runs" / f"{v}_seed{s}"
        if jax.process_index() == 0:
            msg = sweep.start_message(out, "training")
            print(
                f"[{i}/{len(todo)}] {v} seed {s} ({time.perf_counter() - t0:.0f} s so far): {msg}",
                flush=True,
            )
        # A sequence-level variant starts from the baseline's checkpoint (the baseline's
        # config); once it has saved its own, a changed config is refused as anywhere else.
        seeded = v in SEQUENCE_LEVEL and _seed_from_baseline(c, workdir, v, s)
        results.append(
            sweep.train_point(
                point_config(c, v, s, init),
                out,
                {"variant": v, "seed": s},
                allow_config_change=seeded,
            )
        )
    beams = as_list(c.base.seq2seq.eval_beams, int, name="base.seq2seq.eval_beams")
    rows = summarize(results, order, beams)
    if jax.process_index() == 0:
        header = _header(c, seeds, init)
        write_csv(workdir / "exposure_bias.csv", rows)
        plot(rows, order, beams, workdir / "exposure_bias.png", header)
        print(f"\n{header}\n\n{table(rows, order, beams)}\n")
        print(
            f"wrote {workdir / 'exposure_bias.csv'} and {workdir / 'exposure_bias.png'} "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    return rows


def _header(c, seeds, init=None) -> str:
    b, d = c.base, c.base.data
    if d.source == "seq2seq_synthetic":
        data = f"{d.source} ({d.seq2seq_task}, source length {d.min_len}-{d.max_len})"
    else:
        data = f"{d.source} (source {b.seq2seq.src_len}, target {b.seq2seq.tgt_len} tokens)"
    if init:
        mcfg = bert.pretrained_config(init, key="seq2seq.init")[0]
        model = f"from {init} (d_model {mcfg.d_model} x {plural(mcfg.num_layers, 'layer')})"
    else:
        model = f"d_model {b.model.d_model} x {plural(b.model.num_layers, 'layer')}"
    variants = as_list(c.variants, name="variants", distinct=True)
    seq = (
        f" (SCST/MRT: last {c.finetune_steps})"
        if any(v in SEQUENCE_LEVEL for v in variants)
        else ""
    )
    return (
        f"{machine_header()}\n{b.seq2seq.layout}, data {data}, {model}, "
        f"{b.num_train_steps} steps x batch {b.batch_size}{seq}, seeds {seeds}; metrics "
        f"x100 (CJK per character, other text per word) on {b.eval_steps} x "
        f"{b.batch_size} {'test' if d.source == 'seq2seq_synthetic' else 'validation'} "
        "examples"
    )


def summarize(results, variants, beams) -> list[dict]:
    """One row per (variant, beam): mean and std over seeds of each metric."""
    rows = []
    for v in variants:
        mine = [r["eval"] for r in results if r["point"]["variant"] == v]
        for b in beams:
            row = {"variant": v, "beam": b, "seeds": len(mine)}
            for m in METRICS:
                vals = [e.get(f"beam{b}_{m}", np.nan) for e in mine]
                row[f"{m}_mean"], row[f"{m}_std"] = seed_stats(vals)
            rows.append(row)
    return rows


def table(rows, variants, beams) -> str:
    """docs/research_notes.md section 1's layout: beams down, variants across, RL / R1 / R2 / BLEU
    (+- std)."""

    def cell(v):
        def fmt(b):
            r = next(x for x in rows if x["variant"] == v and x["beam"] == b)
            spread = plural(1, "seed") if r["seeds"] < 2 else f"±{r['rougeL_std']:.2f}"
            return (
                " / ".join(f"{r[f'{m}_mean']:.2f}" for m in METRICS[:4])
                + f" ({spread}; exact {r['exact_mean']:.1f})"
            )

        return fmt

    text = format_table(beams, ["beam", *variants], [str, *map(cell, variants)])
    spread = (
        "one seed, no std"
        if all(r["seeds"] < 2 for r in rows)
        else "± is the std of Rouge-L over seeds"
    )
    return text + (
        "\n\ncells: Rouge-L / Rouge-1 / Rouge-2 / BLEU (x100), mean over seeds; "
        f"{spread}; exact = % of outputs equal to the reference"
    )


def plot(rows, variants, beams, path, title):
    with save_figure(path, title, 2, (12, 4), title_size=7) as axes:
        x = np.arange(len(variants))
        width = 0.8 / len(beams)
        for ax, metric in zip(axes, ("rougeL", "bleu"), strict=True):
            for i, b in enumerate(beams):
                r = [
                    next(y for y in rows if y["variant"] == v and y["beam"] == b) for v in variants
                ]
                ax.bar(
                    x + i * width,
                    [y[f"{metric}_mean"] for y in r],
                    width,
                    yerr=[y[f"{metric}_std"] for y in r],
                    label=f"beam {b}",
                    capsize=2,
                )
            ax.set_xticks(x + width * (len(beams) - 1) / 2, variants, rotation=30, ha="right")
            name = {"rougeL": "Rouge-L F1", "bleu": "BLEU"}[metric]
            ax.set_ylabel(f"{name} (x100), {over_seeds(y['seeds'] for y in rows)}")
            lo = np.nanmin([y[f"{metric}_mean"] - np.nan_to_num(y[f"{metric}_std"]) for y in rows])
            ax.set_ylim(max(0.0, lo - 5), 100)
            ax.grid(alpha=0.3, axis="y")
        # Above the axes, in one row: inside, it would cover bars (they all reach near 100).
        axes[0].legend(
            ncols=len(beams), loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=8, frameon=False
        )
