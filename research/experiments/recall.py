"""The recall study: MQAR accuracy against the size of the decode state (Zoology, Arora et al.
2023; the state-size / recall trade-off of Based, Arora et al. 2024), for softmax and the linear,
gated and delta-rule kinds.

Each (attention, width, learning rate) point trains a `DecoderLM` on Zoology's training mixture:
`train_segments`, "LENGTH:PAIRS" MQAR segments in equal shares (`data.mqar_segments`, Zoology's
`multiquery_ar` draw), in its own run directory (resumable; a finished point is never trained
again). It is then evaluated on every test segment (`test_segments`: longer sequences and more
key-value pairs than it trained on), cached in the run's recall.json. Per (attention, width) the
table reports the learning rate with the best mean accuracy, its accuracy on each test segment
and their mean, the decode-state bytes at the longest test length (softmax: its KV cache there;
the recurrent kinds: their fixed state plus convolution windows) and the parameter count. The
plot is Based's: mean accuracy against state bytes (log scale), one line per kind through its
widths.
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

from research.config import as_list
from research.data import sources
from research.data.config import parse_segments
from research.experiments import sweep
from research.experiments.compare_attention import (
    attention_names,
    attention_overrides,
    decode_state_bytes,
    learning_rates,
    parameter_count,
)
from research.models import DecoderLM
from research.report import format_table, machine_header, plural, save_figure, write_csv
from research.train.config import ConfigError, parse
from research.train.trained import load_trained


@dataclasses.dataclass(frozen=True)
class Point:
    attention: str
    width: int
    lr: float

    @property
    def name(self) -> str:
        return f"{self.attention}_d{self.width}_lr{self.lr:g}"


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
    segment, with the point's width (d_ff = 4 x width), attention and learning rate."""
    pc = copy.deepcopy(c.mqar)
    pc.unlock()
    segments = _segments(c, "train_segments")
    pc.data.update(
        mqar_segments=tuple(f"{n}:{k}" for n, k in segments),
        seq_len=max(n for n, _ in segments),
        mqar_variant="zoology",
    )
    pc.model.update(d_model=p.width, d_ff=4 * p.width, **attention_overrides(p.attention))
    pc.optimizer.learning_rate = p.lr
    return pc


def points(c) -> list[Point]:
    """Every point, each config checked (one-line ConfigError) before anything trains."""
    attentions = attention_names(c)
    widths = as_list(c.widths, int, name="widths")
    rates = learning_rates(c, attentions)
    _segments(c, "train_segments")
    _segments(c, "test_segments")
    if not (isinstance(c.test_examples, int) and c.test_examples > 0):
        raise ConfigError(f"test_examples={c.test_examples!r}: must be a positive int")
    out = [Point(a, w, lr) for a in attentions for w in widths for lr in rates[a]]
    for p in out:
        try:
            parse(point_config(c, p))
        except ConfigError as e:
            raise ConfigError(f"{p.name}: {e}") from None
    return out


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
    """One row per (attention, width): the learning rate with the best mean accuracy (a NaN,
    diverged, run ranks last)."""
    rows = []
    for a in as_list(c.attentions, name="attentions"):
        for w in as_list(c.widths, int, name="widths"):
            mine = [r for r in results if r["attention"] == a and r["width"] == w]
            best = max(mine, key=lambda r: np.nan_to_num(r["mean"], nan=-1.0))
            rows.append(best)
    return rows


def table(rows: list[dict], segments: list[str]) -> str:
    columns = ("attention", "width", "lr", *segments, "mean", "state bytes", "params")
    formats = (
        "{attention}",
        "{width}",
        "{lr:g}",
        *(lambda r, s=s: f"{r['accuracy'][s]:.3f}" for s in segments),
        "{mean:.3f}",
        "{state_bytes:,}",
        "{params:,}",
    )
    return format_table(rows, columns, formats)


def plot(rows: list[dict], path: pathlib.Path, title: str):
    with save_figure(path, title, 1, (6.5, 4.5)) as ax:
        for a in dict.fromkeys(r["attention"] for r in rows):
            mine = sorted((r for r in rows if r["attention"] == a), key=lambda r: r["state_bytes"])
            ax.plot([r["state_bytes"] for r in mine], [r["mean"] for r in mine], "o-", label=a)
            for r in mine:
                ax.annotate(f"d{r['width']}", (r["state_bytes"], r["mean"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("decode state at the longest test length (bytes, batch 1)")
        ax.set_ylabel("MQAR accuracy, mean over the test segments")
        ax.grid(alpha=0.3)
        ax.legend()


def run(c, workdir: str) -> list[dict]:
    workdir = pathlib.Path(workdir).expanduser()
    todo = points(c)
    segments = _segments(c, "test_segments")
    names = [f"{n}:{k}" for n, k in segments]
    longest = max(n for n, _ in segments)
    t0 = time.perf_counter()
    results = []
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
        state, params = state_and_params(c, p, longest)
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
        f"{c.test_examples} test examples per segment; state at {longest} tokens"
    )
    if jax.process_index() == 0:
        flat = [{**{k: v for k, v in r.items() if k != "accuracy"}, **r["accuracy"]} for r in rows]
        fields = ("attention", "width", "lr", *names, "mean", "state_bytes", "params")
        write_csv(workdir / "recall.csv", flat, fields)
        plot(rows, workdir / "recall.png", header)
        print(f"\n{header}\n\n{table(rows, names)}\n")
        print(
            f"wrote {workdir / 'recall.csv'} and {workdir / 'recall.png'} "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    return rows
