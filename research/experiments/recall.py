"""The recall study: MQAR accuracy against the size of the decode state (Zoology, Arora et al.
2023; the state-size / recall trade-off of Based, Arora et al. 2024), for softmax and the linear,
gated and delta-rule kinds.

Each (attention, width, learning rate, seed) point trains a `DecoderLM` on Zoology's training
mixture: `train_segments`, "LENGTH:PAIRS" MQAR segments in equal shares (`data.mqar_segments`,
Zoology's `multiquery_ar` draw), in its own run directory (resumable; a finished point is never
trained again). It is then evaluated on every test segment (`test_segments`: longer sequences and
more key-value pairs than it trained on), cached in the run's recall.json. `seeds` repeats every
point (each seed its own initialisation, data and order). Per (attention, width) the table reports
the learning rate with the best mean accuracy (averaged over the seeds), its accuracy on each test
segment and their mean (both averaged over the seeds), the std of that mean over the seeds and each
seed's mean, the decode-state bytes at the longest test length (softmax: its KV cache there; the
recurrent kinds: their fixed state plus convolution windows) and the parameter count;
recall_runs.csv lists every run. The plot is Based's: mean accuracy against state bytes (log
scale), one line per kind through its widths, error bars over the seeds.
"""

import copy
import dataclasses
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.config import as_list, seed_list
from research.data import sources
from research.data.config import parse_segments
from research.experiments import sweep
from research.experiments.compare_attention import (
    attention_names,
    learning_rates,
)
from research.experiments.model_cost import decode_state_bytes, parameter_count
from research.models import DecoderLM
from research.models.config import attention_overrides
from research.ops.checks import is_positive_int
from research.report import (
    format_table,
    machine_header,
    over_seeds,
    plural,
    save_figure,
    seed_stats,
    write_csv,
)
from research.train.config import ConfigError, parse
from research.train.trained import load_trained

# Keys point_config sets for every point (research.main refuses overrides of them).
SWEPT = {
    "mqar.model.attention": "use --config.attentions",
    # set for the feature-map kinds, unread by the others
    "mqar.model.feature_map": "use --config.attentions (a feature map is a kind: taylor, ..)",
    "mqar.model.d_model": "use --config.widths",
    "mqar.model.d_ff": "use --config.d_ff",
    "mqar.optimizer.learning_rate": "use --config.learning_rates or learning_rates_by_attention",
    "mqar.seed": "use --config.seeds",
    "mqar.data.mqar_segments": "use --config.train_segments",
    "mqar.data.seq_len": "it is the longest of --config.train_segments",
    "mqar.data.mqar_variant": "the study draws Zoology's multiquery_ar",
}


@dataclasses.dataclass(frozen=True)
class Point:
    attention: str
    width: int
    lr: float
    seed: int = 0
    d_ff: int = 0  # the MLP's hidden width; 0: 4 x width

    @property
    def name(self) -> str:
        """The run directory's name; seed 0 and the default d_ff add no suffix (a one-seed
        study's runs are reused when more seeds are added)."""
        tail = (f"_ff{self.d_ff}" if self.d_ff else "") + (f"_s{self.seed}" if self.seed else "")
        return f"{self.attention}_d{self.width}_lr{self.lr:g}{tail}"


def _segments(c, key: str) -> tuple[tuple[int, int], ...]:
    try:
        segments = parse_segments(as_list(c[key], name=key))
    except ValueError as e:
        raise ConfigError(str(e).replace("mqar_segments", key, 1)) from None
    for length, pairs in segments:
        if pairs >= c.mqar.data.vocab_size // 2 - 1:
            raise ConfigError(
                f"{key}: '{length}:{pairs}' needs mqar.data.vocab_size > {2 * pairs + 2}, "
                f"got {c.mqar.data.vocab_size}"
            )
    return segments


def point_config(c, p: Point):
    """The training config of one point: c.mqar on the training mixture, padded to its longest
    segment, with the point's width, MLP width (d_ff, default 4 x width), attention, learning
    rate and seed."""
    pc = copy.deepcopy(c.mqar)
    pc.unlock()
    segments = _segments(c, "train_segments")
    pc.data.update(
        mqar_segments=tuple(f"{n}:{k}" for n, k in segments),
        seq_len=max(n for n, _ in segments),
        mqar_variant="zoology",
    )
    d_ff = p.d_ff or 4 * p.width
    pc.model.update(d_model=p.width, d_ff=d_ff, **attention_overrides(p.attention))
    pc.optimizer.learning_rate = p.lr
    pc.seed = p.seed
    return pc


def points(c) -> list[Point]:
    """Every point, each config checked (one-line ConfigError) before anything trains."""
    attentions = attention_names(c)
    widths = as_list(c.widths, int, name="widths", distinct=True)
    rates = learning_rates(c, attentions)
    train_len = max(n for n, _ in _segments(c, "train_segments"))
    test_len = max(n for n, _ in _segments(c, "test_segments"))
    positions = c.mqar.model.positions
    if positions in ("learned", "sinusoidal") and test_len > train_len:
        raise ConfigError(
            f"mqar.model.positions={positions!r} keeps a table of the training length "
            f"({train_len} tokens) but test_segments reach {test_len}: use rotary or none"
        )
    for name in ("test_examples", "eval_batch_size"):
        if not is_positive_int(c[name]):
            raise ConfigError(f"{name}={c[name]!r}: must be a positive int")
    seeds = study_seeds(c)
    d_ff = c.get("d_ff", 0)
    if not (isinstance(d_ff, int) and not isinstance(d_ff, bool) and d_ff >= 0):
        raise ConfigError(f"d_ff={d_ff!r}: must be an int >= 0 (0: 4 x each width)")
    out = [
        Point(a, w, lr, s, d_ff)
        for a in attentions
        for w in widths
        for lr in rates[a]
        for s in seeds
    ]
    for p in out:
        try:
            parse(point_config(c, p))
        except ConfigError as e:
            raise ConfigError(f"{p.name}: {e}") from None
    return out


def study_seeds(c) -> tuple[int, ...]:
    """c.seeds, checked (`seed_list`). Each run's seed comes from them, so a mqar.seed other
    than 0 is refused (it would be silently replaced)."""
    seeds = seed_list(c.seeds)
    if c.mqar.seed != 0:
        raise ConfigError(
            f"mqar.seed={c.mqar.seed}: the recall study sets each run's seed from `seeds`; "
            f"use --config.seeds={c.mqar.seed}"
        )
    return seeds


def test_set(run, length: int, pairs: int, examples: int) -> dict[str, np.ndarray]:
    """Zoology-style MQAR test examples at one (length, pairs), from the run's data config (its
    vocabulary, data_dir and seed): inputs, targets and weights [examples, length]."""
    d = dataclasses.replace(
        run.data,
        seq_len=length,
        num_kv_pairs=pairs,
        train_examples=1,
        test_examples=examples,
        mqar_segments=(),
        mqar_variant="zoology",
    )
    _, test = sources.mqar_sources(d, seed=run.train.seed)
    records = [test[i] for i in range(len(test))]
    return {k: np.stack([r[k] for r in records]) for k in ("inputs", "targets", "weights")}


def accuracy(model: DecoderLM, data: dict[str, np.ndarray], batch_size: int) -> float:
    """Recall: the fraction of query positions (weight 1) whose argmax is the value."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def hits(state, inputs, targets, weights):
        logits = nnx.merge(graphdef, state)(inputs)
        right = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
        return jnp.sum(right * weights), jnp.sum(weights)

    got = total = 0.0
    n = len(data["inputs"])
    for i in range(0, n, batch_size):
        part = [data[k][i : i + batch_size] for k in ("inputs", "targets", "weights")]
        if len(part[0]) < batch_size:  # one shape, one compile: pad the last batch (weight 0)
            pad = batch_size - len(part[0])
            part = [np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) for x in part]
        h, t = hits(state, *part)
        got, total = got + float(h), total + float(t)
    return got / total


def evaluate_point(c, run_dir: pathlib.Path) -> dict[str, float]:
    """{"LENGTH:PAIRS": accuracy} on every test segment, cached in run_dir/recall.json (keyed by
    the test segments and examples, so a changed test set is measured again)."""
    segments = _segments(c, "test_segments")
    key = {"test_segments": [f"{n}:{k}" for n, k in segments], "test_examples": c.test_examples}
    path = run_dir / "recall.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["key"] == key:
            return saved["accuracy"]
    trained = load_trained(run_dir)
    acc = {
        f"{n}:{k}": accuracy(
            trained.model, test_set(trained.config, n, k, c.test_examples), c.eval_batch_size
        )
        for n, k in segments
    }
    if jax.process_index() == 0:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "accuracy": acc}, indent=1))
        tmp.replace(path)
    return acc


def state_and_params(c, p: Point, length: int) -> tuple[int, int]:
    """(decode-state bytes with room for `length` tokens, batch 1; parameters) of the point's
    model (random weights: sizes do not depend on them)."""
    pc = point_config(c, p)
    mcfg = parse(pc).model.replace(vocab_size=pc.data.vocab_size, max_length=length)
    model = DecoderLM(mcfg, rngs=nnx.Rngs(0))
    return decode_state_bytes(model, length), parameter_count(model)


def summarize(c, results: list[dict]) -> list[dict]:
    """One row per (attention, width): the learning rate with the best mean accuracy over the
    seeds (a rate with a diverged, NaN, seed ranks last), its per-segment accuracies and mean
    averaged over the seeds, the std of the mean over them (NaN for one seed) and each seed's
    mean."""

    def score(runs):  # the mean over seeds; NaN (a diverged run) ranks last
        return np.nan_to_num(np.mean([r["mean"] for r in runs]), nan=-1.0)

    rows = []
    for a in as_list(c.attentions, name="attentions", distinct=True):
        for w in as_list(c.widths, int, name="widths", distinct=True):
            by_lr: dict[float, list[dict]] = {}
            for r in results:
                if r["attention"] == a and r["width"] == w:
                    by_lr.setdefault(r["lr"], []).append(r)
            runs = sorted(max(by_lr.values(), key=score), key=lambda r: r["seed"])
            first = runs[0]
            mean, std = seed_stats([r["mean"] for r in runs])
            accuracy = {
                s: float(np.mean([r["accuracy"][s] for r in runs])) for s in first["accuracy"]
            }
            rows.append(
                {
                    **{k: first[k] for k in ("attention", "width", "lr", "state_bytes", "params")},
                    "accuracy": accuracy,
                    "mean": mean,
                    "std": std,
                    "seeds": [r["seed"] for r in runs],
                    "seed_means": [r["mean"] for r in runs],
                }
            )
    return rows


def table(rows: list[dict], segments: list[str]) -> str:
    """Markdown; with several seeds the mean is "mean ± std" and each seed's mean follows."""
    several = any(len(r["seeds"]) > 1 for r in rows)
    columns = ("attention", "width", "lr", *segments, "mean", "state bytes", "params")
    formats = [
        "{attention}",
        "{width}",
        "{lr:g}",
        *(lambda r, s=s: f"{r['accuracy'][s]:.3f}" for s in segments),
        lambda r: f"{r['mean']:.3f}" + (f" ± {r['std']:.3f}" if len(r["seeds"]) > 1 else ""),
        "{state_bytes:,}",
        "{params:,}",
    ]
    if several:
        columns += ("mean per seed",)
        formats.append(lambda r: " / ".join(f"{m:.3f}" for m in r["seed_means"]))
    return format_table(rows, columns, formats)


def plot(rows: list[dict], path: pathlib.Path, title: str):
    with save_figure(path, title, 1, (6.5, 4.5)) as ax:
        for a in dict.fromkeys(r["attention"] for r in rows):
            mine = sorted((r for r in rows if r["attention"] == a), key=lambda r: r["state_bytes"])
            x, y = [r["state_bytes"] for r in mine], [r["mean"] for r in mine]
            ax.errorbar(x, y, yerr=[r["std"] for r in mine], fmt="o-", capsize=3, label=a)
            for r in mine:
                ax.annotate(f"d{r['width']}", (r["state_bytes"], r["mean"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("decode state at the longest test length (bytes, batch 1)")
        spread = over_seeds(len(r["seeds"]) for r in rows)
        ax.set_ylabel(f"MQAR accuracy, mean over the test segments\n({spread})")
        ax.grid(alpha=0.3)
        ax.legend()


def run(c, workdir: str) -> list[dict]:
    workdir = pathlib.Path(workdir).expanduser()
    todo = points(c)
    seeds = study_seeds(c)
    segments = _segments(c, "test_segments")
    names = [f"{n}:{k}" for n, k in segments]
    longest = max(n for n, _ in segments)
    t0 = time.perf_counter()
    results, sizes = [], {}
    for i, p in enumerate(todo, 1):
        out = workdir / "runs" / p.name
        if jax.process_index() == 0:
            so_far = f"{time.perf_counter() - t0:.0f} s so far"
            print(f"[{i}/{len(todo)}] {p.name} ({so_far}): {sweep.start_message(out, 'training')}")
        trained = sweep.train_point(point_config(c, p), out, dataclasses.asdict(p))
        if trained["note"]:  # diverged: no accuracy to measure
            acc = dict.fromkeys(names, math.nan)
        else:
            acc = evaluate_point(c, out)
        if (p.attention, p.width, p.lr) not in sizes:  # the same model for every seed
            sizes[p.attention, p.width, p.lr] = state_and_params(c, p, longest)
        state, params = sizes[p.attention, p.width, p.lr]
        results.append(
            {
                **dataclasses.asdict(p),
                "accuracy": acc,
                "mean": float(np.mean([acc[s] for s in names])),
                "state_bytes": state,
                "params": params,
                "tokens_per_second": trained["tokens_per_second"],
            }
        )
    rows = summarize(c, results)
    m = c.mqar
    header = (
        f"{machine_header()}\nMQAR (Zoology draw) vocab {m.data.vocab_size}, trained on "
        f"{', '.join(as_list(c.train_segments, name='train_segments'))} for "
        f"{m.num_train_steps} steps x batch {m.batch_size}; "
        f"{plural(m.model.num_layers, 'layer')}, {plural(m.model.num_heads, 'head')}; "
        f"{c.test_examples} test examples per segment; state at {longest} tokens; "
        f"{plural(len(seeds), 'seed')} ({', '.join(map(str, seeds))})"
        + (f"; d_ff {c.d_ff} at every width" if c.get("d_ff", 0) else "")
    )
    if jax.process_index() == 0:
        flat = [{**r, **r["accuracy"], "seeds": len(r["seeds"]), "std": r["std"]} for r in rows]
        fields = ("attention", "width", "lr", *names, "mean", "std", "seeds")
        write_csv(workdir / "recall.csv", flat, (*fields, "state_bytes", "params"))
        every = [{**r, **r["accuracy"], "d_ff": r["d_ff"] or 4 * r["width"]} for r in results]
        fields = ("attention", "width", "d_ff", "lr", "seed", *names, "mean", "tokens_per_second")
        write_csv(workdir / "recall_runs.csv", every, fields)
        plot(rows, workdir / "recall.png", header)
        print(f"\n{header}\n\n{table(rows, names)}\n")
        print(
            f"wrote {workdir / 'recall.csv'}, {workdir / 'recall_runs.csv'} (every run) and "
            f"{workdir / 'recall.png'} ({time.perf_counter() - t0:.0f} s)"
        )
    return rows
