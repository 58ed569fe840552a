"""Parameters in and out of a built model: restore a run's Orbax checkpoint, copy between models.

`restore` reads only the `params`/`consts` of a training checkpoint (`research.train.step`
TrainState), not the optimizer state. `transfer` starts a model from another one's weights:
every parameter whose path and shape match is copied, the rest (a new classification head, say)
keep their initialisation. Together they put a pretrained MLM under a classifier or a PET run.
"""

import pathlib

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from research.models import stack
from research.models.variables import Constant


def _manager(directory) -> ocp.CheckpointManager:
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
    path = pathlib.Path(directory).expanduser().absolute()  # Orbax takes absolute paths only
    return ocp.CheckpointManager(path, item_handlers=handlers)


def checkpoint_steps(directory) -> list[int]:
    """Steps saved under an Orbax `directory` (the run's `workdir/checkpoints`), ascending."""
    if not pathlib.Path(directory).expanduser().is_dir():
        return []
    manager = _manager(directory)
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def read_checkpoint(directory, step: int, *, config: bool = False, model=None):
    """The JSON config (config=True) and/or `model`'s params and consts at `step`.

    Returns (config dict or None, model with restored parameters or None). Parameters are
    placed on the device `model`'s own arrays are on; names and shapes must match `model`'s
    (ValueError naming the first that does not, before any array is read).
    """
    manager = _manager(directory)
    try:
        raw = None
        if config:
            raw = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
            raw = raw.config
        if model is None:
            return raw, None
        graph, params, consts, rest = nnx.split(model, nnx.Param, Constant, ...)
        target = {"params": nnx.to_pure_dict(params), "consts": nnx.to_pure_dict(consts)}
        # where the model's own arrays are (the training loop builds it in host memory)
        leaves = jax.tree.leaves(target)
        home = min(leaves[0].devices(), key=lambda d: d.id) if leaves else jax.devices()[0]
        device = jax.sharding.SingleDeviceSharding(home)
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), target
        )
        _check_shapes(pathlib.Path(directory).expanduser() / str(step) / "state", target)
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=abstract,
                    partial_restore=True,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                )
            ),
        )
    finally:
        manager.close()
    nnx.replace_by_pure_dict(params, restored.state["params"])
    nnx.replace_by_pure_dict(consts, restored.state["consts"])
    return raw, nnx.merge(graph, params, consts, rest)


def _check_shapes(path: pathlib.Path, target) -> None:
    """ValueError naming the first array of `target` that the saved state at `path` lacks or
    holds in another shape. Orbax finds it too, but only mid-restore, after its reads of the
    other arrays have started: they are then dropped unawaited ("Exception ignored" at exit).
    Unreadable metadata is left to the restore to report."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        saved = array_shapes(handler.metadata(path).tree)
    except Exception:  # noqa: BLE001 - no metadata to compare: the restore says what is wrong
        return
    finally:
        handler.close()
    for name, shape in array_shapes(target).items():
        if saved.get(name) != shape:
            got = "absent" if name not in saved else saved[name]
            raise ValueError(f"{name}: saved {got}, this model {shape}")


def array_shapes(tree) -> dict[str, tuple]:
    """{"params/embed/token/embedding": shape} for every array leaf of a state, a model's pure
    dict or Orbax's metadata of either (path parts by dict key, sequence index or attribute)."""

    def name(k):
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {"/".join(map(name, p)): tuple(x.shape) for p, x in leaves if hasattr(x, "shape")}


def transfer(src: nnx.Module, dst: nnx.Module) -> tuple[list[str], list[str]]:
    """Copy every parameter of `src` into `dst` whose path and shape agree; in place.

    Layers match by number whether either model stacks them (`ModelConfig.scan_layers`) or
    not, so a scanned model starts from an unrolled one and back, and a k-layer model from the
    first k layers of a deeper one. Returns (copied paths, paths of `dst` left as initialised),
    paths "a/b/c" with per-layer paths "layers/i/..." in both forms. A path both have with
    different shapes raises ValueError (a vocabulary or width mismatch is a mistake, not a
    fresh head). `unused_paths(src, copied)` names what of `src` was left out.
    """
    source = {}
    for path, var in nnx.to_flat_state(nnx.state(src, nnx.Any(nnx.Param, Constant))):
        value, k = var.get_value(), stack.stack_position(path, var)
        if k is None:
            source[path] = value
        else:  # one entry per layer, as an unrolled model names them
            for i in range(value.shape[0]):
                source[stack.layer_path(path, k, i)] = value[i]
    state = nnx.state(dst, nnx.Any(nnx.Param, Constant))
    copied, fresh = [], []
    for path, var in nnx.to_flat_state(state):
        value, k = var.get_value(), stack.stack_position(path, var)
        layers = [None] if k is None else range(value.shape[0])
        parts = []  # the new value, layer by layer (stacked once: no copy per layer)
        for i in layers:
            at = path if i is None else stack.layer_path(path, k, i)
            name = "/".join(map(str, at))
            mine = value if i is None else value[i]
            if at not in source:
                fresh.append(name)
                parts.append(mine)
                continue
            if source[at].shape != mine.shape:
                raise ValueError(
                    f"parameter {name}: pretrained shape {source[at].shape} != "
                    f"model shape {mine.shape}"
                )
            parts.append(jnp.asarray(source[at], mine.dtype))
            copied.append(name)
        var.set_value(parts[0] if k is None else jnp.stack(parts))
    nnx.update(dst, state)
    return copied, fresh


def unused_paths(src: nnx.Module, copied: list[str]) -> list[str]:
    """The parameters of `src` that `transfer` did not copy (a pretrained head the new model
    has no place for, layers past a shallower model's), as paths "a/b/c". Per-layer paths are
    "layers/i/..." as `transfer` names them; a stacked parameter is one path whose layer part
    lists the layers left out ("layers/3,4,5/...", or "layers/*/..." for all of them)."""
    taken = set(copied)
    out = []
    for path, var in nnx.to_flat_state(nnx.state(src, nnx.Any(nnx.Param, Constant))):
        k = stack.stack_position(path, var)
        if k is None:
            name = "/".join(map(str, path))
            if name not in taken:
                out.append(name)
            continue
        n = var.get_value().shape[0]
        left = [
            i for i in range(n) if "/".join(map(str, stack.layer_path(path, k, i))) not in taken
        ]
        if left:
            which = "*" if len(left) == n else ",".join(map(str, left))
            out.append("/".join(map(str, stack.layer_path(path, k, which))))
    return sorted(out)
