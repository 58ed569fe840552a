"""The attention benchmark's rows: what each impl runs (`attention_fn`), its FLOP model row
(`flop_impl`), and one measurement of it: a jitted JAX call (`measure_jax`: compiled memory,
then the median time), torch SDPA on CPU (`measure_torch`), and decode against a context
(`decode_seconds`). `research.bench.attention` sweeps them; `research.bench.accelerator` runs
them on a GPU or TPU."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.bench.attention_targets import TORCH
from research.ops import attention as att
from research.report import median_time, usable_cpus

IMPLS = ("softmax-xla", "softmax-blockwise", "linear-chunked", "linear-scan", "linear-cumsum")
# Gated linear attention (gla: per-key-dim gate; gla_scalar: one gate per head and step, the
# Mamba2/SSD form) and the gated delta rule, chunked and scan forms. Their fixed extra inputs are
# built inside the timed function (`_recurrent_fn`).
RECURRENT_IMPLS = (
    "gla-chunked",
    "gla-scan",
    "gla_scalar-chunked",
    "gla_scalar-scan",
    "delta-chunked",
    "delta-scan",
)


# Accelerator rows (not in the default list): softmax as cuDNN flash attention (GPU) and
# Pallas flash attention (TPU); the Pallas kernels of plain linear attention, GLA (per-key-dim
# and scalar gate) and Gated DeltaNet (TPU; the Pallas interpreter elsewhere: slow, tiny shapes
# only). Each is refused with a "skipped" row on a backend that lacks it.
ACCELERATOR_IMPLS = (
    "softmax-cudnn",
    "softmax-tpu_flash",
    "linear-pallas",
    "gla-pallas",
    "gla_scalar-pallas",
    "delta-pallas",
)
_NEEDS = {"softmax-cudnn": "gpu", "softmax-tpu_flash": "tpu"}


def flop_impl(impl: str) -> str:
    """The `attention_flops` row of an impl: a kernel does its XLA chunked form's work."""
    if impl.startswith("softmax") or impl == TORCH:
        return "softmax"
    return impl.replace("-pallas", "-chunked")


def _recurrent_fn(impl: str):
    """q, k, v -> out for the gated families: k L2-normalised (as the layers do), log_gate
    -0.05, and for the delta rule beta 0.5 (Gated DeltaNet)."""
    family, form = impl.split("-")
    kw = dict(form="chunked", implementation="pallas") if form == "pallas" else dict(form=form)

    def fn(q, k, v):
        g = jnp.full(q.shape[:3], -0.05, jnp.float32)
        if family == "gla":
            return att.gated_linear_attention(
                q, k, v, jnp.broadcast_to(g[..., None], q.shape), **kw
            )
        if family == "gla_scalar":
            return att.gated_linear_attention(q, k, v, g, **kw)
        k = k * lax.rsqrt(jnp.sum(k * k, axis=-1, keepdims=True) + 1e-6)
        return att.delta_rule_attention(
            q, k, v, jnp.full(q.shape[:3], 0.5, jnp.float32), log_gate=g, **kw
        )

    return fn


def attention_fn(impl: str):
    if impl in RECURRENT_IMPLS or impl in ("gla-pallas", "gla_scalar-pallas", "delta-pallas"):
        return _recurrent_fn(impl)
    if impl.startswith("softmax"):
        return functools.partial(
            att.softmax_attention, causal=True, implementation=impl.split("-")[1]
        )
    if impl == "linear-pallas":
        return functools.partial(att.linear_attention, causal=True, implementation="pallas")
    return functools.partial(att.linear_attention, causal=True, form=impl.split("-")[1])


def _inputs(b, length, h, d, dtype=jnp.float32):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    return [jax.random.normal(k, (b, length, h, d), dtype) for k in keys]


def _compiled_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def measure_jax(impl, mode, b, length, h, d, repeats, budget_bytes, dtype=jnp.float32):
    need = _NEEDS.get(impl, "tpu" if impl.endswith("-pallas") else None)
    # (the Pallas kernels run under the interpreter off TPU: short lengths only; the
    # softmax kernels do not run off their backend at all)
    interpreted = impl.endswith("-pallas") and length <= 4096 and jax.default_backend() == "cpu"
    if need and jax.default_backend() != need and not interpreted:
        return {"seconds": float("nan"), "memory_bytes": float("nan"), "status": f"skipped: {need}"}
    fn = attention_fn(impl)
    if mode == "fwd":
        f = jax.jit(fn)
    else:
        loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32))  # noqa: E731
        f = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    shapes = [jax.ShapeDtypeStruct((b, length, h, d), dtype)] * 3
    compiled = f.lower(*shapes).compile()
    mem = _compiled_bytes(compiled)
    if mem > budget_bytes:
        return {"seconds": float("nan"), "memory_bytes": mem, "status": "skipped: over budget"}
    seconds = median_time(compiled, *_inputs(b, length, h, d, dtype), repeats=repeats, warmup=1)
    return {"seconds": seconds, "memory_bytes": mem, "status": "ok"}


def measure_torch(mode, b, length, h, d, repeats, dtype=jnp.float32):
    """torch SDPA (causal) on the CPU, on the cores this process may use, in `dtype`."""
    import time

    import torch

    torch.set_num_threads(usable_cpus())
    g = torch.Generator().manual_seed(0)
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[jnp.dtype(dtype).name]
    q, k, v = (
        torch.randn(b, h, length, d, generator=g, dtype=tdtype, requires_grad=mode != "fwd")
        for _ in range(3)
    )

    def run():
        for x in (q, k, v):
            x.grad = None  # each call computes its gradients afresh, as jax.grad does
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        if mode != "fwd":
            out.float().sum().backward()

    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.no_grad() if mode == "fwd" else torch.enable_grad():
            run()
        if i:  # the first call is the warm-up
            times.append(time.perf_counter() - t0)
    return {"seconds": float(np.median(times)), "memory_bytes": float("nan"), "status": "ok"}


def decode_seconds(kind: str, context: int, b, h, d, steps: int = 64, dtype=jnp.float32) -> float:
    """Seconds per generated token with `context` tokens already cached (median of 3); q, k, v
    and the KV cache in `dtype` (the linear state accumulates in fp32, as the op does)."""
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    qs, ks, vs = (jax.random.normal(k, (steps, b, h, d), dtype) for k in keys)
    if kind == "softmax-kv-cache":
        cache = [jax.random.normal(k, (b, context + steps, h, d), dtype) for k in keys[:2]]

        def run(cache, qs, ks, vs):
            def body(t, c):
                kc, vc, acc = c
                kc = lax.dynamic_update_slice_in_dim(kc, ks[t][:, None], context + t, axis=1)
                vc = lax.dynamic_update_slice_in_dim(vc, vs[t][:, None], context + t, axis=1)
                valid = jnp.arange(kc.shape[1])[None, :] <= context + t
                mask = jnp.broadcast_to(valid, (b, kc.shape[1]))
                out = att.softmax_attention(qs[t][:, None], kc, vc, mask=mask)
                return kc, vc, acc + out[:, 0]  # the sum keeps every step's output live

            return lax.fori_loop(0, steps, body, (*cache, jnp.zeros((b, h, d))))[2]

        args = (cache, qs, ks, vs)
    else:
        state = att.linear_attention_init_state(b, h, d, d)
        state = att.LinearAttentionState(state.s + float(context), state.z + float(context))

        def run(state, qs, ks, vs):
            def body(t, c):
                st, acc = c
                st, out = att.linear_attention_step(st, qs[t], ks[t], vs[t])
                return st, acc + out

            return lax.fori_loop(0, steps, body, (state, jnp.zeros((b, h, d))))[1]

        args = (state, qs, ks, vs)
    return median_time(jax.jit(run), *args, repeats=3, warmup=1) / steps
