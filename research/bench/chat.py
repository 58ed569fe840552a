"""Per-turn chat latency against history length: the cache kept between turns (softmax: keys
and values; linear: the O(1) recurrent state) against re-encoding the whole history each turn.

    python -m research.bench.chat [--turns 1,2,4,8,16,32,64 --turn_tokens 16 --d_model 256
                                   --layers 4 --heads 4 --vocab 8000 --repeats 3 --out DIR]

A turn = a user turn of `turn_tokens` tokens + [SEP], then a reply of `turn_tokens` tokens +
[SEP], fed through `research.sampling.ChatSession` (fixed token ids: a turn's cost does not
depend on which tokens; each reply step still samples and reads its token back to the host, as
a real chat does). History H = H earlier turns (user and bot alternating) already in the
conversation. The model is configs/chat.py's default architecture with random weights. Modes:
  kept      the session's cache (a buffer of --max_context positions for softmax) carries over;
  re-encode the history is prefilled from scratch every turn (what a chat without a cache does).
Each figure is the median of `repeats` timed turns after one untimed turn of the same shapes (so
no compile is timed). Writes chat_latency.csv and chat_latency.png to --out.
"""

import argparse
import pathlib
import time
import types

import jax
import numpy as np
from flax import nnx

from research.cli import int_at_least, out_dir, positive_int
from research.models import DecoderLM, ModelConfig
from research.report import format_table, machine_header, plural, save_figure, write_csv
from research.sampling import ChatSession

ATTENTIONS = {
    "softmax": {"attention": "softmax"},
    "linear": {"attention": "linear", "feature_map": "elu"},
}


def _session(args, attention: str) -> ChatSession:
    model = DecoderLM(_config(args, attention), rngs=nnx.Rngs(0))
    ids = types.SimpleNamespace(cls_id=2, sep_id=3, pad_id=0)  # no text: ids are given
    return ChatSession(model, ids, max_context=args.max_context, max_tokens=args.turn_tokens)


def _config(args, attention: str) -> ModelConfig:
    return ModelConfig(
        vocab_size=args.vocab,
        d_model=args.d_model,
        num_heads=args.heads,
        num_layers=args.layers,
        d_ff=4 * args.d_model,
        max_length=args.max_context,
        positions="rotary",
        num_segments=2,
        **ATTENTIONS[attention],
    )


def _state(session: ChatSession) -> tuple:
    return (
        list(session.turns),
        session.dropped,
        session.cache,
        session.logits,
        session.length,
        session.prefills,
    )


def _restore(session: ChatSession, state: tuple) -> None:
    (
        session.turns,
        session.dropped,
        session.cache,
        session.logits,
        session.length,
        session.prefills,
    ) = (list(state[0]), *state[1:])


def time_turn(
    session: ChatSession, user, reply, *, repeats: int, reencode: bool
) -> tuple[float, int]:
    """(median seconds, prefills per turn) of one user turn + reply from the session's current
    history; the session is left as it was."""
    saved = _state(session)
    times = []
    for _ in range(repeats + 1):  # the first compiles (new shapes), untimed
        _restore(session, saved)
        if reencode:
            session.cache = None
        t0 = time.perf_counter()
        session.user_turn(user)
        session.bot_turn(forced=reply)
        jax.block_until_ready(session.logits)
        times.append(time.perf_counter() - t0)
    prefills = session.prefills - saved[5]
    _restore(session, saved)
    return float(np.median(times[1:])), prefills


def run(args) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for attention in ATTENTIONS:
        session = _session(args, attention)
        done = 0
        for h in args.turns:
            while done < h:  # grow the history to h turns, alternating speakers
                ids = rng.integers(5, args.vocab, args.turn_tokens).tolist()
                if done % 2 == 0:
                    session.user_turn(ids)
                else:
                    session.bot_turn(forced=ids)
                done += 1
            user = rng.integers(5, args.vocab, args.turn_tokens).tolist()
            reply = rng.integers(5, args.vocab, args.turn_tokens).tolist()
            row = {"attention": attention, "history_turns": h, "history_tokens": session.length}
            for mode in ("kept", "reencode"):
                seconds, prefills = time_turn(
                    session, user, reply, repeats=args.repeats, reencode=mode == "reencode"
                )
                row[f"{mode}_ms"], row[f"{mode}_prefills"] = 1e3 * seconds, prefills
            if row["kept_prefills"]:  # the buffer was too small: the point would be a re-encode
                raise RuntimeError(f"history {h}: the kept cache was rebuilt; raise --max_context")
            rows.append(row)
            print(
                f"{attention} history {plural(h, 'turn')} ({row['history_tokens']} tokens): kept "
                f"{row['kept_ms']:.1f} ms, re-encode {row['reencode_ms']:.1f} ms",
                flush=True,
            )
    return rows


def plot(rows, path, title):
    with save_figure(path, title, 1, (6.5, 4.2), 7) as ax:
        for attention in ATTENTIONS:
            mine = [r for r in rows if r["attention"] == attention]
            x = [r["history_turns"] for r in mine]
            ax.plot(x, [r["kept_ms"] for r in mine], "o-", label=f"{attention}, cache kept")
            ax.plot(x, [r["reencode_ms"] for r in mine], "s--", label=f"{attention}, re-encode")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("history (turns)")
        ax.set_ylabel("latency of one turn + reply (ms, median)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", default="1,2,4,8,16,32,64", help="history lengths (turns)")
    p.add_argument("--turn_tokens", type=positive_int, default=16)
    p.add_argument("--d_model", type=positive_int, default=256)
    p.add_argument("--layers", type=positive_int, default=4)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--vocab", type=int_at_least(6), default=8000, help="ids 0-4 are specials")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument(
        "--max_context",
        type=int,
        default=0,
        help="cache buffer in tokens (0: room for the longest history + 2 turns)",
    )
    p.add_argument("--out", type=out_dir, default="", help="directory for chat_latency.csv / .png")
    args = p.parse_args(argv)
    try:
        args.turns = sorted({int(t) for t in args.turns.split(",")})
    except ValueError:
        p.error(f"--turns {args.turns!r}: a comma-separated list of ints")
    if args.turns[0] < 1:
        p.error(f"--turns {args.turns}: history lengths must be >= 1")
    need = (args.turns[-1] + 2) * (args.turn_tokens + 1) + 1
    args.max_context = args.max_context or need
    if args.max_context < need:
        p.error(f"--max_context {args.max_context}: the longest history needs {need}")
    for attention in ATTENTIONS:  # the model's own checks (d_model divisible by heads), first
        try:
            _config(args, attention)
        except ValueError as e:
            p.error(str(e))
    rows = run(args)
    title = (
        f"{machine_header()}\nDecoderLM {args.layers}L d{args.d_model} h{args.heads} vocab "
        f"{args.vocab}, turns of {args.turn_tokens} tokens, cache buffer {args.max_context}"
    )
    print(f"\n{title}\n")
    print(
        format_table(
            rows,
            [
                "attention",
                "history turns",
                "history tokens",
                "cache kept ms",
                "re-encode ms",
                "re-encode / kept",
            ],
            [
                "{attention}",
                "{history_turns}",
                "{history_tokens}",
                "{kept_ms:.1f}",
                "{reencode_ms:.1f}",
                lambda r: f"{r['reencode_ms'] / r['kept_ms']:.2f}",
            ],
            align="lrrrrr",
        )
    )
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "chat_latency.csv", rows)
        plot(rows, out / "chat_latency.png", title)
        print(f"\nwrote {out / 'chat_latency.csv'} and chat_latency.png")
    return rows


if __name__ == "__main__":
    main()
