"""Linear vs softmax attention at pod scale on paper: one attention layer compiled for a topology.

    python -m research.plan.attention --topology=v5e:16x16 [--lengths=1024,4096,...,1048576]
        [--heads=16 --head_dim=128] [--out=DIR]

For each context length, compiles causal attention forward+backward (bf16 q, k, v; fp32
softmax statistics and linear states) eight ways and reads per-device memory, FLOPs and bytes:
  local (data parallel: every device holds whole sequences, batch = devices)
    softmax-blockwise   online-softmax blocks (research.ops.softmax_attention)
    linear-chunked      chunkwise-parallel linear attention (research.ops.linear_attention)
    gla-chunked         gated linear attention, per-key-dim gate (research.ops
                        .gated_linear_attention)
    gdn-chunked         the gated delta rule, Gated DeltaNet's op (research.ops
                        .delta_rule_attention)
  context parallel (one sequence split over all devices, research.ops.attention.context_parallel)
    softmax-ring        ring attention, K/V blocks passed around the devices
    linear-cp, gla-cp   per-device chunk states + a log-depth prefix of d x d states (GLA: decay
                        then add)
    gdn-cp              each device's block as an affine map S -> A S + B, a log-depth prefix
                        of those maps (A [Dk, Dk], B [Dk, Dv]), then the block's outputs
The gates and beta are computed from q, k, v inside the step (as a layer would feed them).
Roofline time per step = max(FLOPs / peak, HBM bytes / HBM bandwidth) + collective bytes / ICI
bandwidth: an estimate with no overlap of communication and compute, not a bound (a ring kernel
that hides its K/V permutes behind the blocks' compute, as ring attention is designed to, takes
as little as the larger of the two; the train planner's roofline, which takes the max of all
three terms, is the bound). FLOPs and HBM bytes are analytic (`flops_per_device`, `hbm_bytes`),
because XLA's cost analysis counts a loop body once and every variant here is a loop: FLOPs as
research.ops.attention.cost (forward+backward = 3.5 x forward; ring computes the masked half
too); bytes are the unavoidable traffic (q, k, v, o and their gradients) plus each form's own:
softmax re-reads K/V once per 512-query block, linear writes and re-reads its fp32 chunk states
and C x C chunk scores (GLA and the delta rule counted the same way, gdn-cp twice), ring
materialises an (L/P)^2 fp32 logit block per step (and its backward reads and writes the fp32
dK/dV blocks). Memory is XLA's compiled figure (loops do not
distort it). Collective bytes (`comm_bytes`) count what the compiled programs send, checked
against their collective-permutes on v5e:2x2 and 2x4 (tests/plan/test_plan_attention.py): ring
its bf16 K/V blocks forward, backward again beside their fp32 gradients, which then take one
bf16 hop home (its backward is a second ring; it keeps no step's blocks); linear the forward
formula of `cost.bytes_communicated` x 2 (the backward prefix sends as much); GLA per direction
the fp32 state at each prefix step and once more (the shift to an exclusive prefix) and its
decay at all but the last step; the delta rule A and B at each prefix step, bf16 forward and
fp32 backward. These are compiler figures and estimates, not measurements.
Writes plan_attention.csv and plan_attention.png to --out.
"""

import argparse
import functools
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research.cli import out_dir, positive_int, positive_ints
from research.ops import attention as att
from research.ops.attention import context_parallel as cp
from research.ops.attention.cost import attention_flops, bytes_communicated
from research.ops.feature_maps import feature_dim
from research.plan import chips
from research.plan.chips import MissingLibtpu, devices_for
from research.plan.compiler import compile_for_devices
from research.plan.output import fits_chip
from research.report import format_table, save_figure, write_csv

LOCAL = {
    "softmax": "softmax-blockwise",
    "linear": "linear-chunked",
    "gla": "gla-chunked",
    "gdn": "gdn-chunked",
}
CONTEXT_PARALLEL = {
    "softmax": "softmax-ring",
    "linear": "linear-cp",
    "gla": "gla-cp",
    "gdn": "gdn-cp",
}
VARIANTS = (*LOCAL.values(), *CONTEXT_PARALLEL.values())
RECURRENT = ("linear", "gla", "gdn")  # the families compared against softmax
DEFAULT_LENGTHS = "1024,4096,16384,65536,262144,1048576"


def _grad_of(fn):
    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2))


def _gla(op, **kw):
    """GLA with a per-key-dim gate made from k (log-sigmoid / 16, GLA's layer): data-dependent
    and differentiated, as in a model."""

    def fn(q, k, v):
        g = jax.nn.log_sigmoid(k.astype(jnp.float32)) / 16.0
        return op(q, k, v, g, **kw)

    return fn


def _gdn(op, **kw):
    """The gated delta rule with k L2-normalised, beta = sigmoid and a Mamba2-style decay, both
    made from the inputs (one value per head and token), as a Gated DeltaNet layer feeds it."""

    def fn(q, k, v):
        k32 = k.astype(jnp.float32)
        k = (k32 * jax.lax.rsqrt(jnp.sum(k32 * k32, axis=-1, keepdims=True) + 1e-6)).astype(q.dtype)
        beta = jax.nn.sigmoid(jnp.mean(v.astype(jnp.float32), axis=-1))
        g = -jax.nn.softplus(jnp.mean(q.astype(jnp.float32), axis=-1))
        return op(q, k, v, beta, log_gate=g, **kw)

    return fn


def compile_variant(variant: str, devices, length: int, heads: int, head_dim: int):
    """Compile one variant's forward+backward; returns (Plan, tokens per step)."""
    n = len(devices)
    mesh = Mesh(np.asarray(devices), ("d",))
    chunk = min(64, length // n) if variant.endswith(("cp", "ring")) else 64
    if variant == "softmax-blockwise":
        fn = functools.partial(att.softmax_attention, causal=True, implementation="blockwise")
    elif variant == "linear-chunked":
        fn = functools.partial(att.linear_attention, causal=True, form="chunked")
    elif variant == "softmax-ring":
        body = functools.partial(cp.ring_attention, axis_name="d", axis_size=n)
    elif variant == "linear-cp":
        body = functools.partial(
            cp.linear_attention_cp, axis_name="d", axis_size=n, chunk_size=chunk
        )
    elif variant == "gla-chunked":
        fn = _gla(att.gated_linear_attention)
    elif variant == "gdn-chunked":
        fn = _gdn(att.delta_rule_attention)
    elif variant == "gla-cp":
        body = _gla(cp.gated_linear_attention_cp, axis_name="d", axis_size=n, chunk_size=chunk)
    elif variant == "gdn-cp":
        body = _gdn(cp.delta_rule_attention_cp, axis_name="d", axis_size=n, chunk_size=chunk)
    else:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    if variant in CONTEXT_PARALLEL.values():
        spec, batch, tokens = P(None, "d"), 1, length
        fn = jax.shard_map(body, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec)
    else:
        spec, batch, tokens = P("d"), n, n * length
    x = jax.ShapeDtypeStruct(
        (batch, length, heads, head_dim), jnp.bfloat16, sharding=NamedSharding(mesh, spec)
    )
    plan, _ = compile_for_devices(variant, jax.jit(_grad_of(fn)), x, x, x)
    return plan, tokens


def comm_bytes(variant: str, length: int, heads: int, head_dim: int, devices: int) -> int:
    """Collective bytes per device for forward+backward (see the module docstring)."""
    shape = dict(
        batch=1,
        length=length,
        heads=heads,
        kv_heads=heads,
        head_dim=head_dim,
        value_dim=head_dim,
        devices=devices,
    )
    if variant == "softmax-ring":  # bf16 K/V blocks P - 1 hops forward and again backward,
        # their fp32 gradients beside them backward, then one bf16 hop home
        per_hop = (length // devices) * heads * 2 * head_dim  # K and V elements
        return (devices - 1) * per_hop * (2 + 2 + 4) + per_hop * 2 if devices > 1 else 0
    if variant == "linear-cp":  # fp32 states and normalisers, forward and backward alike
        f = feature_dim("elu", head_dim)
        return 2 * bytes_communicated("linear", feature_dim=f, **shape)
    steps = math.ceil(math.log2(devices)) if devices > 1 else 0
    if variant == "gla-cp":  # per direction: (steps + 1) fp32 states, (steps - 1) decay vectors
        state, decay = 4 * heads * head_dim * head_dim, 4 * heads * head_dim
        return 2 * ((steps + 1) * state + max(steps - 1, 0) * decay) if steps else 0
    if variant == "gdn-cp":  # A [Dk, Dk] and B [Dk, Dv] each prefix step: bf16 fwd, fp32 bwd
        return steps * heads * head_dim * (head_dim + head_dim) * (2 + 4)
    return 0


def flops_per_device(variant: str, length: int, heads: int, head_dim: int, devices: int) -> float:
    """Analytic forward+backward FLOPs on one device (see the module docstring)."""
    n = length // devices
    shape = dict(batch=1, heads=heads, head_dim=head_dim, backward=True)
    if variant in ("softmax-blockwise", "linear-chunked"):
        return attention_flops(variant, length=length, **shape)
    if variant == "gla-chunked":
        return attention_flops("gla-chunked", length=length, **shape)
    if variant == "gdn-chunked":
        return attention_flops("delta-chunked", length=length, **shape)
    if variant == "softmax-ring":  # every (n x n) block of all P, causal mask applied after
        return 3.5 * 4.0 * heads * n * length * head_dim
    chunk = min(64, n)
    if variant == "gla-cp":
        return attention_flops("gla-chunked", length=n, chunk_size=chunk, **shape)
    if variant == "gdn-cp":  # the block's map (values [I | 0] and [0 | v]), then the outputs
        as_map = attention_flops(
            "delta-chunked", length=n, chunk_size=chunk, value_dim=2 * head_dim, **shape
        )
        return as_map + attention_flops("delta-chunked", length=n, chunk_size=chunk, **shape)
    return attention_flops("linear-chunked", length=n, chunk_size=chunk, **shape)


def hbm_bytes(variant: str, length: int, heads: int, head_dim: int, devices: int) -> float:
    """Analytic forward+backward HBM traffic on one device, bf16 activations (module docstring)."""
    n = length if variant in LOCAL.values() else length // devices
    io = 12 * n * heads * head_dim * 2  # read q k v (o dO), write o (dq dk dv)
    if variant == "softmax-blockwise":  # K/V re-read per 512-query block, causal half, x3 fb
        return io + 3 * (length / 512) * (length / 2) * heads * head_dim * 2 * 2
    if variant == "softmax-ring":  # every step: a K/V block in, an n x n fp32 logit block;
        # the backward also reads and writes the fp32 dK/dV block travelling with it
        per_step = n * heads * head_dim * 2 * 2 + 2 * n * n * heads * 4
        return io + 3 * devices * per_step + devices * 2 * (n * heads * head_dim * 4 * 2)
    chunk = min(64, n)
    f = feature_dim("elu", head_dim) if variant.startswith("linear") else head_dim
    states = 4 * (n / chunk) * heads * f * head_dim * 4  # write, read; twice in backward
    scores = 4 * n * chunk * heads * 4
    if variant == "gdn-cp":  # runs the chunked form twice (the map, then the outputs)
        return io + 2 * (states + scores)
    return io + states + scores


def run(topology: str, lengths, heads: int, head_dim: int, num_slices: int = 1) -> list[dict]:
    devices, chip = devices_for(topology, num_slices)
    n = len(devices)
    bad = [x for x in lengths if x % n]
    if bad:  # before any compile
        raise ValueError(f"length {bad[0]} is not divisible by the {n} devices")
    rows = []
    for length in lengths:
        for variant in VARIANTS:
            plan, tokens = compile_variant(variant, devices, length, heads, head_dim)
            comm = comm_bytes(variant, length, heads, head_dim, n)
            flops = flops_per_device(variant, length, heads, head_dim, n)
            hbm = hbm_bytes(variant, length, heads, head_dim, n)
            compute = max(flops / chip.peak_flops, hbm / chip.hbm_bandwidth)
            seconds = compute + comm / chip.ici_bandwidth
            rows.append(
                {
                    "topology": topology,
                    "devices": n,
                    "length": length,
                    "variant": variant,
                    "memory_bytes": plan.total_bytes,
                    "fits": fits_chip([plan], chip),
                    "flops": flops,
                    "hbm_bytes": hbm,
                    "comm_bytes": comm,
                    "roofline_s": seconds,
                    "tokens_per_s": tokens / seconds,
                    "compile_s": plan.compile_seconds,
                    "note": plan.note,
                }
            )
            print(
                f"  {topology} L={length:>8} {variant:18} {plan.total_bytes / 2**30:8.2f} GiB "
                f"{seconds:10.4g} s  (compiled in {plan.compile_seconds:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    return rows


def crossover(rows, local: bool, family: str = "linear") -> int | None:
    """Shortest length at which `family`'s (linear, gla, gdn) roofline time beats softmax's
    (local or context parallel), or None if it never does within the lengths."""
    forms = LOCAL if local else CONTEXT_PARALLEL
    soft, lin = forms["softmax"], forms[family]
    for length in sorted({r["length"] for r in rows}):
        t = {r["variant"]: r["roofline_s"] for r in rows if r["length"] == length}
        if t[lin] < t[soft]:
            return length
    return None


COLUMNS = (
    "length",
    "variant",
    "memory/device GiB",
    "fits",
    "TFLOP/device",
    "HBM GB",
    "comm MB",
    "roofline s",
    "tokens/s",
)
FORMATS = (
    "{length:,}",
    "{variant}",
    lambda r: f"{r['memory_bytes'] / 2**30:.2f}",
    lambda r: "yes" if r["fits"] else "NO",
    lambda r: f"{r['flops'] / 1e12:.3f}",
    lambda r: f"{r['hbm_bytes'] / 1e9:.2f}",
    lambda r: f"{r['comm_bytes'] / 1e6:.1f}",
    "{roofline_s:.4g}",
    "{tokens_per_s:,.0f}",
)


def table(rows) -> str:
    return format_table(rows, COLUMNS, FORMATS)


def plot(rows, path, title):
    with save_figure(path, title, 2, (11, 4)) as axes:
        for v in VARIANTS:
            mine = [r for r in rows if r["variant"] == v]
            x = [r["length"] for r in mine]
            axes[0].plot(x, [r["roofline_s"] for r in mine], marker="o", label=v)
            axes[1].plot(x, [r["memory_bytes"] / 2**30 for r in mine], marker="o", label=v)
        labels = ("roofline time per step (s, no overlap)", "memory per device (GiB)")
        for ax, label in zip(axes, labels, strict=True):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context length (tokens)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0].legend()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", required=True, help="v5e:16x16, v5p:4x8x8, ... or cpu")
    parser.add_argument("--num_slices", type=positive_int, default=1)
    parser.add_argument("--lengths", type=positive_ints, default=DEFAULT_LENGTHS)
    parser.add_argument("--heads", type=positive_int, default=16)
    parser.add_argument("--head_dim", type=positive_int, default=128)
    parser.add_argument("--out", type=out_dir, default="/tmp/seqlab/plan_attention")
    args = parser.parse_args(argv)
    try:
        if args.num_slices > 1:
            print(chips.MULTISLICE_NOTE.format(n=args.num_slices), flush=True)
        rows = run(args.topology, args.lengths, args.heads, args.head_dim, args.num_slices)
    except (MissingLibtpu, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "plan_attention.csv", rows)
    title = (
        f"{args.topology} ({rows[0]['devices']} devices), one causal attention layer fwd+bwd, "
        f"{args.heads} heads x {args.head_dim}, bf16; compiler figures + roofline estimate"
    )
    plot(rows, out / "plan_attention.png", title)
    print(title + "\n")
    print(table(rows))
    for local in (True, False):
        for family in RECURRENT:
            x = crossover(rows, local, family)
            kind = "local (whole sequence per device)" if local else "context parallel"
            where = f"{x:,}" if x else f"none up to {max(args.lengths):,}"
            print(f"crossover, {kind}: {family} faster than softmax from length {where}")
    print(f"\nwrote {out / 'plan_attention.csv'} and {out / 'plan_attention.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
