"""Variables that are saved with a model but never trained.

The training state (`research.train.step.TrainState`) splits a model three ways: `nnx.Param`
(differentiated, updated by the optimizer, sharded by logical axes), `Constant` (in
`TrainState.consts`: replicated, checkpointed once, never differentiated, no optimizer moments)
and the rest (RNG streams). `freeze(module)` turns a module's parameters into `Frozen`
constants, which is how BERT-of-Theseus keeps its predecessor fixed (`research.models.theseus`).
"""

from flax import nnx


class Constant(nnx.Variable):
    """A saved variable that no gradient or optimizer touches."""


class Frozen(Constant):
    """A trained parameter, frozen: read like an `nnx.Param`, kept as a `Constant`."""


def freeze(module: nnx.Module) -> int:
    """Replace every `nnx.Param` under `module` by a `Frozen` holding the same array and
    metadata (logical axes), in place. Returns how many were frozen."""
    n = 0
    for path, node in list(nnx.iter_graph(module)):
        if type(node) is not nnx.Param:
            continue
        parent = module
        for name in path[:-1]:
            parent = parent[name] if isinstance(name, int) else getattr(parent, name)
        frozen = Frozen(node.get_value(), **node.get_metadata())
        if isinstance(path[-1], int):
            parent[path[-1]] = frozen
        else:
            setattr(parent, path[-1], frozen)
        n += 1
    return n
