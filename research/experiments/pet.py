"""PET's settings side by side (docs/research_notes.md section 8), per pattern, over seeds.

Settings, all from one pretrained MLM (`init`, or an `mlm` run this experiment trains first in
workdir/pretrain from `pretrain`):
  zero_shot        the MLM scores the labels through the pattern, no training;
  zero_shot_mlm    the same after `mlm.num_train_steps` of MLM on the task's unlabeled train
                   text (one run per seed, shared by the patterns);
  few_shot         PET on `labeled_fraction` of the train split (drawn with the seed);
  semi_supervised  PET on those labels plus all train text as plain MLM rows;
  fine_tune        a [CLS] classifier trained on the same labeled examples (no pattern).
Both zero-shot settings also log, per pattern, whether the slot carries the label at all: the
AUC of the label-score gap and a threshold calibrated on validation (`pet.zero_shot_signal`);
with `signal_curve`, at every kept checkpoint of each + MLM run too (`pet_curve`: a table,
mlm_curve.csv and mlm_curve.png).
With a two-word verbalizer each also gets a row `<setting>_median`: the same model's gap cut at
the median gap of unlabeled train examples instead of 0 (no label read; right when the two
labels are about equally common), which removes the slot's prior towards one word.
Every trained setting is an ordinary run (tasks mlm / pet / classify) in workdir/runs/NAME,
cached by result.json (rerunning resumes); accuracies are computed on every validation and test
example and cached in accuracy.json. The labeled settings are read as the reference selects
them: at every kept checkpoint (`checkpoint_every_steps` of the pet and classify runs), the test
accuracy reported is the one at the step of best validation accuracy, with the final step's
beside it (`best_validation`). The table gives mean ± std over seeds, with the note's
RoBERTa-wwm-ext figures beside ours.
"""

import copy
import functools
import math
import pathlib
import time

import jax
import numpy as np

from research.config import as_list, seed_list
from research.data import DataError, classification, patterns
from research.experiments import pet_curve, sweep
from research.experiments.sweep import best_validation
from research.report import (
    format_table,
    machine_header,
    mean_std,
    over_seeds,
    save_figure,
    seed_stats,
    write_csv,
)
from research.tasks import bert, classify, pet
from research.train.config import ConfigError, parse
from research.train.trained import load_trained

UNLABELED_SAMPLE = 2000  # pet.zero_shot_signal's median threshold: train examples, labels unread
SETTINGS = ("zero_shot", "zero_shot_mlm", "few_shot", "semi_supervised", "fine_tune")
# The note's RoBERTa-wwm-ext base results (validation / test accuracy, %); fine-tuning on the
# same labels is quoted as "about 88.93" without a split.
NOTE = {
    "zero_shot": (85.17, 84.27),
    "zero_shot_mlm": (88.05, 87.53),
    "few_shot": (89.29, 89.18),
    "semi_supervised": (90.09, 89.76),
    "fine_tune": (88.93, math.nan),
}
MEDIAN = "_median"  # the zero-shot settings' rows with the label-free median threshold
# Keys every run sets from the experiment's own (research.main refuses overrides of them).
SWEPT = sweep.seeded_points(
    "mlm",
    "pet",
    "classify",
    **{f"{run}.{run}.init": "init" for run in ("mlm", "pet", "classify")},
    **{f"{run}.{run}.labeled_examples": "labeled_fraction" for run in ("pet", "classify")},
    **{"pet.pet.template": "patterns", "pet.pet.verbalizer": "verbalizer"},
    **{"pet.pet.unlabeled": "settings", "pretrain.data.data_dir": "data.data_dir"},
)


def run(c, workdir: str) -> list[dict]:
    workdir = pathlib.Path(workdir).expanduser()
    seeds = seed_list(c.seeds)
    templates = as_list(c.patterns, name="patterns", distinct=True)
    verbalizer = as_list(c.verbalizer, name="verbalizer")
    settings = as_list(c.settings, name="settings", distinct=True)
    for s in settings:
        if s not in SETTINGS:
            raise ConfigError(f"settings: unknown {s!r}; allowed {', '.join(SETTINGS)}")
    if not 0 < c.labeled_fraction < 1:
        raise ConfigError(f"labeled_fraction={c.labeled_fraction}: must be in (0, 1)")
    sweep.check_keeps_every_checkpoint(c, ("pet", "classify"))  # selection reads them all
    pet_curve.check(c, settings, verbalizer)
    for t in templates:  # each pattern's own mistakes, before anything runs
        try:
            patterns.Pattern(t, verbalizer)
        except ValueError as e:
            raise ConfigError(f"patterns: {e}") from None
    data = parse(sweep.point_config(c, c.classify, seeds[0])).data
    train, validation, test = classification.sources_of(data)
    for name, records in (("validation", validation), ("test", test)):  # a word per label
        try:
            classify.check_labels(records, len(verbalizer), name=f"{data.source} {name}")
        except DataError as e:
            raise ConfigError(f"{e} (verbalizer has {len(verbalizer)} words)") from None
    n_labeled = max(1, round(c.labeled_fraction * len(train)))
    t0 = time.perf_counter()

    def log(msg):
        if jax.process_index() == 0:
            print(f"[pet {time.perf_counter() - t0:.0f} s] {msg}", flush=True)

    # ---- the pretrained MLM ------------------------------------------------------------------
    init = c.init
    pre = copy.deepcopy(c.pretrain)
    pre.unlock()
    pre.data.data_dir = c.data.data_dir  # one data_dir override for every run
    # The MLM's vocabulary (its own, or the one pretraining will build) checks every pattern's
    # verbalizer before anything trains.
    vocab = bert.vocabulary(parse(pre).data, init, key="init")
    for t in templates:
        pattern = pet.pattern_for(pet.PetConfig(template=t, verbalizer=verbalizer), vocab)[0]
        pet.check_room(pattern, vocab, c.data.seq_len)
    init = sweep.pretrain_first(init, pre, workdir, log)
    bert.parse_init(init, key="init")

    runs = {}  # (setting, pattern index or None, seed) -> run config
    for seed in seeds:
        if "zero_shot_mlm" in settings:
            runs["zero_shot_mlm", None, seed] = sweep.point_config(
                c, c.mlm, seed, mlm=dict(init=init)
            )
        for setting in ("few_shot", "semi_supervised"):
            for i, t in enumerate(templates if setting in settings else ()):
                runs[setting, i, seed] = sweep.point_config(
                    c,
                    c.pet,
                    seed,
                    pet=dict(
                        init=init,
                        template=t,
                        verbalizer=verbalizer,
                        labeled_examples=n_labeled,
                        unlabeled=setting == "semi_supervised",
                    ),
                )
        if "fine_tune" in settings:
            runs["fine_tune", None, seed] = sweep.point_config(
                c, c.classify, seed, classify=dict(init=init, labeled_examples=n_labeled)
            )
    for pc in runs.values():  # every config mistake is reported before the first run
        parse(pc)

    seq_len = data.seq_len
    results, curve = [], []  # curve: the + MLM runs' signal per kept checkpoint (signal_curve)

    def record(setting, pattern, seed, acc):
        # Untrained settings have one model: their final step is the selected one.
        acc = {"validation_final": acc["validation"], "test_final": acc["test"], **acc}
        results.append({"setting": setting, "pattern": pattern, "seed": seed, **acc})
        at = f" (step {acc['best_step']} of {acc['final_step']})" if "best_step" in acc else ""
        log(
            f"{setting} pattern {pattern} seed {seed}: validation {acc['validation']:.2f}, "
            f"test {acc['test']:.2f}{at}; final step {acc['validation_final']:.2f} / "
            f"{acc['test_final']:.2f}"
        )

    def pattern_inputs(i):
        """What a pattern's accuracy depends on beyond its model (the caches' inputs)."""
        return {
            "template": templates[i],
            "verbalizer": list(verbalizer),
            "seq_len": seq_len,
            "data": c.data.to_dict(),
        }

    def pattern_acc(model, vocab, i):
        p = patterns.Pattern(templates[i], verbalizer)
        return {
            split: 100 * pet.accuracy(model, vocab, p, recs, seq_len=seq_len)
            for split, recs in (("validation", validation), ("test", test))
        }

    # Every k-th train example, at most UNLABELED_SAMPLE of them, its label unread.
    unlabeled = range(0, len(train), max(1, -(-len(train) // UNLABELED_SAMPLE)))

    def log_signal(setting, i, out, load, model_inputs=None):
        """Signal or prior (two-word verbalizers): the AUC of the label-score gap, a threshold
        calibrated on validation and one without labels (the median gap of `unlabeled`), cached
        in out/signal; returns it (None without two words). load() -> (model, vocab, ...);
        `model_inputs`: what names the model when `out` is not its run (the zero-shot MLM)."""
        if len(verbalizer) != 2:
            return None
        p = patterns.Pattern(templates[i], verbalizer)

        def signal_of():
            model, vocab = load()[:2]
            scored = [
                pet.scores(model, vocab, p, recs, seq_len=seq_len)
                for recs in (validation, test, [train[j] for j in unlabeled])
            ]
            return pet.zero_shot_signal(scored[0], scored[1], scored[2][0])

        signal = sweep.cached_result(
            out / "signal",
            signal_of,
            keys=("median_test",),
            inputs={**pattern_inputs(i), "unlabeled": len(unlabeled), **(model_inputs or {})},
        )
        log(
            f"{setting} pattern {i}: AUC of the label-score gap "
            f"{signal['auc_validation']:.3f} / {signal['auc_test']:.3f} (validation / "
            f"test; 0.5 = no signal); with a threshold chosen on validation "
            f"{signal['threshold_validation']:.2f} / {signal['threshold_test']:.2f}, with the "
            f"median gap of {len(unlabeled)} unlabeled train examples (no label) "
            f"{signal['median_validation']:.2f} / {signal['median_test']:.2f}; label 1 "
            f"predicted for {signal['positive_share_test']:.1%} of test"
        )
        return signal

    def median(signal):  # the label-free row's accuracies
        return {split: signal[f"median_{split}"] for split in ("validation", "test")}

    if "zero_shot" in settings:
        model, vocab = None, None

        def load():
            nonlocal model, vocab
            if model is None:
                model = bert.pretrained_model(init, key="init")
                model.eval()
                vocab = bert.pretrained_config(init, key="init")[1]
            return model, vocab

        for i in range(len(templates)):
            out = workdir / "runs" / f"zero_shot_p{i}"
            acc = sweep.cached_result(
                out, lambda i=i: pattern_acc(*load(), i), inputs={"init": init, **pattern_inputs(i)}
            )
            signal = log_signal("zero_shot", i, out, load, {"init": init})
            # No training: one model, one number (recorded once: copies per seed would print
            # a std of 0 over "seeds" that never varied anything)
            record("zero_shot", i, "-", acc)
            if signal:
                record("zero_shot" + MEDIAN, i, "-", median(signal))

    def fine_tune_acc(model, vocab):
        return {
            split: 100 * classify.accuracy(model, vocab, recs, seq_len=seq_len)
            for split, recs in (("validation", validation), ("test", test))
        }

    for (setting, p, seed), pc in runs.items():
        name = setting if p is None else f"{setting}_p{p}"
        out = workdir / "runs" / f"{name}_seed{seed}"
        log(sweep.start_message(out, f"training {name} seed {seed}"))
        trained = sweep.train_point(pc, out, {"run": name, "seed": seed})
        every = pc.checkpoint_every_steps

        if trained["note"]:  # diverged: its checkpoints before the divergence are no result
            nan = {"validation": math.nan, "test": math.nan}
            if setting == "zero_shot_mlm":
                for i in range(len(templates)):
                    record(setting, i, seed, nan)
                    if len(verbalizer) == 2:  # its label-free row too
                        record(setting + MEDIAN, i, seed, nan)
            else:
                record(setting, "-" if setting == "fine_tune" else p, seed, nan)
        elif setting == "zero_shot_mlm":
            load = functools.cache(functools.partial(load_trained, out))  # on a cache miss only
            for i in range(len(templates)):
                acc = sweep.cached_result(
                    out / f"p{i}",
                    lambda i=i, load=load: pattern_acc(*load()[:2], i),
                    inputs=pattern_inputs(i),
                )
                signal = log_signal(f"{setting} seed {seed}", i, out / f"p{i}", load)
                record(setting, i, seed, acc)
                if signal:
                    record(setting + MEDIAN, i, seed, median(signal))
            for step, sub in pet_curve.steps(out, pc.checkpoint_every_steps, c.signal_curve):
                at = functools.cache(functools.partial(load_trained, out, step=step))
                for i in range(len(templates)):
                    name, to = f"{setting} seed {seed} step {step}", out / f"p{i}" / sub
                    if signal := log_signal(name, i, to, at):
                        curve.append({"pattern": i, "step": step, "seed": seed, **signal})
        elif setting == "fine_tune":
            record(setting, "-", seed, best_validation(out, fine_tune_acc, every))
        else:
            acc = functools.partial(pattern_acc, i=p)
            record(setting, p, seed, best_validation(out, acc, every))

    rows = summarize(results, settings, templates)
    if jax.process_index() == 0:
        header = _header(c, init, seeds, n_labeled, len(train), len(validation), len(test))
        write_csv(workdir / "pet.csv", rows)
        plot(rows, workdir / "pet.png", header, classes=len(verbalizer))
        print(f"\n{header}\n\n{table(rows, templates)}\n")
        print(
            f"wrote {workdir / 'pet.csv'} and {workdir / 'pet.png'} "
            f"({time.perf_counter() - t0:.0f} s)"
        )
        if curve:
            labels = [[int(r["label"]) for r in recs] for recs in (train, test)]
            pet_curve.report(curve, workdir, header, pet_curve.majority_accuracy(*labels))
    return rows


def _header(c, init, seeds, n_labeled, n_train, n_val, n_test) -> str:
    return (
        f"{machine_header()}\nPET on {c.data.source}: MLM {init}; {n_labeled} labeled of "
        f"{n_train} train examples ({c.labeled_fraction:.1%}), accuracy on all {n_val} "
        f"validation / {n_test} test examples; seeds {list(seeds)}; seq_len "
        f"{c.data.seq_len}"
    )


def summarize(results, settings, templates) -> list[dict]:
    """One row per (setting, pattern): mean and std over seeds of validation and test accuracy;
    each zero-shot setting's median-threshold row (if any) after it."""
    rows = []
    for s in (x for setting in settings for x in (setting, setting + MEDIAN)):
        keys = ["-"] if s == "fine_tune" else list(range(len(templates)))
        for p in keys:
            mine = [r for r in results if r["setting"] == s and r["pattern"] == p]
            if not mine:
                continue
            row = {
                "setting": s,
                "pattern_id": "-" if p == "-" else f"p{p}",
                "pattern": "-" if p == "-" else templates[p],
                "seeds": len(mine),
            }
            for split in ("validation", "test"):
                row[f"{split}_mean"], row[f"{split}_std"] = seed_stats([r[split] for r in mine])
            # A result without model selection (one model per run) has its final test as test.
            final = [r.get("test_final", r["test"]) for r in mine]
            row["test_final_mean"], row["test_final_std"] = seed_stats(final)
            row["note_validation"], row["note_test"] = NOTE.get(s, (math.nan, math.nan))
            rows.append(row)
    return rows


def table(rows, templates) -> str:
    """The note's layout: settings down; validation / test accuracy at the best validation step
    (mean ± std over seeds, or the one seed's), test at the final step, and the note's."""

    def cell(split):
        return lambda r: mean_std(r[f"{split}_mean"], r[f"{split}_std"], r["seeds"])

    def note(r):
        v, t = (
            ("-" if math.isnan(x) else f"{x:.2f}") for x in (r["note_validation"], r["note_test"])
        )
        return "-" if v == t == "-" else f"{v} / {t}"

    return format_table(
        rows,
        ["setting", "pattern", "validation", "test", "test (final step)", "note (RoBERTa)"],
        [
            "{setting}",
            "{pattern_id} {pattern}",
            cell("validation"),
            cell("test"),
            cell("test_final"),
            note,
        ],
        align="llrrrr",
    )


def plot(rows, path, title, classes: int = 2):
    """Validation and test bars per row, the note's figures and chance (1 / `classes`)."""
    with save_figure(path, title, 2, (12, 4.5), title_size=7) as axes:
        # Patterns by id (p0, p1, as in the table): the default font has no CJK glyphs.
        labels = [
            r["setting"] + ("" if r["pattern_id"] == "-" else f" {r['pattern_id']}") for r in rows
        ]
        x = np.arange(len(rows))
        for ax, split in zip(axes, ("validation", "test"), strict=True):
            ax.bar(
                x,
                [r[f"{split}_mean"] for r in rows],
                yerr=[r[f"{split}_std"] for r in rows],
                capsize=3,
                label="ours",
            )
            ax.scatter(
                x,
                [r[f"note_{split}"] for r in rows],
                color="k",
                marker="_",
                s=200,
                zorder=3,
                label="note (RoBERTa-wwm-ext)",
            )
            chance = 100 / classes
            ax.axhline(chance, color="gray", lw=0.8, ls=":", label=f"chance ({classes} labels)")
            ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=6)
            ax.set_ylabel(f"{split} accuracy (%), {over_seeds(r['seeds'] for r in rows)}")
            ax.set_ylim(max(0.0, chance - 10), 100)
            ax.grid(alpha=0.3, axis="y")
        axes[0].legend(fontsize=7)
