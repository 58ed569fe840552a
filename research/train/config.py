"""A config file's ConfigDict -> a validated `RunConfig`, once, before anything is built.

Every mistake is one ConfigError line naming the key, the value and what is allowed.
"""

import dataclasses

import jax

from research import tasks
from research.config import (
    MODEL_SIZE_FIELDS,
    ConfigError,
    MeshConfig,
    OptimizerConfig,
    RunConfig,
    TrainConfig,
    typed,
)
from research.data.config import DataConfig
from research.models import ModelConfig
from research.ops.attention import softmax
from research.train import sharding

__all__ = ["ConfigError", "RunConfig", "parse"]

_SECTIONS = ("optimizer", "mesh", "data", "model")
# Training rows this long must name an attention form without [B, H, L, L] tensors.
DENSE_SOFTMAX_MAX_LEN = softmax.DENSE_SOFTMAX_MAX_LEN


def parse(
    c, *, num_devices: int | None = None, check_devices: bool = True, platform: str | None = None
) -> RunConfig:
    """Validate ConfigDict `c` into a RunConfig.

    num_devices: the mesh's device count (default: this run's, `jax.device_count()`).
    platform: the devices' platform ("cpu", "gpu", "tpu"; default: JAX's default backend), which
    must have the attention kernel the model names.
    check_devices=False skips the checks against this machine's devices and processes and the
    task's checks of files it starts from (`Task.validate`: a pretrained model, a predecessor),
    for reading back a run that was trained elsewhere or whose inputs have moved.
    """
    if "task" not in c or c.task not in tasks.TASKS:
        raise ConfigError(f"task={c.get('task')!r}: allowed {', '.join(tasks.TASKS)}")
    task = tasks.TASKS[c.task]
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    known = {"task", *train_keys, *_SECTIONS, *([task.section] if task.section else [])}
    unknown = sorted(set(c.keys()) - known)
    if unknown:
        raise ConfigError(f"unknown keys {unknown} for task={c.task!r}")
    train = typed(TrainConfig, {k: c[k] for k in train_keys if k in c}, name="config", prefix="")
    optimizer = typed(OptimizerConfig, c.get("optimizer"), name="optimizer", prefix="optimizer.")
    mesh = typed(MeshConfig, c.get("mesh"), name="mesh", prefix="mesh: ")
    data = typed(DataConfig, c.get("data"), name="data", prefix="data.")
    sizes = dict(vocab_size=max(data.vocab_size, 2), max_length=data.seq_len)
    model_section = {k: v for k, v in dict(c.get("model") or {}).items()}
    bad = sorted(set(model_section) & set(MODEL_SIZE_FIELDS))
    if bad:
        raise ConfigError(f"model: {bad} come from the data (data.vocab_size, data.seq_len)")
    model = typed(ModelConfig, model_section, name="model", prefix="model: ", **sizes)
    if (
        model.attention == "softmax"
        and model.softmax_implementation == "xla"
        and data.seq_len >= DENSE_SOFTMAX_MAX_LEN
    ):
        raise ConfigError(
            f"data.seq_len={data.seq_len} with model.softmax_implementation='xla' keeps a dense "
            f"[batch, heads, {data.seq_len}, {data.seq_len}] score matrix; from "
            f"{DENSE_SOFTMAX_MAX_LEN} tokens choose blockwise | cudnn | tpu_flash, or "
            "model.attention=linear"
        )
    task_config = task.parse_section(c.get(task.section)) if task.section else None
    if check_devices:
        _check_devices(train, mesh, data, num_devices or jax.device_count())
        try:  # a kernel this backend lacks (cudnn off GPU): before anything is built
            softmax.check_backend(model.softmax_implementation, platform)
        except ValueError as e:
            raise ConfigError(f"model.softmax_implementation: {e}") from None
        if model.softmax_implementation == "cudnn" and model.dtype == "float32":
            # jax's cuDNN attention takes 16-bit inputs only: it failed while tracing
            raise ConfigError(
                "model.softmax_implementation='cudnn' needs model.dtype=bfloat16 (cuDNN "
                "attention takes 16-bit inputs); for float32 use blockwise or xla"
            )
        if model.linear_implementation == "pallas" and (platform or jax.default_backend()) == "gpu":
            raise ConfigError(
                "model.linear_implementation='pallas' has TPU (Mosaic) kernels only, no GPU "
                "(Triton) kernel: use model.linear_implementation=xla (the chunked jnp form)"
            )
    run = RunConfig(c.task, train, optimizer, mesh, data, model, task_config, c.to_dict())
    task.check_attention(run)
    if data.document_boundaries and not task.packs_documents:
        raise ConfigError(
            f"data.document_boundaries=True: the {c.task} task does not pack documents (only "
            "lm does); leave it False"
        )
    if check_devices:
        task.validate(run)
    return run


def _check_devices(
    train: TrainConfig,
    mesh: MeshConfig,
    data: DataConfig,
    num_devices: int,
    processes: int | None = None,
):
    try:
        data_size, fsdp, _ = sharding.resolve_mesh_shape(mesh.as_dict(), num_devices)
    except ValueError as e:
        raise ConfigError(f"mesh: {e}") from None
    if train.batch_size % (data_size * fsdp):
        raise ConfigError(
            f"batch_size={train.batch_size} is not divisible by mesh data x fsdp = "
            f"{data_size} x {fsdp} on {num_devices} devices (every device takes whole rows)"
        )
    micro = train.batch_size // train.accum_steps
    if micro % (data_size * fsdp):
        raise ConfigError(
            f"batch_size / accum_steps = {train.batch_size} / {train.accum_steps} = {micro} rows "
            f"per microbatch is not divisible by mesh data x fsdp = {data_size} x {fsdp} (each "
            "device would hold every microbatch row's activations)"
        )
    processes = processes or jax.process_count()
    if (data_size * fsdp) % processes:
        # Each process feeds its own rows: a batch shard spread over two processes (the tensor
        # axis across hosts) would get different rows from each, silently.
        raise ConfigError(
            f"mesh data x fsdp = {data_size} x {fsdp} is not a multiple of the process count "
            f"({processes}): each process feeds its own rows, so every batch shard's devices must "
            f"be in one process; keep mesh.tensor within a process's {num_devices // processes} "
            "devices"
        )
    if train.batch_size % (data.shards or 1) or train.batch_size % processes:
        raise ConfigError(
            f"batch_size={train.batch_size} must be divisible by data.shards={data.shards} and "
            f"by the process count ({processes})"
        )
