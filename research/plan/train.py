"""Plan a training run without its hardware: the real train (eval, decode) step, compiled.

The model, optimizer state and batch are abstract (`jax.ShapeDtypeStruct`s carrying the same
NamedShardings as training, from `research.train.sharding`); nothing is materialised. The real
train step (`research.train.step.make_train_step`) is lowered and compiled for the topology's
devices, and XLA's `memory_analysis()` / `cost_analysis()` give per-device bytes and FLOPs.
The same path runs on this machine's CPU devices (`topology="cpu"`), which is how the tests
check its predictions against a real run.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from research import tasks
from research.config import RunConfig
from research.plan.compiler import Plan, compile_for_devices
from research.train import optim, sharding, step
from research.train.config import ConfigError, parse


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)  # fmt: skip


def _model(run: RunConfig, max_length: int):
    """The task's model with abstract parameters (nothing is allocated)."""
    if run.task == "seq2seq":
        raise ConfigError("research.plan supports the lm and mqar tasks; seq2seq is not wired yet")
    task = tasks.get(run.task)
    mcfg = task.model_config(run, vocab_size=run.data.vocab_size, max_length=max_length)
    return nnx.eval_shape(lambda: task.build_model(run, mcfg, rngs=nnx.Rngs(params=0, dropout=1)))


def abstract_train(run: RunConfig, devices):
    """(mesh, ModelDef, optimizer, TrainState shardings, abstract TrainState, abstract batch)."""
    mesh = sharding.make_mesh(run.mesh.as_dict(), devices)
    model = _model(run, run.data.seq_len)
    model_def, params, consts = step.split_model(model)
    opt = optim.make_optimizer(run.optimizer, run.train.num_train_steps)
    sh = step.state_shardings(opt, params, consts, mesh)
    abstract_params = _abstract(nnx.to_pure_dict(params), sh.params)
    abstract_opt = _abstract(jax.eval_shape(opt.init, abstract_params), sh.opt_state)
    state = step.TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32, sharding=sh.step),
        params=abstract_params,
        opt_state=abstract_opt,
        consts=_abstract(nnx.to_pure_dict(consts), sh.consts),
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sh.rng),
    )
    shape, bsh = (run.train.batch_size, run.data.seq_len), sharding.batch_sharding(mesh)
    batch = {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=bsh),
             "targets": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=bsh),
             "weights": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=bsh)}  # fmt: skip
    return mesh, model_def, opt, sh, state, batch


def check(c, num_devices: int) -> RunConfig:
    """The training config's own checks, plus the batch split over this many devices."""
    run = parse(c, num_devices=num_devices)
    data, fsdp, _ = sharding.resolve_mesh_shape(run.mesh.as_dict(), num_devices)
    if run.train.batch_size % (data * fsdp):
        raise ConfigError(
            f"batch_size={run.train.batch_size} is not divisible by data x fsdp = {data * fsdp} on "
            f"{num_devices} devices; set --config.batch_size or --config.mesh.*"
        )
    return run


def _decode_plan(run: RunConfig, mesh, new_tokens: int) -> Plan:
    """Greedy decoding of `new_tokens` after a batch_size x seq_len prompt (KV cache or
    recurrent state), parameters sharded by the training rules, batch over (data, fsdp)."""
    from research.ops import decoding

    model = _model(run, run.data.seq_len + new_tokens)
    model.eval()
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    abstract_params = _abstract(nnx.to_pure_dict(params), sharding.state_shardings(params, mesh))
    rep = sharding.replicated(mesh)
    abstract_rest = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                                 nnx.to_pure_dict(rest))  # fmt: skip
    prompt = jax.ShapeDtypeStruct((run.train.batch_size, run.data.seq_len), jnp.int32,
                                  sharding=sharding.batch_sharding(mesh))  # fmt: skip

    def decode(params, rest, prompt):
        m = nnx.merge(graph, params, rest)
        logits, cache = m.prefill(prompt, max_length=prompt.shape[1] + new_tokens)
        return decoding.greedy(m.decode_step, logits, cache, max_new_tokens=new_tokens)

    return compile_for_devices("decode", jax.jit(decode), abstract_params, abstract_rest, prompt)[0]


def plan_train(c, devices, *, eval_step: bool = False, decode_tokens: int = 0) -> list[Plan]:
    """Compile the real train step (and the eval step, and greedy decoding of `decode_tokens`
    after a full-length prompt) for `devices`; per-device figures."""
    run = check(c, len(devices))
    mesh, model_def, opt, sh, state, batch = abstract_train(run, devices)
    loss_fn = tasks.get(run.task).loss_fn(run, None)
    train = step.make_train_step(model_def, opt, loss_fn, mesh=mesh, shardings=sh,
                                 accum_steps=run.train.accum_steps)  # fmt: skip
    plans = [compile_for_devices("train", train, state, batch)[0]]
    if eval_step:
        ev = step.make_eval_step(model_def, loss_fn, mesh=mesh, shardings=sh)
        plans.append(compile_for_devices("eval", ev, state, batch)[0])
    if decode_tokens:
        plans.append(_decode_plan(run, mesh, decode_tokens))
    return plans
