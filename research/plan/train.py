"""Plan a training run without its hardware: the real train (eval, decode) step, compiled.

The model, optimizer state and batch are abstract (`jax.ShapeDtypeStruct`s carrying the same
NamedShardings as training, from `research.train.sharding`); nothing is materialised. The task
gives the batch's shapes and a stand-in for its data (`Task.abstract_batch`, `abstract_data`).
The real train step (`research.train.step.make_train_step`) is lowered and compiled for the
topology's devices, and XLA's `memory_analysis()` / `cost_analysis()` give per-device bytes
and FLOPs. The same path runs on this machine's CPU devices (`topology="cpu"`), which is how the
tests check its predictions against a real run.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from research import tasks
from research.config import RunConfig
from research.models import DecoderLM
from research.models.flops import attention_params, mixing_flops
from research.ops.attention.common import target_backend
from research.plan.compiler import Plan, compile_for_devices
from research.tasks import TaskData
from research.train import optim, sharding, step
from research.train.config import parse


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _model(run: RunConfig, data: TaskData, max_length: int, mesh=None):
    """The task's model with abstract parameters (nothing is allocated); with `mesh`, its
    tensor axis checked against the model's sizes."""
    task = tasks.get(run.task)
    mcfg = task.model_config(run, vocab_size=data.vocab_size, max_length=max_length)
    if mesh is not None:
        sharding.check_tensor_axis(mcfg, mesh)
    return nnx.eval_shape(lambda: task.build_model(run, mcfg, rngs=nnx.Rngs(params=0, dropout=1)))


def abstract_train(run: RunConfig, devices, data: TaskData):
    """(mesh, ModelDef, optimizer, TrainState shardings, abstract TrainState, abstract batch)
    for the task's stand-in data `data` (`Task.abstract_data`)."""
    mesh = sharding.make_mesh(run.mesh.as_dict(), devices)
    model = _model(run, data, data.max_length, mesh)
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
    bsh = sharding.batch_sharding(mesh)
    batch = {
        k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=bsh)
        for k, x in tasks.get(run.task).abstract_batch(run, run.train.batch_size).items()
    }
    return mesh, model_def, opt, sh, state, batch


def check(c, num_devices: int, platform: str | None = None) -> RunConfig:
    """The training config's own checks (the batch split over the mesh, the attention kernel's
    platform among them) for this many devices of `platform`."""
    return parse(c, num_devices=num_devices, platform=platform)


def _decode_plan(run: RunConfig, mesh, data: TaskData, new_tokens: int):
    """Greedy decoding of `new_tokens` after a batch_size x seq_len prompt (KV cache or
    recurrent state; an encoder-decoder's source is the prompt and it decodes from bos),
    parameters sharded by the training rules, batch over (data, fsdp). Returns (the jitted
    function, its abstract arguments), traced once here so that a model that cannot decode
    fails in one line before anything compiles."""
    from research.models import Bert, EncoderDecoder
    from research.ops import decoding

    model = _model(run, data, run.data.seq_len + new_tokens)
    if isinstance(model, Bert) and not model.cfg.mlm_head:
        raise ValueError(
            f"--decode={new_tokens}: the {run.task} task's model (a BERT without an MLM head) "
            "does not generate; --decode plans tasks whose model generates (lm, chat, mqar, "
            "mlm, qagen, seq2seq)"
        )
    model.eval()
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    abstract_params = _abstract(nnx.to_pure_dict(params), sharding.state_shardings(params, mesh))
    rep = sharding.replicated(mesh)
    abstract_rest = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), nnx.to_pure_dict(rest)
    )
    prompt = jax.ShapeDtypeStruct(
        (run.train.batch_size, run.data.seq_len), jnp.int32, sharding=sharding.batch_sharding(mesh)
    )

    def decode(params, rest, prompt):
        m = nnx.merge(graph, params, rest)
        if isinstance(m, EncoderDecoder):  # the target: bos, then the new tokens
            bos = getattr(data.vocab, "bos_id", 1)  # a constant of the program, not a shape
            logits, cache = m.prefill(prompt, bos_id=bos, max_length=new_tokens + 1)
        else:
            logits, cache = m.prefill(prompt, max_length=prompt.shape[1] + new_tokens)
        return decoding.greedy(m.decode_step, logits, cache, max_new_tokens=new_tokens)

    fn = jax.jit(decode)
    args = (abstract_params, abstract_rest, prompt)
    # jit keeps this trace for the compile: it must see the target's block sizes already
    with target_backend(mesh.devices.flat[0].platform):
        jax.eval_shape(fn, *args)
    return fn, args


def counts_analytically(run: RunConfig) -> bool:
    """Whether `model_flops` describes the run's step: a DecoderLM over data.seq_len tokens with
    a vocabulary head at every position (lm, mqar, chat: XLA / analytic 1.18, 1.21, 1.17 on
    their smoke presets, whose dense attention computes the masked half the count leaves out).
    The others (encoder-decoder, MLM heads at a few positions, classifiers) rest on XLA's FLOP
    count."""
    return tasks.get(run.task).model_class(run) is DecoderLM


def model_flops(run: RunConfig) -> float:
    """Analytic FLOPs of one training step of a decoder LM, all devices: 6 T N + 3 T L M
    (PaLM, Chowdhery et al. 2022, appendix B; forward + backward = 3 x forward). T = batch x
    seq_len tokens, N the matmul parameters (`attention_params`, the FFN, the output layer),
    L layers, M the attention's mixing FLOPs per token (`mixing_flops`: 2 S H Dh for softmax,
    4 S H Dh halved for the causal mask as MaxText counts since 2025 (PaLM counted it in full);
    the chunked forms' count for the linear, gated and delta kinds). XLA's own count sees a
    scanned or looped body once; this one does not."""
    m, seq = run.model, run.data.seq_len
    tokens = run.train.batch_size * seq
    ffn = m.d_model * m.d_ff * (3 if m.activation == "swiglu" else 2)
    n = m.num_layers * (attention_params(m) + ffn) + m.d_model * run.data.vocab_size
    return 6 * tokens * n + 3 * tokens * m.num_layers * mixing_flops(m, seq)


# The forward matmuls each remat policy runs again in the backward pass: what it does not save
# (research.models.partitioning.REMAT_POLICIES) and the backward needs. "attention" is QK^T and
# PV (the context is never saved); "minimal" saves every weight matmul (no batch dims) and
# recomputes only attention. The FFN's output projection (mlpwo) is never recomputed: no
# gradient needs its output, and XLA drops it.
_RECOMPUTED = {
    "none": (),
    "full": ("qkv", "out", "attention", "mlpwi"),
    "minimal": ("attention",),
    "save_qkv_proj": ("out", "attention", "mlpwi"),
    "qkv_proj_offloaded": ("out", "attention", "mlpwi"),
    "save_dot_except_mlp": ("attention", "mlpwi"),
    "save_dot_except_mlpwi": ("attention", "mlpwi"),
}


def remat_flops(run: RunConfig) -> float:
    """Analytic FLOPs one training step spends recomputing the forward pass under
    `model.remat`, all devices: per token and layer, 2 x the multiply-adds of each recomputed
    part (q/k/v and gates, out, the attention's mixing `mixing_flops`, the FFN's input
    projections). Model FLOPs exclude them (MaxText's MFU does too), so a step that recomputes
    can reach at most
    model / (model + remat) MFU."""
    m, seq = run.model, run.data.seq_len
    d, hd = m.d_model, m.num_heads * m.head_dim
    part = {
        # q, k, v and the kinds' gate projections: all of attention_params but the output
        "qkv": 2 * (attention_params(m) - hd * d),
        "out": 2 * hd * d,
        "attention": mixing_flops(m, seq),
        "mlpwi": 2 * d * m.d_ff * (2 if m.activation == "swiglu" else 1),
    }
    per_token = sum(part[name] for name in _RECOMPUTED[m.remat])
    return run.train.batch_size * seq * m.num_layers * per_token


def collective_bytes(param_bytes: float, mesh_shape: dict) -> float:
    """Bytes one device sends per training step for its parameters (MaxText's "FSDP arithmetic
    intensity"): with f = fsdp, d = data, t = tensor and P the parameter bytes in the compute
    dtype (`plan_train`: XLA gathers the converted weights), FSDP all-gathers
    the weights for the forward and again for the backward and reduce-scatters the gradients,
    3 (f - 1) / f x P / t; data parallelism then all-reduces the f-sharded gradients,
    2 (d - 1) / d x P / (f t). Tensor-parallel activation collectives are not counted."""
    d, f, t = (mesh_shape.get(a, 1) for a in sharding.MESH_AXES)
    per = param_bytes / t
    return 3 * (f - 1) / f * per + 2 * (d - 1) / d * per / f


def plan_train(c, devices, *, eval_step: bool = False, decode_tokens: int = 0) -> list[Plan]:
    """Compile the real train step (and the eval step, and greedy decoding of `decode_tokens`
    after a full-length prompt) for `devices`; per-device figures."""
    run = check(c, len(devices), devices[0].platform)
    task = tasks.get(run.task)
    data = task.abstract_data(run)
    mesh, model_def, opt, sh, state, batch = abstract_train(run, devices, data)
    decode = _decode_plan(run, mesh, data, decode_tokens) if decode_tokens else None
    loss_fn = task.loss_fn(run, data)
    train = step.make_train_step(
        model_def, opt, loss_fn, mesh=mesh, shardings=sh, accum_steps=run.train.accum_steps
    )
    plans = [compile_for_devices("train", train, state, batch)[0]]
    # XLA converts the fp32 parameters to the compute dtype before gathering them and reduces
    # their gradients in it: a bf16 model moves its weights in bf16
    itemsize = jnp.dtype(run.model.dtype).itemsize
    param_bytes = sum(x.size for x in jax.tree.leaves(state.params)) * itemsize
    if counts_analytically(run):
        plans[0].model_flops = model_flops(run) / len(devices)
        plans[0].remat_flops = remat_flops(run) / len(devices)
    plans[0].collective_bytes = collective_bytes(param_bytes, dict(mesh.shape))
    if eval_step:
        ev = step.make_eval_step(model_def, loss_fn, mesh=mesh, shardings=sh)
        plans.append(compile_for_devices("eval", ev, state, batch)[0])
    if decode:
        fn, args = decode
        plans.append(compile_for_devices("decode", fn, *args)[0])
    return plans
