"""Decode latency call by call: for each of repeated calls of one compiled greedy-decode loop, the
time per token, the process's CPU time and its voluntary context switches. It shows how far one
machine's decode figure moves between calls and why (docs/linear_vs_softmax.md, "Softmax's
decode figures on a 2-core CPU").

    python -m research.bench.decode [--attention softmax --context 8192 --tokens 64 --calls 20
                                     --d_model 64 --layers 2 --heads 2 --vocab 512 --out DIR]
    taskset -c 0 python -m research.bench.decode ...   # the same, pinned to one core (Linux)

The model has the default comparison's LM shape and attention names (configs/compare_attention.py:
rotary positions, a width-3 key convolution except for the delta-rule kinds, d_ff = 4 x d_model;
a feature map such as taylor is causal linear attention) and random weights: the time does not
depend on them. CPU time and context switches are the whole process's, every thread included
(getrusage: Unix only).
"""

import argparse
import pathlib
import resource
import statistics
import time

import jax
from flax import nnx

from research.bench.train import check_model, model_shape
from research.cli import out_dir, positive_int
from research.models import DecoderLM, ModelConfig
from research.models.config import ATTENTION_NAMES, attention_overrides
from research.report import (
    decode_program,
    format_table,
    machine_header,
    save_figure,
    write_csv,
)


def model_config(args) -> ModelConfig:
    return ModelConfig(
        **model_shape(args),
        max_length=args.context + args.tokens,
        positions="rotary",
        chunk_size=32,
        # The comparison's key convolution, which the delta kinds' overrides set to 0.
        **{"short_conv": 3, **attention_overrides(args.attention)},
    )


def run(args) -> list[dict]:
    """One row per timed call (after one untimed call that compiles and warms up)."""
    model = DecoderLM(model_config(args), rngs=nnx.Rngs(0))
    decode, inputs = decode_program(model, args.context, args.tokens)
    jax.block_until_ready(decode(*inputs))
    rows = []
    for call in range(1, args.calls + 1):
        before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        jax.block_until_ready(decode(*inputs))
        seconds, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        rows.append(
            {
                "call": call,
                "ms_per_token": 1e3 * seconds / args.tokens,
                "cpu_per_wall": cpu / seconds,
                "voluntary_switches": after.ru_nvcsw - before.ru_nvcsw,
            }
        )
    return rows


COLUMNS = ("call", "ms/token", "process CPU s / wall s", "voluntary context switches")
FORMATS = ("{call}", "{ms_per_token:.3f}", "{cpu_per_wall:.2f}", "{voluntary_switches:,}")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attention", default="softmax", choices=ATTENTION_NAMES)
    p.add_argument("--context", type=positive_int, default=8192, help="prompt tokens prefilled")
    p.add_argument("--tokens", type=positive_int, default=64, help="greedy tokens per call")
    p.add_argument("--calls", type=positive_int, default=20, help="timed calls")
    p.add_argument("--d_model", type=positive_int, default=64)
    p.add_argument("--layers", type=positive_int, default=2)
    p.add_argument("--heads", type=positive_int, default=2)
    p.add_argument("--vocab", type=positive_int, default=512)
    p.add_argument(
        "--out", type=out_dir, default="", help="directory for decode_bench.csv and .png"
    )
    args = p.parse_args(argv)
    check_model(p, args, model_config)
    rows = run(args)
    ms = [r["ms_per_token"] for r in rows]
    title = (
        f"{machine_header()}\nDecoderLM {args.layers}L d{args.d_model} h{args.heads} vocab "
        f"{args.vocab} {args.attention}, batch 1: {args.calls} calls of {args.tokens} greedy "
        f"tokens after {args.context:,} tokens of context"
    )
    print(f"{title}\n")
    print(format_table(rows, COLUMNS, FORMATS, align="rrrr"))
    print(
        f"\nms/token: min {min(ms):.3f}, median {statistics.median(ms):.3f}, max {max(ms):.3f} "
        f"(max / min {max(ms) / min(ms):.1f}x)"
    )
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "decode_bench.csv", rows)
        with save_figure(out / "decode_bench.png", title, 1, (7, 4)) as ax:
            ax.plot([r["call"] for r in rows], ms, marker="o")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_xlabel("call (each one compiled loop of greedy decode steps)")
            ax.set_ylabel("ms per token")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        print(f"wrote {out / 'decode_bench.csv'} and {out / 'decode_bench.png'}")
    return rows


if __name__ == "__main__":
    main()
