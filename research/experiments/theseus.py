"""BERT-of-Theseus, the note's table (docs/research_notes.md section 5): predecessor, the first k
layers fine-tuned directly, and Theseus-k, over seeds.

From one pretrained BERT (`init`, or an `mlm` run trained first in workdir/pretrain), per seed:
  predecessor   `finetune` of all n layers                            runs/predecessor_seedS
  direct_k      `finetune` of the first k layers (classify.layers=k)   runs/direct_kK_seedS
                for direct_steps (default: Theseus's two stages' steps together)
  theseus_k     the replacement stage (task theseus) from predecessor  runs/theseus_kK_seedS
                then `finetune` of the successor alone                 runs/successor_kK_seedS
Every run is an ordinary resumable run, cached by result.json; accuracies are computed on every
validation and test example (cached in accuracy.json), with each depth's parameter count and
eval throughput (tokens/s of a jitted forward over the validation split, the median of 3
passes, every depth measured back to back after training; cached in speed/accuracy.json).
The table gives mean ± std over seeds, the note's iflytek numbers beside, and a pooled column
(validation and test together: a smaller sampling error than either split's); below it the
differences paired by seed (`paired`, also paired.csv), which tell a 1-point gap from noise.
"""

import functools
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.config import ConfigError, as_list, seed_list
from research.data import classification
from research.experiments import sweep
from research.models.theseus import check_successor_layers
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
from research.tasks import bert, classify
from research.tasks.theseus import TheseusConfig
from research.train.config import parse
from research.train.trained import load_trained

# The note's iflytek dev accuracy (%), 12-layer BERT: by k / n, the fraction of layers kept.
NOTE = {
    ("predecessor", 1.0): 60.11,
    ("direct", 0.5): 58.99,
    ("direct", 0.25): 57.96,
    ("theseus", 0.5): 59.61,
    ("theseus", 0.25): 59.36,
}
# Keys every run sets from the experiment's own (research.main refuses overrides of them).
SWEPT = sweep.seeded_points(
    "pretrain",
    "finetune",
    "theseus",
    **{"finetune.classify.init": "init"},
    **{"theseus.theseus.init": "init", "theseus.theseus.successor_layers": "successor_layers"},
    **{f"theseus.theseus.{k}": k for k in ("replace_prob", "replace_schedule", "replace_slope")},
) | {"theseus.theseus.predecessor": "it is each seed's stage-1 run"}


def _note(kind: str, fraction: float) -> float:
    return NOTE.get((kind, fraction), float("nan"))


def eval_throughput(
    model, vocab, records, *, seq_len: int, batch_size: int = 64, passes: int = 3
) -> float:
    """Tokens/s of the jitted classifier forward over `records` (batch_size x seq_len tokens a
    batch, padding included): the median of `passes` timed passes after one warm-up batch that
    compiles."""
    forward = jax.jit(lambda m, x, k: jnp.argmax(m(x, mask=k).class_logits, axis=-1))
    batches = list(
        classification.classify_dataset(
            records, vocab, seq_len=seq_len, batch_size=batch_size, seed=0, train=False
        )
    )
    forward(model, batches[0]["inputs"], batches[0]["mask"]).block_until_ready()
    rates = []
    for _ in range(passes):
        t0 = time.perf_counter()
        for b in batches:
            out = forward(model, b["inputs"], b["mask"])
        out.block_until_ready()
        rates.append(len(batches) * batch_size * seq_len / (time.perf_counter() - t0))
    return float(np.median(rates))


def _speed(out: pathlib.Path, records, seq_len: int) -> dict:
    t = load_trained(out)
    rate = eval_throughput(t.model, t.vocab, records, seq_len=seq_len)
    return {"params": _params(t.model), "tokens_per_s": rate}


def _params(model) -> int:
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


NAN_ACCURACY = {"validation": math.nan, "test": math.nan, "pooled": math.nan}


def run(c, workdir: str) -> list[dict]:
    workdir = pathlib.Path(workdir).expanduser()
    seeds = seed_list(c.seeds)
    ks = as_list(c.successor_layers, int, name="successor_layers", distinct=True)
    theseus = dict(
        replace_prob=c.replace_prob,
        replace_schedule=c.replace_schedule,
        replace_slope=c.replace_slope,
    )
    try:
        TheseusConfig(**theseus)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not isinstance(c.direct_steps, int) or c.direct_steps < 0:
        raise ConfigError(f"direct_steps={c.direct_steps!r}: an int >= 0 (0 = Theseus's steps)")
    t0 = time.perf_counter()

    def log(msg):
        if jax.process_index() == 0:
            print(f"[theseus {time.perf_counter() - t0:.0f} s] {msg}", flush=True)

    # ---- the pretrained BERT ------------------------------------------------------------------
    init = c.init
    pre = sweep.point_config(c, c.pretrain, seeds[0])
    n = (bert.pretrained_config(init, key="init")[0] if init else parse(pre).model).num_layers
    if list(ks) == [0]:
        ks = [n // 2, n // 4] if n >= 4 else [max(1, n // 2)]
    for k in ks:  # every k is checked before anything trains
        try:
            check_successor_layers(n, k)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    data = parse(sweep.point_config(c, c.finetune, seeds[0])).data
    _, validation, test = classification.sources_of(data)
    init = sweep.pretrain_first(init, pre, workdir, log)

    seq_len = data.seq_len
    results, models = [], {}

    def evaluate(kind, k, seed, out):
        if out is None:  # diverged (or built on a run that did): no result, not a number
            results.append({"kind": kind, "layers": k, "seed": seed, **NAN_ACCURACY})
            log(f"{kind} {plural(k, 'layer')} seed {seed}: no result (a run diverged)")
            return
        load = functools.cache(functools.partial(load_trained, out))

        def acc():
            t = load()
            return {
                split: 100 * classify.accuracy(t.model, t.vocab, recs, seq_len=seq_len)
                for split, recs in (("validation", validation), ("test", test))
            }

        result = sweep.cached_result(out / "eval", acc)
        models.setdefault(k, out)  # one trained model per depth, for the speed measurement
        pooled = (result["validation"] * len(validation) + result["test"] * len(test)) / (
            len(validation) + len(test)
        )
        results.append({"kind": kind, "layers": k, "seed": seed, **result, "pooled": pooled})
        log(
            f"{kind} {plural(k, 'layer')} seed {seed}: validation {result['validation']:.2f}, "
            f"test {result['test']:.2f}"
        )

    def train(name, pc, seed):
        """The run's directory, or None when it diverged (its note says where)."""
        out = workdir / "runs" / f"{name}_seed{seed}"
        log(sweep.start_message(out, f"training {name} seed {seed}"))
        return None if sweep.train_point(pc, out, {"run": name, "seed": seed})["note"] else out

    # The direct baseline's budget: by default Theseus's two stages together (replacement +
    # successor fine-tuning), so neither side has more steps on the k layers.
    direct_steps = c.direct_steps or c.theseus.num_train_steps + c.finetune.num_train_steps
    for seed in seeds:
        out = train(
            "predecessor", sweep.point_config(c, c.finetune, seed, classify=dict(init=init)), seed
        )
        evaluate("predecessor", n, seed, out)
        for k in ks:
            direct = sweep.point_config(c, c.finetune, seed, classify=dict(init=init, layers=k))
            direct.update(num_train_steps=direct_steps, eval_every_steps=direct_steps)
            evaluate("direct", k, seed, train(f"direct_k{k}", direct, seed))
            if out is None:  # no predecessor to compress
                evaluate("theseus", k, seed, None)
                continue
            stage2 = sweep.point_config(
                c,
                c.theseus,
                seed,
                theseus=dict(
                    predecessor=f"workdir:{out}", init=init, successor_layers=k, **theseus
                ),
            )
            out2 = train(f"theseus_k{k}", stage2, seed)
            if out2 is None:
                evaluate("theseus", k, seed, None)
                continue
            stage3 = sweep.point_config(c, c.finetune, seed, classify=dict(init=f"workdir:{out2}"))
            evaluate("theseus", k, seed, train(f"successor_k{k}", stage3, seed))

    # Speed depends on the depth, not on the weights or how they were trained: every depth
    # measured back to back, the median of 3 passes over the validation split each.
    speed = sweep.cached_result(
        workdir / "speed",
        lambda: {
            str(k): _speed(out, validation, seq_len)
            for k, out in sorted(models.items(), reverse=True)
        },
        keys=[str(k) for k in models],  # a study resumed with more k measures every depth again
    )
    unmeasured = {"params": math.nan, "tokens_per_s": math.nan}  # every run at that depth diverged
    for r in results:
        r.update(speed.get(str(r["layers"]), unmeasured))
    rows = summarize(results, n)
    if jax.process_index() == 0:
        header = (
            f"{machine_header()}\nBERT-of-Theseus on {c.data.source}: from {init}, "
            f"n={n}, k in {ks}, replace p={c.replace_prob} ({c.replace_schedule}); "
            f"accuracy on all {len(validation)} validation / {len(test)} test examples "
            f"(pooled: both, {len(validation) + len(test)}); seeds {list(seeds)}; "
            f"seq_len {seq_len}"
        )
        pairs = paired(results, n)
        write_csv(workdir / "theseus.csv", rows)
        write_csv(workdir / "paired.csv", pairs)
        plot(rows, workdir / "theseus.png", header)
        print(f"\n{header}\n\n{table(rows)}\n")
        print("Pooled accuracy, paired by seed (mean difference ± its standard error):")
        for p in pairs:
            spread = f"± {p['se']:.2f}" if p["seeds"] > 1 else f"({plural(p['seeds'], 'seed')})"
            print(f"  {p['comparison']}: {p['mean']:+.2f} {spread} points; by seed {p['per_seed']}")
        print(
            f"wrote {workdir / 'theseus.csv'}, {workdir / 'paired.csv'} and "
            f"{workdir / 'theseus.png'} ({time.perf_counter() - t0:.0f} s)"
        )
        (workdir / "results.json").write_text(json.dumps(results, indent=1))
    return rows


def summarize(results, n: int) -> list[dict]:
    """One row per (kind, layers): mean and std over seeds, params, eval tokens/s, the note's."""
    rows = []
    for kind, k in dict.fromkeys((r["kind"], r["layers"]) for r in results):
        mine = [r for r in results if r["kind"] == kind and r["layers"] == k]
        row = {
            "model": f"{kind} ({plural(k, 'layer')})",
            "kind": kind,
            "layers": k,
            "seeds": len(mine),
            "params": mine[0]["params"],
            "eval_tokens_per_s": mine[0]["tokens_per_s"],
        }
        for split in ("validation", "test", "pooled"):
            row[f"{split}_mean"], row[f"{split}_std"] = seed_stats([r[split] for r in mine])
        row["note_dev"] = _note(kind, k / n)
        rows.append(row)
    return rows


def table(rows) -> str:
    def cell(split):
        return lambda r: mean_std(r[f"{split}_mean"], r[f"{split}_std"], r["seeds"])

    def note(r):
        return "-" if np.isnan(r["note_dev"]) else f"{r['note_dev']:.2f}"

    return format_table(
        rows,
        ["model", "params", "validation", "test", "pooled", "eval tok/s", "note (iflytek dev)"],
        [
            "{model}",
            "{params:,}",
            cell("validation"),
            cell("test"),
            cell("pooled"),
            "{eval_tokens_per_s:,.0f}",
            note,
        ],
        align="lrrrrrr",
    )


def paired(results, n: int) -> list[dict]:
    """Pooled accuracy differences paired by seed (the two runs share the data order and the new
    heads' initialisation): Theseus minus direct, direct minus predecessor (n layers) and Theseus
    minus predecessor at each k. `se` is the standard error of the mean difference (the std with
    ddof 1 over sqrt(seeds); NaN for one seed); a seed where either run diverged is left out
    of both (per_seed shows it as nan)."""
    by = {(r["kind"], r["layers"], r["seed"]): r["pooled"] for r in results}
    out = []
    for k in dict.fromkeys(r["layers"] for r in results if r["kind"] == "theseus"):
        for a, ka, b, kb in (
            ("theseus", k, "direct", k),
            ("direct", k, "predecessor", n),
            ("theseus", k, "predecessor", n),
        ):
            seeds = sorted(s for (kind, layers, s) in by if (kind, layers) == (a, ka))
            every = np.array([by[a, ka, s] - by.get((b, kb, s), math.nan) for s in seeds])
            d = every[np.isfinite(every)]
            se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
            out.append(
                {
                    "comparison": f"{a} minus {b}, k = {k}",
                    "seeds": len(d),
                    "mean": float(d.mean()) if len(d) else math.nan,
                    "se": se,
                    "per_seed": " ".join(
                        f"s{s}:{x:+.2f}" for s, x in zip(seeds, every, strict=True)
                    ),
                }
            )
    return out


def plot(rows, path, title):
    with save_figure(path, title, 2, (11, 4.2), title_size=7) as axes:
        x = np.arange(len(rows))
        labels = [r["model"] for r in rows]
        ax = axes[0]
        for split, dx in (("validation", -0.2), ("test", 0.2)):
            ax.bar(
                x + dx,
                [r[f"{split}_mean"] for r in rows],
                0.4,
                yerr=[r[f"{split}_std"] for r in rows],
                capsize=3,
                label=split,
            )
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(f"accuracy (%), {over_seeds(r['seeds'] for r in rows)}")
        # the floor under both splits' bars (NaN rows, diverged runs, drawn as none)
        shown = [r[f"{s}_mean"] for r in rows for s in ("validation", "test")]
        lo = min((v for v in shown if np.isfinite(v)), default=5.0) - 5
        ax.set_ylim(max(0, lo), 100)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
        ax = axes[1]
        ax.bar(x, [r["eval_tokens_per_s"] for r in rows])
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("eval tokens/s (jitted forward)")
        ax.grid(alpha=0.3, axis="y")
