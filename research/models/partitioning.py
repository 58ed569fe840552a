"""Activation sharding hints and rematerialisation policies for the model layers.

Activations carry logical axis names, distinct from the parameters' (MaxText's
`logical_axis_rules`): activation_batch, activation_length, activation_embed, activation_heads,
activation_kv, activation_mlp, activation_vocab. Layers call `constrain(x, *names)` on the
residual stream, q/k/v, the attention context, the FFN hidden and the logits. Outside an
`activation_sharding(resolve)` context it returns x unchanged, so a model runs anywhere (a
notebook on one CPU); the training step enters the context, at trace time, with a resolver from
`research.train.sharding` (the one rule table for parameters and activations). The models never
import the training system.

Rematerialisation (`ModelConfig.remat`) wraps each layer in `jax.checkpoint` with a policy over
the `checkpoint_name` tags the layers put on their matmul outputs (MaxText's names):
query_proj / key_proj / value_proj, gate_proj (the gated and delta kinds' output gate and their
gate / beta / decay projections: saved with q/k/v), context (attention output before its
projection), out_proj, mlpwi (FFN hidden), mlpwo (FFN output).
"""

import contextlib
import threading
from collections.abc import Callable

import jax
from jax.ad_checkpoint import checkpoint_name

_STATE = threading.local()

BATCH, LENGTH = "activation_batch", "activation_length"
EMBED, HEADS, KV = "activation_embed", "activation_heads", "activation_kv"
MLP, VOCAB = "activation_mlp", "activation_vocab"

_QKV = ("query_proj", "key_proj", "value_proj", "gate_proj")
# name -> jax.checkpoint policy; "none" = no remat, "full" = save nothing (MaxText's names).
REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "minimal": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names(*_QKV),
    "save_dot_except_mlp": jax.checkpoint_policies.save_only_these_names(*_QKV, "out_proj"),
    "save_dot_except_mlpwi": jax.checkpoint_policies.save_only_these_names(
        *_QKV, "out_proj", "mlpwo"
    ),
    # q/k/v kept in host memory between forward and backward (backends with pinned_host).
    "qkv_proj_offloaded": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[],
        names_which_can_be_offloaded=list(_QKV),
        offload_src="device",
        offload_dst="pinned_host",
    ),
}
OFFLOADING = frozenset({"qkv_proj_offloaded"})


@contextlib.contextmanager
def activation_sharding(resolve: Callable):
    """Within the block, `constrain` asks resolve(names, shape) -> Sharding or None."""
    previous = getattr(_STATE, "resolve", None)
    _STATE.resolve = resolve
    try:
        yield
    finally:
        _STATE.resolve = previous


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
    """x with a sharding constraint from its logical axis `names` (one per dim); x itself
    outside an `activation_sharding` context."""
    resolve = getattr(_STATE, "resolve", None)
    if resolve is None:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} names {names} for an array of shape {x.shape}")
    sharding = resolve(names, x.shape)
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def per_device(fn: Callable, *names: tuple | None, out: tuple | None = None) -> Callable:
    """fn run once per device under `jax.shard_map`, each argument split by its logical `names`
    (a tuple per argument; an argument that is None stays None on every device) and the output
    as the first argument, or, with `out` (a tuple of names per output), fn's tuple of outputs
    split by those; fn itself outside an `activation_sharding` context. For kernels XLA cannot
    partition (Pallas/Mosaic)."""
    resolve = getattr(_STATE, "resolve", None)
    if resolve is None:
        return fn

    def run(*args):
        live = [i for i, a in enumerate(args) if a is not None]

        def local(*xs):
            full = list(args)
            for i, x in zip(live, xs, strict=True):
                full[i] = x
            return fn(*full)

        shardings = [resolve(names[i], args[i].shape) for i in live]
        if out is not None:
            shapes = jax.eval_shape(fn, *args)
            shardings += [resolve(n, a.shape) for n, a in zip(out, shapes, strict=True)]
        if any(s is None for s in shardings):
            return fn(*args)
        specs = tuple(s.spec for s in shardings)
        out_specs = specs[0] if out is None else specs[len(live) :]
        return jax.shard_map(
            local,
            mesh=shardings[0].mesh,
            in_specs=specs[: len(live)],
            out_specs=out_specs,
            check_vma=False,
        )(*(args[i] for i in live))

    return run


def platform() -> str:
    """The platform the traced code runs on: the active mesh's devices' (a TPU topology while
    planning on a CPU host), else JAX's default backend."""
    resolve = getattr(_STATE, "resolve", None)
    sharding = None if resolve is None else resolve((), ())
    if sharding is None:
        return jax.default_backend()
    return sharding.mesh.devices.flat[0].platform


def tag(x: jax.Array, name: str, *names: str | None) -> jax.Array:
    """`checkpoint_name(x, name)` (what remat policies select by), then `constrain(x, *names)`."""
    return constrain(checkpoint_name(x, name), *names)


def check_remat(name: str) -> None:
    if name not in REMAT_POLICIES:
        allowed = ", ".join(REMAT_POLICIES)
        raise ValueError(f"remat={name!r} is not allowed; choose one of {allowed}")
