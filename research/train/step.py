"""Train state and step functions: pure functions of (state, batch), compiled with shardings.

The model is split once into a graph definition and pure nested dicts of arrays (`nnx.split`,
`nnx.to_pure_dict`); every step merges them back inside `jax.jit` (the Flax gemma example's
habit), so the state is a plain pytree that jit, optax and Orbax all handle.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from research.models import partitioning
from research.models.variables import Constant
from research.train import sharding

# loss_fn(model, batch, *, key=None, step=None) -> (loss_sum, weight_sum, {metric: sum}), fp32
# scalars. Training passes a per-step PRNG key and the step (for remedies that sample or follow
# a schedule); evaluation passes neither.
LossFn = Callable[[nnx.Module, dict], tuple[jax.Array, jax.Array, dict]]


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar, steps taken
    params: dict  # trained parameters (nnx.Param), pure nested dict
    opt_state: Any  # optax state
    consts: dict  # `Constant`s: saved, not trained (FAVOR projections, a frozen predecessor)
    rng: jax.Array  # uint32 key data; step t uses fold_in(rng, t)


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """Everything needed to rebuild the model from pure state inside a jitted function."""

    train_graph: Any
    eval_graph: Any
    rng_state: dict  # dropout stream state, reseeded every step

    def merge(self, params, consts, *, train: bool, key=None):
        model = nnx.merge(
            self.train_graph if train else self.eval_graph, params, consts, self.rng_state
        )
        if key is not None:
            # Stacked layers (scan_layers) hold one dropout key per layer: split the step's key.
            nnx.reseed(model, dropout=key, policy="match_shape")
        return model


def split_model(model: nnx.Module) -> tuple[ModelDef, nnx.State, nnx.State]:
    """-> (ModelDef, params State, consts State). Leaves the model in eval mode."""
    model.train()
    train_graph, params, consts, rngs = nnx.split(model, nnx.Param, Constant, ...)
    model.eval()
    eval_graph = nnx.split(model, nnx.Param, Constant, ...)[0]
    return ModelDef(train_graph, eval_graph, nnx.to_pure_dict(rngs)), params, consts


def state_shardings(optimizer, params: nnx.State, consts: nnx.State, mesh: Mesh) -> TrainState:
    """NamedShardings for every leaf of the TrainState; optimizer moments follow their params."""
    param_sh = sharding.state_shardings(params, mesh)
    rep = sharding.replicated(mesh)
    abstract_params = jax.eval_shape(lambda: nnx.to_pure_dict(params))
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    opt_sh = optax.tree_map_params(
        optimizer,
        lambda _, s: s,
        abstract_opt,
        param_sh,
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, jax.sharding.Sharding),
    )
    consts_sh = jax.tree.map(lambda _: rep, nnx.to_pure_dict(consts))
    return TrainState(rep, param_sh, opt_sh, consts_sh, rep)


def init_state(optimizer, params: nnx.State, consts: nnx.State, seed: int, shardings: TrainState):
    """Places parameters by their shardings and initialises the optimizer state in place."""
    pure = jax.device_put(nnx.to_pure_dict(params), shardings.params)
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(pure)
    return TrainState(
        step=jax.device_put(jnp.int32(0), shardings.step),
        params=pure,
        opt_state=opt_state,
        consts=jax.device_put(nnx.to_pure_dict(consts), shardings.consts),
        rng=jax.device_put(jax.random.key_data(jax.random.key(seed)), shardings.rng),
    )


def _grads(model_def: ModelDef, loss_fn: LossFn, params, consts, batch, key, step=None):
    # Two independent keys: reseeding gives the i-th Dropout the stream key fold_in(key, i), so
    # a loss key of fold_in(key, 1) was the first layer's dropout stream key.
    dropout_key, loss_key = jax.random.split(key)

    def f(p):
        model = model_def.merge(p, consts, train=True, key=dropout_key)
        loss_sum, weight_sum, sums = loss_fn(model, batch, key=loss_key, step=step)
        return loss_sum, (weight_sum, sums)

    (loss_sum, (weight_sum, sums)), grads = jax.value_and_grad(f, has_aux=True)(params)
    return grads, loss_sum, weight_sum, sums


def _accumulated_grads(model_def, loss_fn, params, consts, batch, key, accum_steps: int, step=None):
    """Sums of gradients and losses over `accum_steps` microbatches (exact, not mean of means)."""
    if accum_steps == 1:
        return _grads(model_def, loss_fn, params, consts, batch, key, step)

    def split(x):
        # Microbatch i takes rows i, i + accum, ...: each device keeps its own rows local.
        return jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 0, 1)

    def body(carry, xs):
        i, micro = xs
        out = _grads(model_def, loss_fn, params, consts, micro, jax.random.fold_in(key, i), step)
        return jax.tree.map(jnp.add, carry, out), None

    micro = jax.tree.map(split, batch)
    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(
        jnp.zeros_like,
        jax.eval_shape(lambda: _grads(model_def, loss_fn, params, consts, first, key, step)),
    )
    total, _ = lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
    return total


def _apply(optimizer, state: TrainState, grads, loss_sum, weight_sum, sums):
    # d(loss_sum)/dp / weight_sum is the gradient of the exact token-mean loss.
    grads = jax.tree.map(lambda g: g / jnp.maximum(weight_sum, 1.0), grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss_sum": loss_sum,
        "weight_sum": weight_sum,
        "grad_norm": optax.tree.norm(grads),
        # whether every parameter out of the update is finite (the loop saves no state that
        # is not); one reduction over the parameters, beside the optimizer's several passes
        "params_finite": jnp.all(
            jnp.stack([jnp.isfinite(p).all() for p in jax.tree.leaves(params)])
        ),
        **sums,
    }
    return state._replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(
    model_def: ModelDef,
    optimizer,
    loss_fn: LossFn,
    *,
    mesh: Mesh,
    shardings: TrainState,
    accum_steps: int = 1,
):
    """jax.jit step on the (data, fsdp, tensor) mesh: state sharded by rules, batch over
    (data, fsdp), activations constrained by the same rules (`research.models.partitioning`),
    state donated. Returns step(state, batch) -> (state, metric sums)."""

    def step(state: TrainState, batch: dict):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        # Traced inside: every activation the layers name is constrained on the mesh.
        with partitioning.activation_sharding(sharding.activation_resolver(mesh)):
            out = _accumulated_grads(
                model_def, loss_fn, state.params, state.consts, batch, key, accum_steps, state.step
            )
        return _apply(optimizer, state, *out)

    rep = sharding.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(shardings, sharding.batch_sharding(mesh)),
        out_shardings=(shardings, rep),
        donate_argnums=0,
    )


def make_shard_map_step(
    model_def: ModelDef,
    optimizer,
    loss_fn: LossFn,
    *,
    mesh: Mesh,
    accum_steps: int = 1,
    axis: str = "data",
):
    """pmap-style data parallelism with explicit collectives (`jax.shard_map`).

    Parameters and optimizer state are replicated; each device takes its slice of the batch,
    computes gradient and loss *sums*, and `lax.psum`s them over `axis` before one identical
    update everywhere. Summing (rather than `pmean` of per-device means) keeps the mean exact
    when devices hold different numbers of real tokens; with equal counts the two agree.
    """

    def local(state: TrainState, batch: dict):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        key = jax.random.fold_in(key, lax.axis_index(axis))  # distinct dropout per device
        out = _accumulated_grads(
            model_def, loss_fn, state.params, state.consts, batch, key, accum_steps, state.step
        )
        return _apply(optimizer, state, *lax.psum(out, axis))

    # check_vma=False: gradients stay per-device partial sums until the explicit psum above.
    # With it on, autodiff of the replicated params already psums some cotangents, and the
    # explicit psum would count those gradients axis-size times (a test catches this).
    mapped = jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(axis)), out_specs=(P(), P()), check_vma=False
    )
    return jax.jit(mapped, donate_argnums=0)


def make_eval_step(model_def: ModelDef, loss_fn: LossFn, *, mesh: Mesh, shardings: TrainState):
    """Eval sums (loss, weight, task metrics) with dropout off."""

    def step(state: TrainState, batch: dict):
        with partitioning.activation_sharding(sharding.activation_resolver(mesh)):
            loss_sum, weight_sum, sums = loss_fn(
                model_def.merge(state.params, state.consts, train=False), batch
            )
        return {"loss_sum": loss_sum, "weight_sum": weight_sum, **sums}

    return jax.jit(
        step,
        in_shardings=(shardings, sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )
