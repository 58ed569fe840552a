"""How many dimensions a word embedding needs (docs/research_notes.md section 7), tested on real
text.

The note's rule: a vocabulary of N words needs n > 8.33 ln N dimensions. Here a skip-gram-like
model, p(context j | center i) = softmax_j <u_i, v_j> (research.ops.embedding), is trained for
every (corpus, N, n) of the sweep on the top-N words of a corpus, and scored by its held-out
negative log-likelihood per (center, context) pair under the full softmax over all N words. The
needed dimension at N is the smallest n whose held-out NLL is within `tolerance` nats of the best
n at that N; it is plotted against 8.33 ln N.

Training: every point sees the same number of (center, context) pairs, drawn uniformly with
replacement from the train split's pairs; Adam with lazy (touched-rows-only) updates, because
dense Adam keeps moving a rare word's row for ~30 steps after its one gradient, which wrecked the
full-softmax likelihood of the rare words in a first try. N <= `full_softmax_max` trains on the
full softmax, larger N on a sampled softmax (`negatives` words per batch from the context
unigram^0.75, logQ-corrected). Each point is cached as points/NAME.json and skipped when the
sweep is rerun (resume), so an interrupted sweep loses at most one point.
"""

import functools
import json
import math
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from research.config import ConfigError, as_list, seed_list
from research.data import words
from research.ops import embedding
from research.report import (
    format_table,
    machine_header,
    mean_std,
    save_figure,
    seed_stats,
    write_csv,
)

NOTE_CONSTANT = embedding.APPROX_CONSTANT  # 8.33


def lazy_adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """(init, update) of Adam whose moments and parameters change only in rows whose gradient
    is non-zero this step (TensorFlow's LazyAdam); bias correction uses the global step."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return {"m": zeros, "v": zeros, "t": jnp.zeros((), jnp.int32)}

    def update(grads, state, params):
        t = state["t"] + 1
        c1, c2 = 1 - b1 ** t.astype(jnp.float32), 1 - b2 ** t.astype(jnp.float32)

        def one(p, g, m, v):
            touched = jnp.any(g != 0, axis=1, keepdims=True)
            m = jnp.where(touched, b1 * m + (1 - b1) * g, m)
            v = jnp.where(touched, b2 * v + (1 - b2) * g * g, v)
            step = lr * (m / c1) / (jnp.sqrt(v / c2) + eps)
            return jnp.where(touched, p - step, p), m, v

        out = {k: one(params[k], grads[k], state["m"][k], state["v"][k]) for k in params}
        new = {k: o[0] for k, o in out.items()}
        return new, {
            "m": {k: o[1] for k, o in out.items()},
            "v": {k: o[2] for k, o in out.items()},
            "t": t,
        }

    return init, update


def train_skipgram(
    train_pairs: np.ndarray,
    eval_pairs: np.ndarray,
    *,
    vocab_size: int,
    dim: int,
    num_pairs: int,
    batch_size: int,
    learning_rate: float,
    negatives: int = 0,
    seed: int = 0,
    chunk: int = 100,
    eval_batch: int = 2048,
) -> dict:
    """Train u, v [vocab_size, dim] on `num_pairs` pairs drawn from `train_pairs` ([P, 2] int,
    indices < vocab_size) and return the held-out NLL on `eval_pairs` (full softmax, nats per
    pair). negatives=0: full softmax; > 0: sampled softmax with that many shared negatives.
    u ~ N(0, 1/dim), v = 0 (word2vec's start: every context equally likely)."""
    n, steps = vocab_size, max(1, math.ceil(num_pairs / batch_size))
    chunk = min(chunk, steps)
    steps = math.ceil(steps / chunk) * chunk
    counts = np.bincount(train_pairs[:, 1], minlength=n).astype(np.float64) + 1e-3
    q = counts**0.75 / np.sum(counts**0.75)
    log_q, cdf = jnp.asarray(np.log(q), jnp.float32), jnp.asarray(np.cumsum(q), jnp.float32)
    data = jnp.asarray(train_pairs, jnp.int32)
    key_init, key_train = jax.random.split(jax.random.key(seed))
    params = {"u": jax.random.normal(key_init, (n, dim)) / math.sqrt(dim), "v": jnp.zeros((n, dim))}
    opt_init, opt_update = lazy_adam(learning_rate)
    state = opt_init(params)

    def loss_fn(p, centers, contexts, key):
        if negatives <= 0:
            return embedding.skipgram_loss(p["u"], p["v"], centers, contexts)
        draws = jnp.searchsorted(cdf, jax.random.uniform(key, (negatives,)))
        draws = jnp.minimum(draws, n - 1)  # cdf[-1] may round below 1
        return embedding.sampled_skipgram_loss(p["u"], p["v"], centers, contexts, draws, log_q)

    @jax.jit
    def train_chunk(params, state, key):
        def body(carry, k):
            params, state = carry
            k_batch, k_neg = jax.random.split(k)
            batch = data[jax.random.randint(k_batch, (batch_size,), 0, data.shape[0])]
            loss, grads = jax.value_and_grad(loss_fn)(params, batch[:, 0], batch[:, 1], k_neg)
            return opt_update(grads, state, params), loss

        (params, state), losses = jax.lax.scan(body, (params, state), jax.random.split(key, chunk))
        return params, state, jnp.mean(losses)

    @jax.jit
    def eval_sum(params, pairs):
        logp = embedding.skipgram_log_probs(params["u"], params["v"], pairs[:, 0])
        return -jnp.sum(jnp.take_along_axis(logp, pairs[:, 1:], axis=1))

    t0 = time.perf_counter()
    loss = math.nan
    for i in range(steps // chunk):
        params, state, loss = train_chunk(params, state, jax.random.fold_in(key_train, i))
    loss = float(loss)
    seconds = time.perf_counter() - t0
    total = sum(
        float(eval_sum(params, jnp.asarray(eval_pairs[i : i + eval_batch])))
        for i in range(0, len(eval_pairs), eval_batch)
    )
    return {
        "eval_nll": total / len(eval_pairs),
        "train_loss": loss,
        "steps": steps,
        "train_seconds": seconds,
    }


def needed_dim(nll_by_dim: dict[int, float], tolerance: float) -> int:
    """The smallest n whose NLL is within `tolerance` of the best (lowest) NLL over n."""
    finite = {d: x for d, x in nll_by_dim.items() if math.isfinite(x)}
    if not finite:
        raise ValueError("no finite NLL to choose a dimension from")
    best = min(finite.values())
    return min(d for d, x in finite.items() if x <= best + tolerance)


def _point_config(c, corpus: str, vocab_size: int, dim: int, seed: int) -> dict:
    return {
        "corpus": corpus,
        "vocab_size": vocab_size,
        "dim": dim,
        "seed": seed,
        "window": c.window,
        "num_pairs": c.num_pairs,
        "batch_size": c.batch_size,
        "learning_rate": c.learning_rate,
        "negatives": _negatives(c, vocab_size),
        "eval_pairs": c.eval_pairs,
        "max_train_sentences": c.max_train_sentences,
    }


def _negatives(c, vocab_size: int) -> int:
    return 0 if vocab_size <= c.full_softmax_max else c.negatives


def _check(c) -> None:
    for key in ("num_pairs", "batch_size", "eval_pairs", "window", "negatives"):
        if not isinstance(c[key], int) or isinstance(c[key], bool) or c[key] < 1:
            raise ConfigError(f"{key}={c[key]!r}: must be an int >= 1")
    if not c.learning_rate > 0 or not c.tolerance >= 0:
        raise ConfigError(
            f"learning_rate={c.learning_rate!r} must be > 0 and tolerance={c.tolerance!r} >= 0"
        )


@functools.cache
def _corpus(corpus: str, window: int, max_train_sentences: int):
    splits = words.word_splits(corpus)
    train = splits["train"][:max_train_sentences] if max_train_sentences else splits["train"]
    vocab = words.top_words(train, 0)  # ranked, so top-N pairs are the pairs with ids < N
    held_out = splits["validation"] + splits["test"]
    return (
        vocab,
        words.skipgram_pairs(train, vocab, window),
        words.skipgram_pairs(held_out, vocab, window),
    )


def run(c, workdir: str) -> list[dict]:
    workdir = pathlib.Path(workdir).expanduser()
    corpora = as_list(c.corpora, str, name="corpora", distinct=True)
    for name in corpora:
        if name not in words.CORPORA:
            raise ConfigError(f"corpora: {name!r} unknown; allowed: {', '.join(words.CORPORA)}")
    sizes = as_list(c.vocab_sizes, int, name="vocab_sizes", distinct=True)
    dims = sorted(as_list(c.dims, int, name="dims", distinct=True))
    seeds = seed_list(c.seeds)
    if min(sizes) < 0 or min(dims) < 1:
        raise ConfigError(f"vocab_sizes {sizes} must be >= 0 (0 = all) and dims {dims} >= 1")
    _check(c)
    t0 = time.perf_counter()
    main = jax.process_index() == 0  # in a multi-process run one process writes
    (workdir / "points").mkdir(parents=True, exist_ok=True)
    results = []
    for corpus in corpora:
        vocab, train_all, held_all = _corpus(corpus, c.window, c.max_train_sentences)
        for size in dict.fromkeys(min(s, len(vocab)) if s else len(vocab) for s in sizes):
            train = train_all[(train_all < size).all(axis=1)]
            held = held_all[(held_all < size).all(axis=1)]
            held = held[np.random.default_rng(0).permutation(len(held))[: c.eval_pairs]]
            counts = np.bincount(train[:, 1], minlength=size) + 1.0  # add-one: no log 0
            unigram = float(-np.mean(np.log(counts[held[:, 1]] / counts.sum())))
            for seed in seeds:
                for dim in dims:
                    pc = _point_config(c, corpus, size, dim, seed)
                    path = workdir / "points" / f"{corpus}_N{size}_n{dim}_seed{seed}.json"
                    reused = path.exists()
                    if reused:
                        saved = json.loads(path.read_text())
                        if saved["config"] != pc:
                            raise ConfigError(
                                f"{path} holds a point with a different config; use a new --workdir"
                            )
                        r = saved["result"]
                    else:
                        r = train_skipgram(
                            train,
                            held,
                            vocab_size=size,
                            dim=dim,
                            num_pairs=c.num_pairs,
                            batch_size=c.batch_size,
                            learning_rate=c.learning_rate,
                            negatives=pc["negatives"],
                            seed=seed,
                        )
                        r.update(unigram_nll=unigram, train_pairs=len(train), eval_pairs=len(held))
                        if main:  # atomic: a killed sweep leaves no half point
                            tmp = path.with_suffix(f".tmp{os.getpid()}")
                            tmp.write_text(json.dumps({"config": pc, "result": r}, indent=1))
                            tmp.replace(path)
                    took = f"{r['train_seconds']:.1f} s"
                    if reused:
                        took = f"reused from {path} (trained in {took})"
                    print(
                        f"[embedding_dim {time.perf_counter() - t0:4.0f} s] {corpus} N={size:,} "
                        f"n={dim} seed {seed}: held-out NLL {r['eval_nll']:.4f} (unigram "
                        f"{r['unigram_nll']:.4f}), {took}",
                        flush=True,
                    )
                    results.append({**pc, **r})
    rows = summarize(results, c.tolerance)
    header = (
        f"{machine_header()}\nskip-gram p(j|i) = softmax <u_i, v_j>, window {c.window}, "
        f"{c.num_pairs:,} train pairs per point (batch {c.batch_size}), held-out NLL on "
        f"{c.eval_pairs:,} pairs, tolerance {c.tolerance} nats, seeds {list(seeds)}"
    )
    if main:
        write_csv(workdir / "embedding_dim_points.csv", results)
        write_csv(workdir / "embedding_dim.csv", rows)
        plot(results, rows, workdir / "embedding_dim.png", header)
        print(
            f"\n{header}\n\n{table(rows)}\n\nwrote {workdir / 'embedding_dim.csv'}, "
            f"embedding_dim_points.csv and embedding_dim.png ({time.perf_counter() - t0:.0f} s)"
        )
    return rows


def summarize(results: list[dict], tolerance: float) -> list[dict]:
    """One row per (corpus, N): NLL by n (mean over seeds), the best n, the needed n and the
    note's 8.33 ln N."""
    rows = []
    for corpus, size in dict.fromkeys((r["corpus"], r["vocab_size"]) for r in results):
        mine = [r for r in results if r["corpus"] == corpus and r["vocab_size"] == size]
        by_dim = {}
        for r in mine:
            by_dim.setdefault(r["dim"], []).append(r["eval_nll"])
        mean = {d: float(np.mean(v)) for d, v in by_dim.items()}
        std = {d: seed_stats(v)[1] for d, v in by_dim.items()}
        # a diverged dim (NaN) is never the best; min() kept a NaN that came first. Every dim
        # diverged: a row of NaN (it raised after the whole sweep, writing nothing)
        finite = [d for d in mean if np.isfinite(mean[d])]
        best = min(finite, key=mean.get) if finite else min(mean)
        rows.append(
            {
                "corpus": corpus,
                "vocab_size": size,
                "train_pairs": mine[0]["train_pairs"],
                "unigram_nll": mine[0]["unigram_nll"],
                "best_dim": best,
                "best_nll": mean[best],
                "best_nll_std": std[best],
                "best_nll_seeds": len(by_dim[best]),
                "needed_dim": needed_dim(mean, tolerance) if finite else math.nan,
                "rule_dim": NOTE_CONSTANT * math.log(size),
                "nll_by_dim": " ".join(f"{d}:{mean[d]:.4f}" for d in sorted(mean)),
            }
        )
    return rows


def table(rows) -> str:
    return format_table(
        rows,
        [
            "corpus",
            "N",
            "train pairs",
            "unigram NLL",
            "best n",
            "best NLL",
            "needed n",
            "8.33 ln N",
        ],
        [
            "{corpus}",
            "{vocab_size:,}",
            "{train_pairs:,}",
            "{unigram_nll:.4f}",
            "{best_dim}",
            lambda r: mean_std(r["best_nll"], r["best_nll_std"], r["best_nll_seeds"], ".4f"),
            "{needed_dim}",
            "{rule_dim:.0f}",
        ],
        align="lrrrrrrr",
    )


def plot(results, rows, path, title):
    corpora = list(dict.fromkeys(r["corpus"] for r in rows))
    with save_figure(path, title, len(corpora) + 1, (5 * (len(corpora) + 1), 4.2), 7) as axes:
        axes = np.atleast_1d(axes)
        for ax, corpus in zip(axes, corpora, strict=False):
            for row in (r for r in rows if r["corpus"] == corpus):
                pts = sorted(
                    (r["dim"], r["eval_nll"])
                    for r in results
                    if r["corpus"] == corpus and r["vocab_size"] == row["vocab_size"]
                )
                dims = sorted(dict.fromkeys(d for d, _ in pts))
                nll = [np.mean([x for d2, x in pts if d2 == d]) for d in dims]
                line = ax.plot(
                    dims,
                    np.array(nll) - row["unigram_nll"],
                    "o-",
                    ms=3,
                    label=f"N={row['vocab_size']:,}",
                )[0]
                ax.axvline(row["rule_dim"], color=line.get_color(), ls=":", lw=1)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("embedding dimension n (dotted: 8.33 ln N)")
            ax.set_ylabel("held-out NLL - unigram NLL (nats/pair)")
            ax.set_title(corpus, fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        ax = axes[-1]
        n_grid = np.geomspace(min(r["vocab_size"] for r in rows), 1e5, 50)
        ax.plot(n_grid, NOTE_CONSTANT * np.log(n_grid), "k--", label="8.33 ln N (the note)")
        for corpus in corpora:
            mine = [r for r in rows if r["corpus"] == corpus]
            ax.plot(
                [r["vocab_size"] for r in mine],
                [r["needed_dim"] for r in mine],
                "o-",
                label=f"{corpus}: needed n",
            )
        dims = sorted({r["dim"] for r in results})
        ax.set_xscale("log")
        ax.set_yscale("log", base=2)
        ax.set_ylim(dims[0] / 1.2, dims[-1] * 1.2)
        ax.set_yticks(dims, [str(d) for d in dims])
        ax.set_xlabel("vocabulary size N")
        ax.set_ylabel("dimension (ticks: the sweep's n)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
