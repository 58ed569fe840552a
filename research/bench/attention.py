"""Attention benchmark: time, memory and FLOP/s against length; decode speed against context.

    python -m research.bench.attention [--lengths 512,1024,...,65536] [--out DIR]
                                       [--batch 1 --heads 4 --head_dim 64] [--repeats 5]
                                       [--long_length 1048576]

Rows: softmax xla (dense), softmax blockwise, linear chunked / scan / cumsum (elu+1), gated
linear attention (per-key-dim gate and a scalar gate per head) and the gated delta rule
(chunked / scan), and
torch.nn.functional.scaled_dot_product_attention on CPU when torch is installed; all causal,
`--dtype` (fp32 by default), forward and forward+backward. On request (`--impls`) the
accelerator rows: softmax-cudnn (GPU), softmax-tpu_flash (TPU) and the Pallas kernels
linear-pallas, gla-pallas, gla_scalar-pallas, delta-pallas (TPU; under the Pallas interpreter
elsewhere, up to 4096 tokens); a row whose backend is missing is reported as skipped. The
summary names, per linear row, the crossover: the shortest length from which it beats the
fastest softmax row (`launch/accelerator_check.sh` runs all of this on a GPU or TPU).
Times are medians of `--repeats` after one warm-up call. Memory is XLA's compiled figure
(arguments + outputs + temporaries, per device); a run whose compiled memory exceeds
`--memory_budget_gb` (GiB, 2^30 bytes) is reported as skipped, not attempted.
FLOP counts are `research.ops.attention.cost.attention_flops` (forward+backward = 3.5 x forward):
  softmax: 2 B H L^2 D (causal half of QK^T and PV);
  linear chunked: B H L (2 C F + 2 C Dv + 4 F Dv); scan and cumsum: B H L 4 F Dv;
  gla chunked B H L (4 C Dk + 2 C Dv + 4 Dk Dv) (its cumulative log-gates add 2 C Dk),
  gla_scalar chunked as linear chunked with F = Dk, gla scan B H L 4 Dk Dv, delta scan
  B H L 6 Dk Dv, delta chunked the WY form's products (2.6 x linear chunked at C = D = 64;
  see `cost.py`). `--impls` runs a subset of the rows.
Decode: one token against a cache of `context` tokens; the softmax KV cache attends over it, the
linear recurrent state does not depend on it. `--long_length` runs linear chunked forward and
forward+backward once at that length (0 skips it). `--malloc keep` (default) asks glibc to keep
freed memory rather than page-fault fresh buffers on every call (see `keep_freed_memory`; the
header says which was used); `--malloc system` leaves the defaults. Writes attention.csv and
attention.png to --out. What each row runs and how one is measured: `attention_rows.py`.
"""

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from research.bench.attention_rows import (
    ACCELERATOR_IMPLS,
    IMPLS,
    RECURRENT_IMPLS,
    decode_seconds,
    flop_impl,
    measure_jax,
    measure_torch,
)
from research.bench.attention_targets import TORCH, targets
from research.cli import int_at_least, out_dir, positive_float, positive_int, positive_ints
from research.ops.attention.cost import attention_flops
from research.report import (
    format_table,
    keep_freed_memory,
    machine_header,
    matmul_peak,
    save_figure,
    write_csv,
)


def crossovers(rows, kind: str = "fwd+bwd", backend: str | None = None) -> list[dict]:
    """Per non-softmax impl: the shortest measured length from which it is faster than the
    fastest softmax row at every measured length (None: not at the longest). Off a CPU backend
    the torch rows (which run on the CPU) are no softmax row to compare with."""
    backend = backend or jax.default_backend()
    softmax_rows = ("softmax", TORCH) if backend == "cpu" else ("softmax",)
    ok = [r for r in rows if r["kind"] == kind and np.isfinite(r["seconds"])]
    others = dict.fromkeys(r["impl"] for r in ok if not r["impl"].startswith(("softmax", TORCH)))
    out = []
    for impl in others:
        wins = []  # (length, faster?) where both were measured, by length
        for n in sorted({r["length"] for r in ok}):
            soft = [
                r["seconds"] for r in ok if r["length"] == n and r["impl"].startswith(softmax_rows)
            ]
            mine = [r["seconds"] for r in ok if r["length"] == n and r["impl"] == impl]
            if soft and mine:
                wins.append((n, mine[0] < min(soft)))
        at = None
        for n, faster in reversed(wins):
            if not faster:
                break
            at = n
        out.append({"impl": impl, "kind": kind, "crossover_length": at})
    return out


def crossover_line(c: dict) -> str:
    """One `crossovers` entry in words."""
    head = f"crossover ({c['kind']}): {c['impl']}"
    if c["crossover_length"] is None:
        return f"{head} never beats the fastest softmax row within the measured lengths"
    return f"{head} beats the fastest softmax row from L = {c['crossover_length']}"


def run(args) -> list[dict]:
    b, h, d = args.batch, args.heads, args.head_dim
    budget = int(args.memory_budget_gb * 2**30)
    rows = []
    impls = [i for i in (*IMPLS, *RECURRENT_IMPLS, *ACCELERATOR_IMPLS) if i in args.impls]
    dtype = jnp.dtype(args.dtype)
    peak = matmul_peak(dtype=dtype)  # one device, the rows' dtype
    if TORCH in args.impls:
        try:
            import torch  # noqa: F401

            impls.append(TORCH)
        except ImportError:
            print("(torch not installed: the torch SDPA reference rows are left out)")
    for length in args.lengths:
        for impl in impls:
            for mode in ("fwd", "fwd+bwd"):
                if impl == TORCH:
                    r = measure_torch(mode, b, length, h, d, args.repeats, dtype)
                else:
                    r = measure_jax(impl, mode, b, length, h, d, args.repeats, budget, dtype)
                work = attention_flops(
                    flop_impl(impl),
                    batch=b,
                    length=length,
                    heads=h,
                    head_dim=d,
                    backward=mode != "fwd",
                )
                r.update(
                    kind=mode,
                    impl=impl,
                    length=length,
                    tokens_per_second=b * length / r["seconds"],
                    gflops_per_second=work / r["seconds"] / 1e9,
                    fraction_of_peak=work / r["seconds"] / peak,
                )
                rows.append(r)
                print(
                    f"  {mode:8s} {impl:18s} L={length:6d} {r['seconds']:9.4f} s "
                    f"mem {r['memory_bytes'] / 2**20:9.1f} MiB  {r['status']}",
                    flush=True,
                )
    if args.long_length:
        for mode in ("fwd", "fwd+bwd"):
            r = measure_jax("linear-chunked", mode, b, args.long_length, h, d, 1, budget, dtype)
            r.update(
                kind=mode,
                impl="linear-chunked",
                length=args.long_length,
                tokens_per_second=b * args.long_length / r["seconds"],
                gflops_per_second=float("nan"),
                fraction_of_peak=float("nan"),
            )
            rows.append(r)
            gib = r["memory_bytes"] / 2**30
            print(
                f"  {mode:8s} linear-chunked     L={args.long_length} {r['seconds']:9.4f} s "
                f"mem {gib:6.2f} GiB  {r['status']}",
                flush=True,
            )
    for context in args.contexts:
        for kind in ("softmax-kv-cache", "linear-state"):
            s = decode_seconds(kind, context, b, h, d, dtype=dtype)
            rows.append(
                dict(
                    kind="decode",
                    impl=kind,
                    length=context,
                    seconds=s,
                    tokens_per_second=b / s,
                    memory_bytes=float("nan"),
                    gflops_per_second=float("nan"),
                    fraction_of_peak=float("nan"),
                    status="ok",
                )
            )
            print(f"  decode   {kind:18s} ctx={context:6d} {s * 1e3:9.3f} ms/token", flush=True)
    for r in rows:
        r["matmul_peak_gflops"] = peak / 1e9
    return rows


def plot(rows, path, header):
    with save_figure(path, header, 3, (16, 4.8), title_size=9) as axes:
        for ax, kind in zip(axes[:2], ("fwd", "fwd+bwd"), strict=True):
            for impl in (*IMPLS, TORCH, *RECURRENT_IMPLS, *ACCELERATOR_IMPLS):
                pts = sorted(
                    (r["length"], r["seconds"])
                    for r in rows
                    if r["kind"] == kind and r["impl"] == impl and np.isfinite(r["seconds"])
                )
                if pts:
                    ax.loglog(*zip(*pts, strict=True), marker="o", label=impl)
            ax.set(
                title=f"causal attention, {kind}",
                xlabel="sequence length (tokens)",
                ylabel="seconds per call (median)",
            )
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        for impl in ("softmax-kv-cache", "linear-state"):
            pts = sorted(
                (r["length"], r["tokens_per_second"])
                for r in rows
                if r["kind"] == "decode" and r["impl"] == impl
            )
            if pts:
                axes[2].loglog(*zip(*pts, strict=True), marker="o", label=impl)
        axes[2].set(
            title="decode, one token at a time",
            xlabel="context length (tokens)",
            ylabel="tokens / s",
        )
        axes[2].grid(True, which="both", alpha=0.3)
        axes[2].legend(fontsize=8)


RESULT_COLUMNS = (
    "kind",
    "impl",
    "length",
    "seconds",
    "tokens/s",
    "memory MiB",
    "GFLOP/s",
    "of peak",
)
RESULT_FORMATS = (
    "{kind}",
    "{impl}",
    "{length}",
    "{seconds:.4g}",
    "{tokens_per_second:,.0f}",
    lambda r: f"{r['memory_bytes'] / 2**20:,.1f}",
    "{gflops_per_second:.1f}",
    "{fraction_of_peak:.1%}",
)


DEFAULT_IMPLS = (*IMPLS, *RECURRENT_IMPLS, TORCH)
ALL_IMPLS = (*DEFAULT_IMPLS, *ACCELERATOR_IMPLS)


def _impl_list(text: str) -> tuple[str, ...]:
    """--impls: names from ALL_IMPLS, comma-separated (argparse exits 2 with the message)."""
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [x for x in names if x not in ALL_IMPLS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown impl {unknown[0] if unknown else text!r}; allowed: {', '.join(ALL_IMPLS)}"
        )
    return names


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--lengths", type=positive_ints, default="512,1024,2048,4096,8192,16384,32768,65536"
    )
    p.add_argument(
        "--contexts", type=positive_ints, default="1024,8192,32768", help="decode context lengths"
    )
    p.add_argument(
        "--impls",
        type=_impl_list,
        default=",".join(DEFAULT_IMPLS),
        help=f"comma-separated subset of {','.join(ALL_IMPLS)} (default: all but "
        "the accelerator rows, softmax-cudnn .. delta-pallas)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--head_dim", type=positive_int, default=64)
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument(
        "--long_length",
        type=int_at_least(0),
        default=2**20,
        help="one linear chunked run at this length (0: skip)",
    )
    p.add_argument(
        "--memory_budget_gb",
        type=positive_float,
        default=12.0,
        help="skip a row whose compiled program needs more, in GiB (2^30 bytes)",
    )
    p.add_argument("--malloc", choices=("keep", "system"), default="keep")
    p.add_argument("--out", type=out_dir, default="bench_out/attention")
    args = p.parse_args(argv)
    malloc = keep_freed_memory() if args.malloc == "keep" else "malloc: system defaults"
    dt = {"float32": "fp32", "bfloat16": "bf16"}[args.dtype]
    shapes = f"batch {args.batch}, heads {args.heads}, head_dim {args.head_dim}, {dt}, causal"
    torch_note = ""
    if TORCH in args.impls:
        try:
            import torch

            torch_note = f" | torch {torch.__version__} SDPA on CPU as reference"
        except ImportError:
            pass
    header = f"{machine_header()} | {malloc}{torch_note} | {shapes}"
    print(header)
    rows = run(args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fields = [
        "kind",
        "impl",
        "length",
        "seconds",
        "tokens_per_second",
        "memory_bytes",
        "gflops_per_second",
        "fraction_of_peak",
        "matmul_peak_gflops",
        "status",
    ]
    write_csv(out / "attention.csv", rows, fields)
    plot(rows, out / "attention.png", header)
    print(f"\n{header}\n")
    print(format_table(rows, RESULT_COLUMNS, RESULT_FORMATS, align="--rrrrrr"))
    print()
    print(format_table(targets(rows)))  # cells are ready: the dict keys are the columns
    for c in crossovers(rows):
        print(crossover_line(c))
    print(f"\nwrote {out / 'attention.csv'} and {out / 'attention.png'}")
    return rows


if __name__ == "__main__":
    main()
