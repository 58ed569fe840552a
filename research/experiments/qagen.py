"""Question generation over seeds, beside the trivial baseline (docs/research_notes.md section 6;
docs/qagen.md).

From one pretrained BERT (`init`, or an `mlm` run trained first in workdir/pretrain), per seed
an ordinary qagen run in runs/seedS (resumable, cached by result.json). Its final evaluation on
held-out passages (`research.tasks.qagen.evaluate_model`: the question's BLEU-4 / ROUGE-L with
the gold answer given; the sampled answers' exact match / F1 against the passage's gold
answers) and the trivial baseline's on the same examples (`baseline_metrics`) make a table of
mean ± std over seeds (qagen.csv, qagen.png). The first seed's model then generates pairs for
`examples` held-out passages (examples.jsonl, printed): sampled answers with their questions,
and the question for each gold answer.
"""

import copy
import json
import math
import pathlib
import textwrap
import time

import jax
import numpy as np

from research.config import ConfigError, seed_list
from research.data import DataError
from research.experiments import sweep
from research.report import (
    format_table,
    machine_header,
    mean_std,
    over_seeds,
    save_figure,
    seed_stats,
    write_csv,
)
from research.tasks import qagen
from research.train.config import parse
from research.train.trained import load_trained

METRICS = {
    "question_bleu4": "question BLEU-4",
    "question_rougeL": "question ROUGE-L",
    "question_em": "question exact match",
    "question_novel_f1": "question F1, units not in the passage",
    "answer_em": "answer EM",
    "answer_f1": "answer F1",
    "answers": "answers kept / passage",
}
# Keys every run sets from the experiment's own (research.main refuses overrides of them).
# (run.data is the experiment's data section itself, so its overrides stand.)
SWEPT = {
    "run.seed": "use --config.seeds",
    "run.qagen.init": "use --config.init",
    "pretrain.seed": "use --config.seeds (the MLM pretrains with the first)",
    "pretrain.data.data_dir": "use --config.data.data_dir",
}


def run(c, workdir: str) -> list[dict]:
    workdir = pathlib.Path(workdir).expanduser()
    seeds = seed_list(c.seeds)
    t0 = time.perf_counter()

    def log(msg):
        if jax.process_index() == 0:
            print(f"[qagen {time.perf_counter() - t0:.0f} s] {msg}", flush=True)

    first = parse(sweep.point_config(c, c.run, seeds[0], qagen=dict(init=c.init)))  # checks, early
    try:  # the data too, before anything trains (read once per process, then cached)
        qagen.read_examples(c.data.source, c.data.data_dir)
    except DataError as e:
        raise ConfigError(str(e)) from None
    pre = copy.deepcopy(c.pretrain)  # configs/mlm.py's own data section, our data_dir
    pre.seed, pre.data.data_dir = seeds[0], c.data.data_dir
    init = sweep.pretrain_first(c.init, pre, workdir, log)
    evals, per_seed, learned = [], [], []  # learned: the seeds whose run did not diverge
    for seed in seeds:
        out = workdir / "runs" / f"seed{seed}"
        reused = sweep.is_finished(out)
        log(sweep.start_message(out, f"training seed {seed}"))
        pc = sweep.point_config(c, c.run, seed, qagen=dict(init=init))
        start = time.perf_counter()
        result = sweep.train_point(pc, out, {"seed": seed})
        evals.append(result["eval"])
        if not result["note"]:
            learned.append(seed)
        took = "reused" if reused else f"{(time.perf_counter() - start) / 60:.1f} min"
        per_seed.append(f"seed {seed} {took}")
        log(
            f"seed {seed}: "
            + ", ".join(f"{k} {result['eval'].get(k, np.nan):.2f}" for k in METRICS)
        )
    rows = summarize(evals)
    # a diverged run's checkpoint predates its divergence: examples from one that did not
    examples = _examples(workdir / "runs" / f"seed{learned[0]}", c.examples) if learned else []
    if jax.process_index() == 0:
        s, t = first.task_config, first.train
        header = (
            f"{machine_header()}\nquestion generation on {c.data.source} from {init}; "
            f"seeds {list(seeds)}; {t.num_train_steps} steps of {t.batch_size}; "
            f"{s.eval_examples} held-out pairs (questions, beam {s.beam_size}), "
            f"{s.eval_passages} held-out passages ({s.num_answers} answers sampled, top-p "
            f"{s.top_p}, top-k {s.top_k}, in-passage filter {s.in_passage})"
        )
        write_csv(workdir / "qagen.csv", rows)
        plot(rows, workdir / "qagen.png", header)
        with open(workdir / "examples.jsonl", "w", encoding="utf-8") as f:
            for e in examples:
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
        print(f"\n{header}\n\n{table(rows)}\n")
        for e in examples:
            print(json.dumps(e, ensure_ascii=False, indent=1))
        print(
            f"wrote {workdir / 'qagen.csv'}, {workdir / 'qagen.png'} and "
            f"{workdir / 'examples.jsonl'} ({time.perf_counter() - t0:.0f} s; training + "
            f"evaluation: {', '.join(per_seed)})"
        )
    return rows


def summarize(evals: list[dict]) -> list[dict]:
    """One row per metric: ours (mean, std over seeds; NaN where a seed diverged) and the
    baselines' (the same examples in every seed: the mean over the seeds that report them, as a
    diverged run reports none)."""

    def baseline(key):
        v = np.array([e.get(key, np.nan) for e in evals], float)
        return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else math.nan

    rows = []
    for key, name in METRICS.items():
        mean, std = seed_stats([e.get(key, np.nan) for e in evals])
        rows.append(
            {
                "metric": name,
                "key": key,
                "seeds": len(evals),
                "model_mean": mean,
                "model_std": std,
                "baseline": baseline(f"baseline_{key}"),
                "template": baseline(f"baseline_template_{key}"),  # NaN: the answer metrics
            }
        )
    return rows


def table(rows) -> str:
    def model(r):
        return mean_std(r["model_mean"], r["model_std"], r["seeds"])

    spread = over_seeds(r["seeds"] for r in rows)
    return format_table(
        rows,
        ["metric", f"model ({spread})", "trivial baseline", "template baseline"],
        [
            "{metric}",
            model,
            "{baseline:.2f}",
            lambda r: "-" if np.isnan(r["template"]) else f"{r['template']:.2f}",
        ],
        align="lrrr",
    )


def _examples(run_dir: pathlib.Path, n: int) -> list[dict]:
    """Pairs the model generates for the first n held-out passages that have a gold pair that
    fits: sampled answers with their questions, and the question for each gold answer (at its
    own offset) beside the gold question and the baseline's."""
    if n == 0:
        return []
    t = load_trained(run_dir)
    s, d = t.config.task_config, t.config.data
    held_out = qagen.read_examples(d.source, d.data_dir)["validation"]
    template = qagen.train_template(d.source, d.data_dir)
    golds: dict[str, list[dict]] = {}
    for e in qagen.fitting(t.vocab, held_out, s, len(held_out)):
        if e["passage"] in golds or len(golds) < n:
            golds.setdefault(e["passage"], []).append(e)
    passages = list(golds)
    gen = qagen.Generator(t.model, t.vocab, s, d.seq_len, batch_size=max(n, 1))
    sampled = gen.generate(passages, jax.random.key(t.config.train.seed))
    out = []
    for passage, got in zip(passages, sampled, strict=True):
        gold = golds[passage][:3]
        asked = gen.ask(
            [passage] * len(gold), [e["answer"] for e in gold], [e["answer_start"] for e in gold]
        )
        out.append(
            {
                "passage": passage,
                "sampled": [{"answer": g["answer"], "question": g["question"]} for g in got],
                "gold_answer_given": [
                    {
                        "answer": e["answer"],
                        "question": a["question"],
                        "gold": e["question"],
                        "baseline": qagen.baseline_question(e),
                        "template": qagen.template_question(e, template),
                    }
                    for e, a in zip(gold, asked, strict=True)
                ],
            }
        )
    return out


def plot(rows, path, title):
    """The four held-out scores (BLEU-4, ROUGE-L F1, exact match, F1: all 0-100) of the model
    beside the trivial baseline's; "answers kept / passage" is a count, so only the table has it."""
    with save_figure(path, title, 1, (7, 4.2), title_size=7) as axes:
        ax = axes  # one column: a single Axes
        shown = [r for r in rows if r["key"] != "answers"]
        x = np.arange(len(shown))
        ax.bar(
            x - 0.27,
            [r["model_mean"] for r in shown],
            0.27,
            yerr=[r["model_std"] for r in shown],
            capsize=3,
            label=f"UniLM ({over_seeds(r['seeds'] for r in shown)})",
        )
        ax.bar(x, [r["baseline"] for r in shown], 0.27, label="trivial baseline (copy)")
        # The template's question word and ending; no bar for the answer metrics (NaN).
        ax.bar(x + 0.27, [r["template"] for r in shown], 0.27, label="template baseline")
        # Wrapped: the longer metric names would run into each other on one line.
        ax.set_xticks(x, [textwrap.fill(r["metric"], 12) for r in shown], fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("held-out score (%, 100 = perfect)")
        ax.grid(alpha=0.3, axis="y")
        # Below the axes and their wrapped tick labels: inside, it would cover the bars at 90.
        ax.legend(fontsize=8, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
