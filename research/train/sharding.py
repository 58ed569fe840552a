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

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# logical axis -> mesh axis. The first rule naming a mesh axis not yet used in a spec wins.
LOGICAL_RULES = (
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
)


def resolve_mesh_shape(mesh: dict, num_devices: int) -> tuple[int, int, int]:
    """{data, fsdp, tensor}, at most one -1 ("the rest") -> sizes multiplying to num_devices."""
    unknown = set(mesh) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; allowed: {', '.join(MESH_AXES)}")
    sizes = [int(mesh.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes, strict=True))}: sizes must be >= 1, "
                         "with at most one -1")  # fmt: skip
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} does not divide "
                             f"{num_devices} devices")  # fmt: skip
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs "
                         f"{math.prod(sizes)} devices, have {num_devices}")  # fmt: skip
    return tuple(sizes)


def make_mesh(mesh: dict, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = resolve_mesh_shape(dict(mesh), len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_to_spec(names, shape, mesh: Mesh) -> P:
    """PartitionSpec for a parameter: each named dim goes to its mesh axis when that axis is not
    used yet in this spec and divides the dim; otherwise the dim is replicated."""
    used, spec = set(), []
    rules = dict(LOGICAL_RULES)
    for name, dim in zip(names, shape, strict=True):
        axis = rules.get(name)
        if axis not in mesh.shape or axis in used or dim % mesh.shape[axis]:
            spec.append(None)
        else:
            used.add(axis)
            spec.append(axis)
    return P(*spec)


def state_shardings(state: nnx.State, mesh: Mesh) -> dict:
    """Pure nested dict (as `nnx.to_pure_dict`) of NamedShardings from `logical_axes` metadata."""
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        names = var.get_metadata().get("logical_axes", (None,) * var.get_value().ndim)
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = NamedSharding(mesh, logical_to_spec(names, var.get_value().shape, mesh))
    return out


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
