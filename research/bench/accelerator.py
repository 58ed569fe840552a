"""The accelerator measurement behind `launch/accelerator_check.sh`: attention kernels and a
~125M-parameter LM training step on the GPU or TPU at hand; one CSV and one PNG named after it.

    python -m research.bench.accelerator [--out bench_out/accelerator] [--budget_s 420]

1. `research.bench.attention` rows in bf16 at batch 8, 16 heads, head dim 128, causal, for L in
   1k, 4k, 16k, 64k: softmax (cuDNN on GPU, Pallas flash attention on TPU, and blockwise)
   against plain linear attention, GLA and Gated DeltaNet, the XLA chunked forms and (TPU) the
   Pallas kernels; forward and forward+backward, achieved TFLOP/s (the chunked forms' FLOP
   model, `research.ops.attention.cost`), and each linear row's crossover length.
2. `research.bench.train`: a GPT-2-small-sized LM (12 layers, d 768, 12 heads, vocab 50304:
   124M parameters) at 2048 tokens x batch 8, bf16, with softmax and with Gated DeltaNet.
Measurements stop once `--budget_s` seconds have passed (the rows so far are kept and the
missing ones listed), so the whole check fits its 10 minutes. On CPU (for the tests) it runs
whatever shapes it is given; the script refuses to start without an accelerator.
"""

import argparse
import pathlib
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from research.bench import attention, attention_rows
from research.bench import train as train_bench
from research.cli import out_dir, positive_float, positive_int, positive_ints
from research.ops.attention.cost import attention_flops
from research.report import machine_header, save_figure, write_csv

LINEAR_ROWS = ("linear-chunked", "gla-chunked", "delta-chunked")
PALLAS_ROWS = ("linear-pallas", "gla-pallas", "delta-pallas")


def attention_impls(backend: str) -> tuple[str, ...]:
    """The attention rows for a backend: its fast softmax, blockwise, the linear XLA forms and
    (on TPU) the Pallas kernels; on CPU the portable rows only."""
    fast = {"gpu": ("softmax-cudnn",), "tpu": ("softmax-tpu_flash",)}.get(backend, ())
    pallas = PALLAS_ROWS if backend == "tpu" else ()
    return (*fast, "softmax-blockwise", *LINEAR_ROWS, *pallas)


def device_name() -> str:
    """The first device's kind, as a file name: 'NVIDIA H100 80GB HBM3' -> NVIDIA_H100_80GB_HBM3."""
    kind = jax.devices()[0].device_kind or jax.default_backend()
    return re.sub(r"[^A-Za-z0-9.-]+", "_", kind).strip("_")


def device_memory_gb(fallback: float = 60.0) -> float:
    """The first device's memory in GiB (its allocator's limit), or `fallback` where the backend
    does not say (CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats["bytes_limit"] / 2**30 if stats.get("bytes_limit") else fallback


def _attention_rows(args, deadline: float, skipped: list, save) -> list[dict]:
    rows = []
    b, h, d = args.batch, args.heads, args.head_dim
    budget = int(args.memory_budget_gb * 2**30)
    for length in args.lengths:
        for impl in attention_impls(jax.default_backend()):
            for mode in ("fwd", "fwd+bwd"):
                if time.perf_counter() > deadline:
                    skipped.append(f"{impl} {mode} L={length}")
                    continue
                r = attention_rows.measure_jax(
                    impl, mode, b, length, h, d, args.repeats, budget, jnp.bfloat16
                )
                work = attention_flops(
                    attention_rows.flop_impl(impl),
                    batch=b,
                    length=length,
                    heads=h,
                    head_dim=d,
                    backward=mode == "fwd+bwd",
                )
                r.update(
                    bench="attention",
                    kind=mode,
                    impl=impl,
                    length=length,
                    tokens_per_second=b * length / r["seconds"],
                    tflops_per_second=work / r["seconds"] / 1e12,
                )
                r["batch"] = b
                rows.append(r)
                save(rows)  # every row so far, so a failure later keeps them
                print(
                    f"  {mode:8s} {impl:18s} L={length:6d} {r['seconds'] * 1e3:10.3f} ms "
                    f"{r['tflops_per_second']:7.2f} TFLOP/s  {r['status']}",
                    flush=True,
                )
    return rows


def _train_runs(args) -> list[argparse.Namespace]:
    """research.bench.train's arguments for the two LM steps: softmax (this backend's fast
    kernel) and Gated DeltaNet (the Pallas kernels on TPU), bf16, at the --train_* shape."""
    backend = jax.default_backend()
    kinds = [
        ("softmax", {"gpu": "cudnn", "tpu": "tpu_flash"}.get(backend, "blockwise"), "xla"),
        ("gated_deltanet", "xla", "pallas" if backend == "tpu" else "xla"),
    ]
    sizes = {k.removeprefix("train_"): v for k, v in vars(args).items() if k.startswith("train_")}
    return [
        argparse.Namespace(
            **sizes,  # layers, d_model, heads, length, batch, vocab
            attention=kind,
            softmax_implementation=soft,
            linear_implementation=lin,
            dtype="bfloat16",
            scan_layers=False,
            remat="none",
            steps=args.repeats,
        )
        for kind, soft, lin in kinds
    ]


def _train_rows(args, deadline: float, skipped: list, save) -> list[dict]:
    rows = []
    for ns in _train_runs(args):
        if time.perf_counter() > deadline:
            skipped.append(f"train {ns.attention}")
            continue
        r = train_bench.run(ns)
        r.update(bench="train", impl=f"{ns.attention} ({r['implementation']})")
        rows.append(r)
        save(rows)
        print(
            f"  train    {r['impl']:26s} {r['step_seconds'] * 1e3:9.1f} ms/step "
            f"{r['tokens_per_second']:12,.0f} tok/s  MFU {r['mfu']:.1%} of the measured "
            f"matmul peak ({r['matmul_peak_gflops'] / 1e3:,.0f} TFLOP/s, not the spec sheet's)",
            flush=True,
        )
    return rows


def plot(rows: list[dict], path: pathlib.Path, title: str) -> None:
    """fwd+bwd time and achieved TFLOP/s against length per attention row; train tokens/s."""
    att = [r for r in rows if r["bench"] == "attention" and r["kind"] == "fwd+bwd"]
    with save_figure(path, title, 3, (16, 4.8), title_size=9) as axes:
        for impl in dict.fromkeys(r["impl"] for r in att):
            pts = sorted(
                ((r["length"], r) for r in att if r["impl"] == impl and np.isfinite(r["seconds"])),
                key=lambda p: p[0],
            )
            if pts:
                lengths = [n for n, _ in pts]
                axes[0].loglog(lengths, [r["seconds"] for _, r in pts], marker="o", label=impl)
                axes[1].semilogx(
                    lengths, [r["tflops_per_second"] for _, r in pts], marker="o", label=impl
                )
        axes[0].set(
            title="attention fwd+bwd, bf16",
            xlabel="sequence length (tokens per row)",
            ylabel="seconds per call (median)",
        )
        axes[1].set(
            title="achieved throughput",
            xlabel="sequence length (tokens per row)",
            ylabel="TFLOP/s (FLOP model)",
        )
        train = [r for r in rows if r["bench"] == "train"]
        axes[2].bar([r["impl"] for r in train], [r["tokens_per_second"] for r in train])
        axes[2].set(title="LM train step", ylabel="tokens / s")
        axes[2].tick_params(axis="x", labelsize=8)
        for ax in axes[:2]:
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)


FIELDS = (
    "bench",
    "kind",
    "impl",
    "length",
    "batch",
    "seconds",
    "tokens_per_second",
    "tflops_per_second",
    "memory_bytes",
    "status",
    "layers",
    "d_model",
    "vocab",
    "dtype",
    "devices",
    "step_seconds",
    "matmul_peak_gflops",
    "mfu",
)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=positive_ints, default="1024,4096,16384,65536")
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--heads", type=positive_int, default=16)
    p.add_argument("--head_dim", type=positive_int, default=128)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument(
        "--memory_budget_gb",
        type=positive_float,
        default=device_memory_gb(),
        help="skip a row whose compiled program needs more, in GiB (default: the memory JAX "
        "may use on the device, its bytes_limit: on a GPU the preallocated pool, not all HBM)",
    )
    p.add_argument("--train_layers", type=positive_int, default=12)
    p.add_argument("--train_d_model", type=positive_int, default=768)
    p.add_argument("--train_heads", type=positive_int, default=12)
    p.add_argument("--train_length", type=positive_int, default=2048)
    p.add_argument("--train_batch", type=positive_int, default=8)
    p.add_argument("--train_vocab", type=positive_int, default=50304)
    p.add_argument("--budget_s", type=positive_int, default=420)
    p.add_argument("--out", type=out_dir, default="bench_out/accelerator")
    args = p.parse_args(argv)
    # The train steps' shapes are checked before any measurement, not after the attention rows.
    for ns in _train_runs(args):
        if ns.batch % jax.device_count():
            p.error(
                f"--train_batch {ns.batch} must be divisible by the {jax.device_count()} devices"
            )
        train_bench.check_model(p, ns, train_bench.model_config)
    t0 = time.perf_counter()
    header = (
        f"{machine_header()} | attention bf16 B{args.batch} H{args.heads} D{args.head_dim} | "
        f"train {args.train_layers}L d{args.train_d_model} h{args.train_heads} len "
        f"{args.train_length} batch {args.train_batch} vocab {args.train_vocab} bf16 on "
        f"{jax.device_count()} device(s)"
    )
    print(header, flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = device_name()
    skipped: list[str] = []

    def save(rows: list[dict]) -> None:  # every row so far, so a failure later keeps them
        write_csv(out / f"{name}.csv", rows, FIELDS)

    # the attention rows get 70% of the budget, the two train steps the rest
    att = _attention_rows(args, t0 + 0.7 * args.budget_s, skipped, save)
    save(att)  # (a header alone when the budget let none run)
    rows = att + _train_rows(args, t0 + args.budget_s, skipped, lambda more: save(att + more))
    plot(rows, out / f"{name}.png", header)
    print()
    for c in attention.crossovers(att):
        print(attention.crossover_line(c))
    if skipped:
        print(f"\nnot measured (over --budget_s {args.budget_s}): {', '.join(skipped)}")
    print(f"\nwrote {out / f'{name}.csv'} and {out / f'{name}.png'}")
    return rows


if __name__ == "__main__":
    main()
