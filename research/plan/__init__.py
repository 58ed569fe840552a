"""Plan a run for a TPU topology without the TPU: compile ahead of time, read memory and FLOPs.

The model, optimizer state and batch are abstract (`jax.ShapeDtypeStruct`s carrying the same
NamedShardings as training, from `research.train.sharding`); nothing is materialised. The real
train step (`research.train.step.make_train_step`) is lowered and compiled for the topology's
devices, and XLA's `memory_analysis()` / `cost_analysis()` give per-device bytes and FLOPs.
The same path runs on this machine's CPU devices (`topology="cpu"`), which is how the tests
check its predictions against a real run.
"""

import dataclasses
import math
import os
import re
import time

import jax
import jax.numpy as jnp
from flax import nnx

from research.plan.chips import CHIPS, Chip, MissingLibtpu, parse_topology, tpu_devices
from research.train import optim, sharding, step, tasks
from research.train.config import ConfigError, model_config, validate

__all__ = ["CHIPS", "Chip", "MissingLibtpu", "Plan", "cpu_chip", "devices_for", "plan_train"]


@dataclasses.dataclass
class Plan:
    """Per-device compiler figures for one compiled step."""

    name: str  # "train" | "eval"
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written into donated arguments (counted once)
    temp_bytes: int
    flops: float
    bytes_accessed: float
    compile_seconds: float
    note: str = ""  # set when the compiler refused (out of memory): its own message

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    def roofline_seconds(self, chip: Chip) -> float:
        return max(self.flops / chip.peak_flops, self.bytes_accessed / chip.hbm_bandwidth)


def cpu_chip(num_devices: int) -> Chip:
    """This machine as a 'chip': RAM split over the (possibly fake) devices, measured matmul
    FLOP/s and copy bandwidth, so CPU plans use the same roofline arithmetic."""
    from research.bench.common import matmul_peak, median_time

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    x = jnp.ones((1 << 24,), jnp.float32)
    copy = jax.jit(lambda x: x + 1)
    bandwidth = 2 * x.nbytes / median_time(copy, x, repeats=3)  # read + write
    return Chip("cpu", ram // num_devices, matmul_peak(1024), bandwidth, float("inf"))


def devices_for(topology: str, num_slices: int = 1):
    """(devices, chip) for 'cpu' (this machine's devices) or a TPU topology name."""
    if num_slices < 1:
        raise ValueError(f"num_slices={num_slices}: must be >= 1")
    if topology == "cpu":
        devices = jax.devices("cpu")
        return devices, cpu_chip(len(devices))
    chip, _ = parse_topology(topology)
    return tpu_devices(topology, num_slices), chip


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)  # fmt: skip


def abstract_train(c, devices):
    """(mesh, ModelDef, optimizer, TrainState shardings, abstract TrainState, abstract batch)."""
    mesh = sharding.make_mesh(dict(c.mesh), devices)
    mcfg = model_config(c, vocab_size=c.data.vocab_size, max_length=c.data.seq_len)
    if c.task == "seq2seq":
        raise ConfigError("research.plan supports the lm and mqar tasks; seq2seq is not wired yet")
    model_cls = tasks.model_class(c)
    model = nnx.eval_shape(lambda: model_cls(mcfg, rngs=nnx.Rngs(params=0, dropout=1)))
    model_def, params, consts = step.split_model(model)
    opt = optim.make_optimizer(c.optimizer, c.num_train_steps)
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
    shape, bsh = (c.batch_size, c.data.seq_len), sharding.batch_sharding(mesh)
    batch = {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=bsh),
             "targets": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=bsh),
             "weights": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=bsh)}  # fmt: skip
    return mesh, model_def, opt, sh, state, batch


def _shard_bytes(tree) -> int:
    """Bytes one device holds of abstract arrays with shardings (the largest shard)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))  # fmt: skip


_OOM = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\)")


def _compile(name, fn, *args) -> tuple[Plan, object]:
    t0 = time.perf_counter()
    try:
        compiled = fn.lower(*args).compile()
    except jax.errors.JaxRuntimeError as e:
        # The TPU compiler stops when temporaries exceed HBM; its figure is the plan then.
        m = _OOM.search(str(e))
        if "RESOURCE_EXHAUSTED" not in str(e) or not m:
            raise
        temp = float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")
        note = str(e).split("RESOURCE_EXHAUSTED: ")[-1].splitlines()[0]
        plan = Plan(name, _shard_bytes(args), 0, 0, int(temp), math.nan, math.nan,
                    time.perf_counter() - t0, note)  # fmt: skip
        return plan, None
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older jax returned a list per device
    plan = Plan(name, int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                int(m.alias_size_in_bytes), int(m.temp_size_in_bytes),
                float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)),
                seconds)  # fmt: skip
    return plan, compiled


def check(c, num_devices: int) -> None:
    """The training config's own checks, plus the batch split over this many devices."""
    validate(c, num_devices=num_devices)
    data, fsdp, _ = sharding.resolve_mesh_shape(dict(c.mesh), num_devices)
    if c.batch_size % (data * fsdp):
        raise ConfigError(
            f"batch_size={c.batch_size} is not divisible by data x fsdp = {data * fsdp} on "
            f"{num_devices} devices; set --config.batch_size or --config.mesh.*"
        )


def _decode_plan(c, devices, mesh, new_tokens: int) -> Plan:
    """Greedy decoding of `new_tokens` after a batch_size x seq_len prompt (KV cache or
    recurrent state), parameters sharded by the training rules, batch over (data, fsdp)."""
    from research.ops import decoding

    mcfg = model_config(c, vocab_size=c.data.vocab_size, max_length=c.data.seq_len + new_tokens)
    model = nnx.eval_shape(lambda: tasks.model_class(c)(mcfg, rngs=nnx.Rngs(0)))
    model.eval()
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    abstract_params = _abstract(nnx.to_pure_dict(params), sharding.state_shardings(params, mesh))
    rep = sharding.replicated(mesh)
    abstract_rest = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                                 nnx.to_pure_dict(rest))  # fmt: skip
    prompt = jax.ShapeDtypeStruct((c.batch_size, c.data.seq_len), jnp.int32,
                                  sharding=sharding.batch_sharding(mesh))  # fmt: skip

    def decode(params, rest, prompt):
        m = nnx.merge(graph, params, rest)
        logits, cache = m.prefill(prompt, max_length=prompt.shape[1] + new_tokens)
        return decoding.greedy(m.decode_step, logits, cache, max_new_tokens=new_tokens)

    return _compile("decode", jax.jit(decode), abstract_params, abstract_rest, prompt)[0]


def plan_train(c, devices, *, eval_step: bool = False, decode_tokens: int = 0) -> list[Plan]:
    """Compile the real train step (and the eval step, and greedy decoding of `decode_tokens`
    after a full-length prompt) for `devices`; per-device figures."""
    check(c, len(devices))
    mesh, model_def, opt, sh, state, batch = abstract_train(c, devices)
    loss_fn = tasks.make_loss(c)
    train = step.make_train_step(model_def, opt, loss_fn, mesh=mesh, shardings=sh,
                                 accum_steps=c.accum_steps)  # fmt: skip
    plans = [_compile("train", train, state, batch)[0]]
    if eval_step:
        ev = step.make_eval_step(model_def, loss_fn, mesh=mesh, shardings=sh)
        plans.append(_compile("eval", ev, state, batch)[0])
    if decode_tokens:
        plans.append(_decode_plan(c, devices, mesh, decode_tokens))
    return plans
