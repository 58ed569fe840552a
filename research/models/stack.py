"""Layer stacks: n identical `Block`s run in order, unrolled or scanned over a `layers` axis.

Unrolled (the default): an `nnx.List` of Blocks run by a Python loop, so XLA compiles every
layer and compile time grows with depth. Scanned (`ModelConfig.scan_layers`, MaxText's
`scan_layers`): one `Block` whose variables are stacked on a leading axis (logical axis
"layers", never sharded) and run by `jax.lax.scan`: one compiled layer body, the remat policy
applied to that body, compile time flat in depth. Both forms are built from the same n Blocks
drawn from the same RNG streams (`stack_blocks` stacks them), so a model starts from the same
parameters either way, and `stack_blocks` / `unstack_blocks` turn one form into the other
(HF import, `research.models.params.transfer`).

Decoding caches keep batch as their leading axis in both forms (`research.ops.decoding` reorders
beams along it): unrolled, cache["layers"] is a list of per-layer dicts; scanned, one dict
whose leaves are [B, n_layers, ...] and the scanned body reads and writes its layer's slice.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from research.models.config import ModelConfig
from research.models.layers import Block, call_layer
from research.models.partitioning import REMAT_POLICIES
from research.models.variables import Constant

LAYERS = "layers"  # logical axis of stacked layer variables (never sharded)


def make_layers(cfg: ModelConfig, n: int, *, rngs: nnx.Rngs, **block_kwargs):
    """n Blocks: an `nnx.List`, or with cfg.scan_layers one Block of stacked variables."""
    blocks = [Block(cfg, rngs=rngs, **block_kwargs) for _ in range(n)]
    return stack_blocks(blocks) if cfg.scan_layers else nnx.List(blocks)


def is_scanned(layers) -> bool:
    return isinstance(layers, Block)


def num_layers(layers) -> int:
    if not is_scanned(layers):
        return len(layers)
    return jax.tree.leaves(nnx.state(layers, nnx.Param))[0].shape[0]


def _saved(var) -> bool:
    return isinstance(var, nnx.Param | Constant)


def stack_blocks(blocks) -> Block:
    """Blocks of one architecture -> one Block whose variables are stacked on axis 0; the
    parameters' and constants' logical axes gain a leading "layers"."""
    graphdef = nnx.graphdef(blocks[0])
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(nnx.state(b) for b in blocks))
    for _, var in nnx.to_flat_state(stacked):
        if _saved(var):
            inner = var.get_value().ndim - 1
            var.set_metadata(
                logical_axes=(LAYERS, *var.get_metadata().get("logical_axes", (None,) * inner))
            )
    return nnx.merge(graphdef, stacked)


def layer_at(layers: Block, i) -> Block:
    """Layer i of a stacked Block, as a plain Block (a copy: writes do not reach the stack)."""
    graphdef, state = nnx.split(layers)
    state = jax.tree.map(lambda x: x[i], state)
    for _, var in nnx.to_flat_state(state):
        if _saved(var) and var.get_metadata().get("logical_axes", ())[:1] == (LAYERS,):
            var.set_metadata(logical_axes=var.get_metadata()["logical_axes"][1:])
    return nnx.merge(graphdef, state)


def unstack_blocks(layers: Block) -> nnx.List:
    """The inverse of `stack_blocks`: an `nnx.List` of n Blocks."""
    return nnx.List([layer_at(layers, i) for i in range(num_layers(layers))])


def scan(layers: Block, fn, carry, xs=None, *, remat: str = "none"):
    """fn(layer, carry, x) -> (carry, y) over the stacked layers in order (x: layer i's slice of
    xs), as one `jax.lax.scan` whose body is rematerialised by `remat`'s policy.

    Returns (carry, ys stacked on axis 0). The layers' RNG streams (dropout) advance as in the
    unrolled loop; nothing else of the layers is written back."""
    graphdef, state = nnx.split(layers)
    # Only a training-mode dropout draws: then the streams' counts come back out of the scan.
    # (Writing them back otherwise would mutate a model from inside decoding's while loop.)
    draws = any(
        isinstance(m, nnx.Dropout) and m.rate > 0 and not m.deterministic
        for _, m in nnx.iter_graph(layers)
    )

    def body(c, inputs):
        layer_state, x = inputs
        layer = nnx.merge(graphdef, layer_state)
        c, y = fn(layer, c, x)
        return c, (nnx.state(layer, nnx.RngState) if draws else None, y)

    if remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
    carry, (rng_state, ys) = jax.lax.scan(body, carry, (state, xs))
    if draws:
        nnx.update(layers, rng_state)
    return carry, ys


def run_layers(cfg: ModelConfig, layers, x, **kwargs):
    """x through every layer (layer(x, **kwargs)), rematerialised by cfg.remat."""
    if not is_scanned(layers):
        for layer in layers:
            x = call_layer(cfg, layer, x, **kwargs)
        return x
    return scan(layers, lambda layer, h, _: (layer(h, **kwargs), None), x, remat=cfg.remat)[0]


def init_cache(layers, batch: int, max_length: int):
    """The empty self-attention caches: a list of per-layer dicts, or one dict of [B, n, ...]."""
    if not is_scanned(layers):
        return [{"self": layer.attn.init_cache(batch, max_length)} for layer in layers]
    one = {"self": layer_at(layers, 0).attn.init_cache(batch, max_length)}
    n = num_layers(layers)
    return jax.tree.map(lambda a: jnp.repeat(a[:, None], n, axis=1), one)


def run_cached(layers, fn, x, caches):
    """fn(layer, x, layer_cache) -> (x, layer_cache) through every layer, with `init_cache`'s
    caches. Returns (x, caches)."""
    if not is_scanned(layers):
        new = []
        for layer, lc in zip(layers, caches, strict=True):
            x, lc = fn(layer, x, lc)
            new.append(lc)
        return x, new

    def body(layer, carry, i):
        h, c = carry
        h, lc = fn(layer, h, jax.tree.map(lambda a: a[:, i], c))
        return (h, jax.tree.map(lambda a, b: a.at[:, i].set(b.astype(a.dtype)), c, lc)), None

    return scan(layers, body, (x, caches), jnp.arange(num_layers(layers)))[0]


def map_layers(layers, fn):
    """[fn(layer) for each layer]; scanned, one result whose leaves are [B, n, ...] (fn's
    leaves must lead with batch, as cache entries do)."""
    if not is_scanned(layers):
        return [fn(layer) for layer in layers]
    ys = scan(layers, lambda layer, c, _: (c, fn(layer)), None)[1]
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), ys)


STACKS = ("encoder", "layers")  # the attributes of our models that hold layer stacks


def convert(model: nnx.Module, *, scan: bool) -> nnx.Module:
    """`model` with its layer stacks scanned (scan=True) or unrolled, in place; model.cfg's
    scan_layers follows. Parameters and outputs do not change."""
    for name in STACKS:
        layers = getattr(model, name, None)
        if layers is None or is_scanned(layers) == scan:
            continue
        setattr(model, name, stack_blocks(list(layers)) if scan else unstack_blocks(layers))
    model.cfg = model.cfg.replace(scan_layers=scan)
    return model


def stack_position(path: tuple, var) -> int | None:
    """For a stacked layer variable at `path`, the index of its stack's name in the path (the
    per-layer path inserts the layer number after it; the innermost stack name, so a model
    held by a wrapper attribute named "encoder" still works); None for any other variable."""
    if var.get_metadata().get("logical_axes", ())[:1] != (LAYERS,):
        return None
    return max((k for k, name in enumerate(path) if name in STACKS), default=None)


def layer_path(path: tuple, k: int, i: int) -> tuple:
    """Layer i's path of a stacked variable at `path` (`stack_position` k): as an unrolled
    model names it, the layer number after the stack's name."""
    return (*path[: k + 1], i, *path[k + 1 :])
