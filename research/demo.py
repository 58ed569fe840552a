"""A short tour of `research.ops`: runs every op once and prints what it computes.

    python -m research.demo [--length 4096]

Each line states a property and the measured figure, so a broken install shows up as a wrong
number. (`./launch/run.sh` runs the attention comparison, configs/compare_attention.py.)
"""

import argparse
import platform
import sys

import jax
import jax.numpy as jnp

from research import ops
from research.ops import attention as att
from research.report import median_time


def _timed(fn, *args):
    """(median seconds over 3 runs after a warm-up, output) of a jitted call."""
    return median_time(fn, *args, repeats=3), fn(*args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=4096, help="sequence length for attention")
    args = parser.parse_args(argv)
    if args.length < 2:
        print(f"error: --length must be >= 2, got {args.length}", file=sys.stderr)
        return 2
    length, heads, dim = args.length, 4, 64
    print(
        f"seqlab ops demo | jax {jax.__version__} | {jax.devices()[0].platform} | "
        f"python {platform.python_version()}"
    )
    print(f"attention shapes: batch 1, length {length}, heads {heads}, head_dim {dim}, fp32\n")
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(x, (1, length, heads, dim)) for x in (kq, kk, kv))

    print("1. causal softmax attention, dense vs blockwise (online softmax, O(L*block) memory)")
    t_dense, dense = _timed(
        jax.jit(lambda q, k, v: ops.softmax_attention(q, k, v, causal=True)), q, k, v
    )
    blockwise = jax.jit(
        lambda q, k, v: ops.softmax_attention(q, k, v, causal=True, implementation="blockwise")
    )
    t_block, block = _timed(blockwise, q, k, v)
    print(
        f"   max |dense - blockwise| = {float(jnp.max(jnp.abs(dense - block))):.2e}   "
        f"time dense {t_dense * 1e3:.1f} ms, blockwise {t_block * 1e3:.1f} ms"
    )

    print("2. causal linear attention (elu+1): chunked vs token scan vs cumsum reference")
    outs, times = {}, {}
    for form in ("chunked", "scan"):
        fn = jax.jit(
            lambda q, k, v, form=form: ops.linear_attention(q, k, v, causal=True, form=form)
        )
        times[form], outs[form] = _timed(fn, q, k, v)
    short = slice(0, min(length, 1024))  # cumsum holds an [L, d, d] tensor: keep it short
    ref = ops.linear_attention(q[:, short], k[:, short], v[:, short], causal=True, form="cumsum")
    scan_err = float(jnp.max(jnp.abs(outs["chunked"] - outs["scan"])))
    cumsum_err = float(jnp.max(jnp.abs(outs["chunked"][:, short] - ref)))
    print(
        f"   max |chunked - scan| = {scan_err:.2e}, |chunked - cumsum| (first {ref.shape[1]}) = "
        f"{cumsum_err:.2e}   time chunked {times['chunked'] * 1e3:.1f} ms, "
        f"scan {times['scan'] * 1e3:.1f} ms"
    )

    n = min(16, length)
    print(f"3. recurrent decoding: {n} steps of linear_attention_step equal the parallel form")
    state = ops.linear_attention_init_state(1, heads, ops.feature_dim("elu", dim), dim)
    step = jax.jit(att.linear_attention_step)
    steps = []
    for t in range(n):
        state, o = step(state, q[:, t], k[:, t], v[:, t])
        steps.append(o)
    err = float(jnp.max(jnp.abs(jnp.stack(steps, 1) - outs["chunked"][:, :n])))
    print(
        f"   max |recurrent - parallel| = {err:.2e}; state size "
        f"{(state.s.size + state.z.size) * 4} bytes, independent of context length"
    )

    print("4. GELU constants re-derived by minimax fits (docs/research_notes.md section 2)")
    c = ops.fit_gelu_constants()
    print(
        f"   tanh coefficient {c['tanh_coefficient']:.7f} (published 0.044715, note 0.0447149), "
        f"max erf error {c['tanh_max_error']:.2e}\n"
        f"   sigmoid scale {c['sigmoid_scale']:.7f} (published 1.702, note 1.7017449), "
        f"max Phi error {c['sigmoid_max_error']:.2e}"
    )

    print(
        "5. embedding size needed for a vocabulary, n > 8.33 ln N "
        "(docs/research_notes.md section 7)"
    )
    for n in (8192, 100_000, 5_000_000):
        print(f"   N = {n:>9,}: n >= {ops.min_embedding_dim(n)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
