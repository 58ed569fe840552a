"""Device mesh (data, fsdp, tensor) and the one table mapping logical axes to mesh axes.

Models annotate parameters with logical axis names (`research.models.layers.axes`); this module
turns them into `NamedSharding`s. Batch dimensions are split over (data, fsdp): FSDP shards
parameters over `fsdp` and, like data parallelism, gives each device its own examples.
"""

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# Logical axis -> mesh axis (or axes), for parameters and activations alike (MaxText's
# logical_axis_rules). Parameters: vocab, heads, kv, mlp, embed. Activations
# (research.models.partitioning): the batch over (data, fsdp), so FSDP keeps every
# activation batch-sharded; their heads, mlp and vocab dims, and the residual stream's embed dim,
# over tensor. A mesh axis already used earlier in a spec is not used again.
LOGICAL_RULES = (
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("layers", None),  # stacked layers (scan_layers): each device holds every layer's shard
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def resolve_mesh_shape(mesh: dict, num_devices: int) -> tuple[int, int, int]:
    """{data, fsdp, tensor}, at most one -1 ("the rest") -> sizes multiplying to num_devices."""
    unknown = set(mesh) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; allowed: {', '.join(MESH_AXES)}")
    sizes = [int(mesh.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes, strict=True))}: sizes must be >= 1, "
            "with at most one -1"
        )
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} does not divide "
                f"{num_devices} devices"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs "
            f"{math.prod(sizes)} devices, have {num_devices}"
        )
    return tuple(sizes)


def make_mesh(mesh: dict, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = resolve_mesh_shape(dict(mesh), len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_to_spec(names, shape, mesh: Mesh) -> P:
    """PartitionSpec for a parameter or activation: each named dim goes to its rule's mesh
    axes (those in the mesh and not used yet in this spec) when their product divides the dim;
    otherwise the dim is replicated."""
    used, spec = set(), []
    rules = dict(LOGICAL_RULES)
    for name, dim in zip(names, shape, strict=True):
        rule = rules.get(name)
        wanted = () if rule is None else (rule,) if isinstance(rule, str) else tuple(rule)
        axes = tuple(a for a in wanted if a in mesh.shape and a not in used)
        size = math.prod(mesh.shape[a] for a in axes)
        if not axes or dim % size:
            spec.append(None)
        else:
            used.update(axes)
            spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def activation_resolver(mesh: Mesh):
    """resolve(names, shape) -> NamedSharding for `research.models.partitioning.constrain`."""

    def resolve(names, shape):
        return NamedSharding(mesh, logical_to_spec(names, shape, mesh))

    return resolve


def state_shardings(state: nnx.State, mesh: Mesh) -> dict:
    """Pure nested dict (as `nnx.to_pure_dict`) of NamedShardings from `logical_axes` metadata."""
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        names = var.get_metadata().get("logical_axes", (None,) * var.get_value().ndim)
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        shape = var.get_value().shape
        spec = _fully_sharded(logical_to_spec(names, shape, mesh), names, shape, mesh)
        node[path[-1]] = NamedSharding(mesh, spec)
    return out


def _fully_sharded(spec: P, names, shape, mesh: Mesh) -> P:
    """A parameter spec that does not use fsdp yet (the q/k/v and FFN biases: their one dim
    is named for tensor parallelism) also splits its first dim that divides over fsdp, so FSDP
    shards every parameter and its optimizer state (ZeRO-3); per-device bytes x fsdp stay
    constant. A stacked "layers" dim is never split (the scan slices it every layer)."""
    entries = [() if e is None else (e,) if isinstance(e, str) else tuple(e) for e in spec]
    entries += [()] * (len(shape) - len(entries))
    if "fsdp" not in mesh.shape or mesh.shape["fsdp"] == 1 or any("fsdp" in e for e in entries):
        return spec
    for i, (axes, dim, name) in enumerate(zip(entries, shape, names, strict=True)):
        if name == "layers":
            continue
        size = math.prod(mesh.shape[a] for a in axes) * mesh.shape["fsdp"]
        if dim % size == 0:
            entries[i] = (*axes, "fsdp")
            return P(*(None if not e else e[0] if len(e) == 1 else e for e in entries))
    return spec


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def host_device() -> jax.Device:
    """This process's CPU device (host memory), where the training loop builds the model before
    it is placed on the mesh; the default device where JAX was started without the CPU backend."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return jax.local_devices()[0]


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_tensor_axis(mcfg, mesh: Mesh) -> None:
    """The tensor axis must divide what it splits, in the model the run builds (a pretrained
    init's architecture, the tokenizer's vocabulary): otherwise that dimension is silently
    replicated, or for the heads head_dim takes the axis instead. Raises a one-line ConfigError."""
    tensor = mesh.shape.get("tensor", 1)
    if tensor == 1:
        return
    for size, what in (
        (mcfg.num_heads, f"model.num_heads={mcfg.num_heads}: head_dim would take the axis"),
        (mcfg.d_ff, f"model.d_ff={mcfg.d_ff}: the feed-forward would be replicated"),
        (
            mcfg.vocab_size,
            f"the vocabulary's {mcfg.vocab_size} tokens: the embeddings and logits would be "
            "replicated (pad the vocabulary to a multiple)",
        ),
    ):
        if size % tensor:
            head, _, rest = what.partition(": ")
            raise ConfigError(f"{head} is not divisible by mesh.tensor={tensor}; {rest}")
