"""Linear vs softmax attention on recall (MQAR) and language modelling, one table at the end.

Every (attention, width, learning rate) point is an ordinary training run of `research.train.loop`
in its own sub-directory of the workdir, so an interrupted sweep resumes where it stopped and a
finished point is never recomputed. For each (attention, width) the table reports the best MQAR
eval accuracy over the learning rates (Zoology, Arora et al. 2023, sweeps learning rates the same
way), the LM eval loss and perplexity, train tokens/s, the decode latency per token after 1k and
8k tokens of context (`decode_contexts`), the bytes of the decode state after a prompt of the
MQAR length (the KV cache for softmax at that context, the
recurrent d_k x d_v state for linear and the gated / delta kinds, conv windows included),
measured from the cache the model actually builds, and the parameter count. The kinds differ at
one width; `equal_params` widens each kind's MLP (d_ff) until its count matches the largest kind's
at that width, so they are compared at equal parameters too, not only equal width.
"""

import copy
import dataclasses
import functools
import math
import pathlib
import time

import jax
import numpy as np
from flax import nnx

from research.config import as_list
from research.experiments import sweep
from research.experiments.model_cost import (
    decode_state_bytes,
    equal_param_mlp_widths,
    parameter_count,
    seconds_per_token,
)
from research.models import DecoderLM
from research.models.config import ATTENTION_NAMES, attention_overrides
from research.ops.checks import is_positive_int
from research.report import (
    format_table,
    machine_header,
    plural,
    save_figure,
    usable_cpus,
    write_csv,
)
from research.train.config import ConfigError, parse

# Keys point_config sets for every point (research.main refuses overrides of them).
SWEPT = {
    "*.model.attention": "use --config.attentions",
    # set for the feature-map kinds, unread by the others
    "*.model.feature_map": "use --config.attentions (a feature map is a kind: elu, taylor, ..)",
    "*.model.d_model": "use --config.widths",
    "*.model.d_ff": "it is 4 x width, or matched parameters with --config.equal_params=True",
    "mqar.optimizer.learning_rate": "use --config.learning_rates or learning_rates_by_attention",
}
FIELDS = (
    "attention",
    "width",
    "d_ff",
    "mqar_accuracy",
    "mqar_best_lr",
    "lm_loss",
    "lm_perplexity",
    "train_tokens_per_s",
    "state_bytes",
    "params",
)


@dataclasses.dataclass
class Point:
    task: str  # mqar | lm
    attention: str
    width: int
    lr: float
    d_ff: int = 0  # the MLP's hidden width; 0: 4 x width

    @property
    def name(self) -> str:
        tail = f"_ff{self.d_ff}" if self.d_ff else ""
        return f"{self.task}_{self.attention}_d{self.width}_lr{self.lr:g}{tail}"


def point_config(c, p: Point):
    """The training config of one point: the task's config with width, attention and lr set."""
    base = copy.deepcopy(c[p.task])
    base.unlock()
    if c.get("data_dir"):  # one override for both tasks' datasets and tokenizers
        base.data.data_dir = c.data_dir
    d_ff = p.d_ff or 4 * p.width
    base.model.update(d_model=p.width, d_ff=d_ff, **attention_overrides(p.attention))
    base.optimizer.learning_rate = p.lr
    return base


def learning_rates(c, attentions) -> dict[str, tuple[float, ...]]:
    """{attention: its learning rates}: c.learning_rates_by_attention's for the kinds it names,
    c.learning_rates for the others."""
    lrs = as_list(c.learning_rates, float, name="learning_rates", distinct=True)
    by = c.get("learning_rates_by_attention") or {}
    for a in by:
        if a not in ATTENTION_NAMES:
            raise ConfigError(
                f"learning_rates_by_attention: unknown {a!r}; allowed {', '.join(ATTENTION_NAMES)}"
            )
    return {
        a: as_list(by[a], float, name=f"learning_rates_by_attention.{a}", distinct=True)
        if a in by
        else lrs
        for a in attentions
    }


def attention_names(c) -> tuple[str, ...]:
    """c.attentions, each checked against ATTENTION_NAMES (one-line ConfigError)."""
    attentions = as_list(c.attentions, name="attentions", distinct=True)
    for a in attentions:
        if a not in ATTENTION_NAMES:
            raise ConfigError(f"attentions: unknown {a!r}; allowed {', '.join(ATTENTION_NAMES)}")
    return attentions


def mlp_widths(c, tasks, attentions, widths) -> dict[tuple[str, str, int], int]:
    """{(task, attention, width): d_ff, 0 for 4 x width}: with c.equal_params, the MLP widths that
    give every kind the largest kind's parameter count at that width on that task's model
    (equal_param_mlp_widths)."""
    out = {(t, a, w): 0 for t in tasks for a in attentions for w in widths}
    if not c.get("equal_params", False):
        return out
    for t in tasks:
        for w in widths:
            ff = equal_param_mlp_widths(functools.partial(_params, c, t, w), attentions, w)
            out.update({(t, a, w): 0 if d == 4 * w else d for a, d in ff.items()})
    return out


def _params(c, task: str, width: int, attention: str, d_ff: int) -> int:
    p = Point(task, attention, width, 1e-3, d_ff)
    return parameter_count(_model(c, p, c[task].data.seq_len))


def points(c) -> list[Point]:
    attentions = attention_names(c)
    widths = as_list(c.widths, int, name="widths", distinct=True)
    tasks = as_list(c.tasks, name="tasks", distinct=True)
    if bad := [t for t in tasks if t not in ("mqar", "lm")]:
        raise ConfigError(f"tasks: unknown {bad[0]!r}; allowed mqar, lm or both")
    if not is_positive_int(c.decode_tokens):
        raise ConfigError(f"decode_tokens={c.decode_tokens!r}: must be a positive int")
    for n in as_list(c.decode_contexts, int, name="decode_contexts", distinct=True):
        if not is_positive_int(n):
            raise ConfigError(f"decode_contexts: {n!r} is not a positive int (context tokens)")
    rates, ff = learning_rates(c, attentions), mlp_widths(c, tasks, attentions, widths)
    out = []
    if "mqar" in tasks:
        pairs = [(a, w) for a in attentions for w in widths]
        out += [Point("mqar", a, w, lr, ff["mqar", a, w]) for a, w in pairs for lr in rates[a]]
    if "lm" in tasks:
        lr = c.lm.optimizer.learning_rate
        out += [Point("lm", a, w, lr, ff["lm", a, w]) for a in attentions for w in widths]
    for p in out:  # every mistake is reported before the first run starts
        pc = point_config(c, p)
        try:
            parse(pc)
        except ConfigError as e:
            raise ConfigError(f"{p.name}: {e}") from None
    return out


def run_point(c, p: Point, workdir: pathlib.Path) -> dict:
    return sweep.train_point(point_config(c, p), workdir / "runs" / p.name, dataclasses.asdict(p))


def _model(c, p: Point, length: int, *, shapes_only: bool = True) -> DecoderLM:
    """p's model with room for `length` tokens: weights only as shapes unless shapes_only=False."""
    pc = point_config(c, p)
    mcfg = parse(pc).model.replace(vocab_size=pc.data.vocab_size, max_length=length)
    if shapes_only:
        return nnx.eval_shape(lambda: DecoderLM(mcfg, rngs=nnx.Rngs(0)))
    return DecoderLM(mcfg, rngs=nnx.Rngs(0))


def state_and_params(c, attention: str, width: int, d_ff: int = 0) -> tuple[int, int]:
    """(decode-state bytes for a prompt of MQAR length and c.decode_tokens more, batch 1;
    parameters) of the MQAR model, embeddings included."""
    length = c.mqar.data.seq_len + c.decode_tokens
    model = _model(c, Point("mqar", attention, width, 1e-3, d_ff), length, shapes_only=False)
    return decode_state_bytes(model, length), parameter_count(model)


def decode_latency(c, attention: str, width: int, d_ff: int = 0) -> dict[int, float]:
    """{context: seconds per decoded token} of the LM's model (random weights: the time does not
    depend on them) for each of c.decode_contexts."""
    pc = point_config(c, Point("lm", attention, width, 1e-3, d_ff))
    cfg = parse(pc).model.replace(vocab_size=pc.data.vocab_size)
    out = {}
    for n in as_list(c.decode_contexts, int, name="decode_contexts", distinct=True):
        mcfg = cfg.replace(max_length=n + c.decode_tokens)
        out[n] = seconds_per_token(DecoderLM(mcfg, rngs=nnx.Rngs(0)), n, c.decode_tokens)
    return out


def summarize(c, results: list[dict], decode: dict, latency: dict) -> list[dict]:
    """One row per (attention, width). decode[a, w] = (state bytes, params); latency[a, w] =
    {context: seconds per decoded token}."""
    rows = []
    for a in as_list(c.attentions, name="attentions", distinct=True):
        for w in as_list(c.widths, int, name="widths", distinct=True):
            mine = [r for r in results if r["point"]["attention"] == a and r["point"]["width"] == w]
            mqar = [r for r in mine if r["point"]["task"] == "mqar"]
            lm = [r for r in mine if r["point"]["task"] == "lm"]
            # NaN (diverged) ranks below every finite accuracy.
            best = max(
                mqar, key=lambda r: np.nan_to_num(r["eval"]["accuracy"], nan=-1.0), default=None
            )
            # None = that task was not run; NaN stays reserved for a diverged run.
            lm_loss = lm[0]["eval"]["loss"] if lm else None
            speed_of = best or lm[0]  # the MQAR point's throughput, else the LM's
            rows.append(
                {
                    "attention": a,
                    "width": w,
                    "d_ff": (mine[0]["point"].get("d_ff") if mine else 0) or 4 * w,
                    "mqar_accuracy": best and best["eval"]["accuracy"],
                    "mqar_best_lr": best and best["point"]["lr"],
                    "lm_loss": lm_loss,
                    "lm_perplexity": None if lm_loss is None else math.exp(lm_loss),
                    "train_tokens_per_s": speed_of["tokens_per_second"],
                    **{f"decode_ms_{n}": 1e3 * t for n, t in sorted(latency[a, w].items())},
                    "state_bytes": decode[a, w][0],
                    "params": decode[a, w][1],
                }
            )
    return rows


def _cell(key: str, spec: str):
    """'-' when that task was not run (None); NaN stays reserved for a diverged run."""
    return lambda r: "-" if r[key] is None else format(r[key], spec)


def _contexts(rows: list[dict]) -> list[int]:
    return [int(k.removeprefix("decode_ms_")) for k in rows[0] if k.startswith("decode_ms_")]


def _short(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def fields(rows: list[dict]) -> tuple[str, ...]:
    """The CSV's columns: FIELDS with one decode_ms_{context} column per decode context."""
    i = FIELDS.index("state_bytes")
    return (*FIELDS[:i], *(f"decode_ms_{n}" for n in _contexts(rows)), *FIELDS[i:])


def table(rows: list[dict]) -> str:
    ctx = _contexts(rows)
    columns = (
        "attention",
        "width",
        "d_ff",
        "MQAR acc",
        "best lr",
        "LM loss",
        "LM ppl",
        "train tok/s",
        *(f"decode ms/tok @{_short(n)}" for n in ctx),
        "state bytes",
        "params",
    )
    formats = (
        "{attention}",
        "{width}",
        "{d_ff}",
        _cell("mqar_accuracy", ".3f"),
        _cell("mqar_best_lr", "g"),
        _cell("lm_loss", ".3f"),
        _cell("lm_perplexity", ".1f"),
        "{train_tokens_per_s:,.0f}",
        *(f"{{decode_ms_{n}:.3f}}" for n in ctx),
        "{state_bytes:,}",
        "{params:,}",
    )
    return format_table(rows, columns, formats)


def plot(rows: list[dict], path: pathlib.Path, title: str):
    """MQAR accuracy and LM perplexity against width, and decode latency against context."""
    ctx = _contexts(rows)
    with save_figure(path, title, 3, (15, 4)) as axes:
        for a in dict.fromkeys(r["attention"] for r in rows):
            mine = [r for r in rows if r["attention"] == a]
            widths = [r["width"] for r in mine]
            for ax, key in zip(axes, ("mqar_accuracy", "lm_perplexity"), strict=False):
                if mine[0][key] is not None:
                    ax.plot(widths, [r[key] for r in mine], marker="o", label=a)
            if ctx:  # one line per attention (the widest model): the panel stays legible
                r = max(mine, key=lambda r: r["width"])
                axes[2].plot(ctx, [r[f"decode_ms_{n}"] for n in ctx], marker="o", label=a)
        for ax, key, task in ((axes[0], "mqar_accuracy", "MQAR"), (axes[1], "lm_perplexity", "LM")):
            if rows[0][key] is None:
                ax.text(0.5, 0.5, f"{task} not run (tasks)", ha="center", transform=ax.transAxes)
        labels = ("MQAR eval accuracy (fraction, best lr)", "LM eval perplexity" + _spread(rows))
        for ax, label in zip(axes, labels, strict=False):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("model width (d_model)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0].set_ylim(0, 1.02)
        (axes[0] if rows[0]["mqar_accuracy"] is not None else axes[1]).legend()
        if ctx:
            axes[2].set_xscale("log", base=2)
            axes[2].set_yscale("log")
            axes[2].legend(fontsize=7)
        else:
            axes[2].text(
                0.5, 0.5, "decode latency not measured", ha="center", transform=axes[2].transAxes
            )
        axes[2].set_xlabel("context before the decoded token (tokens)")
        widest = max(r["width"] for r in rows)
        axes[2].set_ylabel(f"decode latency, d_model {widest}\n(ms per token, batch 1)")
        axes[2].grid(alpha=0.3)


def _spread(rows) -> str:
    """How far apart the attentions' perplexities are at a width, in words: matplotlib zooms in
    on tiny differences (a 0.03% spread once looked large), so the label says how large."""
    ratios = []
    for w in {r["width"] for r in rows}:
        ppl = [r["lm_perplexity"] for r in rows if r["width"] == w and r["lm_perplexity"]]
        if len(ppl) > 1 and all(math.isfinite(p) for p in ppl):
            ratios.append(max(ppl) / min(ppl) - 1)
    return f"\n(attentions within {max(ratios):.2%} at each width)" if ratios else ""


def decode_caveat(backend: str, cores: int) -> str:
    """The line after the table where XLA's CPU threads make decode times vary (taskset: Linux)."""
    if backend != "cpu" or cores < 2:
        return ""
    return (
        f"decode ms/tok on {cores} CPU cores can vary between runs (XLA's threads; about 5x on 2 "
        "cores): rerun under `taskset -c 0` with the same flags and workdir to re-measure only "
        "the decode columns, on one core (docs/linear_vs_softmax.md)"
    )


def run(c, workdir: str) -> list[dict]:
    workdir = pathlib.Path(workdir).expanduser()
    todo = points(c)
    t0 = time.perf_counter()
    results = []
    for i, p in enumerate(todo, 1):
        if jax.process_index() == 0:
            print(
                f"[{i}/{len(todo)}] {p.name} ({time.perf_counter() - t0:.0f} s so far)", flush=True
            )
        results.append(run_point(c, p, workdir))
    widths = as_list(c.widths, int, name="widths", distinct=True)
    attentions = as_list(c.attentions, name="attentions", distinct=True)
    # Both models' MLP widths whichever tasks ran: the state is the MQAR model's, latency the LM's.
    ff = mlp_widths(c, ("mqar", "lm"), attentions, widths)
    pairs = [(a, w) for a in attentions for w in widths]
    decode = {(a, w): state_and_params(c, a, w, ff["mqar", a, w]) for a, w in pairs}
    latency = {(a, w): decode_latency(c, a, w, ff["lm", a, w]) for a, w in pairs}
    rows = summarize(c, results, decode, latency)
    m, lm, tasks = c.mqar.data, c.lm, as_list(c.tasks, name="tasks", distinct=True)
    mqar_part = (
        f"MQAR seq_len {m.seq_len}, {m.num_kv_pairs} kv pairs, vocab {m.vocab_size}, "
        f"{c.mqar.num_train_steps} steps x batch {c.mqar.batch_size}; "
        if "mqar" in tasks
        else ""
    )
    lm_part = (
        f"LM {lm.data.source} seq_len {lm.data.seq_len}, {lm.num_train_steps} steps; "
        if "lm" in tasks
        else ""
    )
    shape = f"{plural(c.mqar.model.num_layers, 'layer')}, {plural(c.mqar.model.num_heads, 'head')}"
    shape += ", MLP widths (d_ff) set for equal parameters" if c.get("equal_params") else ""
    header = (
        f"{machine_header()}\n{mqar_part}{lm_part}{shape}; decode: the LM model, batch 1, "
        f"{c.decode_tokens} greedy tokens timed after each context; state bytes after {m.seq_len} "
        f"+ {c.decode_tokens} tokens (the MQAR prompt, then the decoded tokens)"
    )
    if jax.process_index() == 0:
        write_csv(workdir / "compare.csv", rows, fields(rows))
        plot(rows, workdir / "compare.png", header)
        caveat = decode_caveat(jax.default_backend(), usable_cpus())
        print(f"\n{header}\n\n{table(rows)}\n" + (f"{caveat}\n" if caveat else ""))
        print(
            f"wrote {workdir / 'compare.csv'} and {workdir / 'compare.png'} "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    return rows
