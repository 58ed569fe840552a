"""Checks a training config before anything is built or compiled: one clear line per mistake."""

import dataclasses

import jax

from research.models import ModelConfig
from research.train import optim, sharding, tasks


class ConfigError(ValueError):
    """A user mistake in the config; `research.main` prints it on one line and exits 2."""


def parse_list(c, key, kind=str) -> list:
    """A comma-separated config value ("16,32,64") as a non-empty list of `kind`."""
    try:
        values = [kind(v.strip()) for v in str(c[key]).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"{key}={c[key]!r}: expected a comma-separated list of {kind.__name__}"
        ) from None
    if not values:
        raise ConfigError(f"{key} is empty")
    return values


def _positive(c, key):
    value = c[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key}={value!r}: must be a positive int")


def validate(c, *, num_devices: int | None = None) -> None:
    """num_devices: the mesh's device count (default: this run's, `jax.device_count()`)."""
    counts = ("batch_size", "accum_steps", "num_train_steps", "log_every_steps", "eval_every_steps",
              "eval_steps", "checkpoint_every_steps", "keep_checkpoints")  # fmt: skip
    for key in counts:
        _positive(c, key)
    if c.task not in tasks.TASKS:
        raise ConfigError(f"task={c.task!r}: allowed {', '.join(tasks.TASKS)}")
    if c.batch_size % c.accum_steps:
        raise ConfigError(
            f"batch_size={c.batch_size} is not divisible by accum_steps={c.accum_steps}"
        )
    o = c.optimizer
    if not o.learning_rate > 0:
        raise ConfigError(f"optimizer.learning_rate={o.learning_rate!r}: must be > 0")
    if o.schedule not in optim.SCHEDULES:
        raise ConfigError(
            f"optimizer.schedule={o.schedule!r}: allowed {', '.join(optim.SCHEDULES)}"
        )
    if o.warmup_steps < 0 or o.weight_decay < 0 or o.grad_clip < 0:
        raise ConfigError("optimizer.warmup_steps, weight_decay and grad_clip must be >= 0")
    try:
        sharding.resolve_mesh_shape(dict(c.mesh), num_devices or jax.device_count())
    except ValueError as e:
        raise ConfigError(f"mesh: {e}") from None
    shards = c.data.shards or jax.process_count()
    if shards < 1 or shards % jax.process_count() or c.batch_size % shards:
        raise ConfigError(
            f"data.shards={c.data.shards}: needs a multiple of the process count "
            f"({jax.process_count()}) that divides batch_size={c.batch_size}"
        )
    if c.data.seq_len < 2:
        raise ConfigError(f"data.seq_len={c.data.seq_len}: must be >= 2")
    if c.task == "seq2seq":
        _validate_seq2seq(c)
    model_config(c, vocab_size=max(c.data.vocab_size, 2), max_length=c.data.seq_len)
    # Every task's model has causal self-attention (DecoderLM, EncoderDecoder's decoder; UniLM
    # is softmax-only, checked above), which these two cannot be (the layers raise too, later).
    if c.model.attention == "linformer":
        raise ConfigError(f"model.attention='linformer' cannot be causal; task={c.task!r} needs it")
    if c.model.attention == "linear" and c.model.get("feature_map") == "softmax":
        raise ConfigError(
            "model.feature_map='softmax' (Efficient Attention) cannot be causal; choose elu, "
            "relu, taylor or favor"
        )


def _validate_seq2seq(c) -> None:
    from research.data.pipeline import LAYOUTS
    from research.ops import rewards
    from research.train.seq2seq import REMEDIES

    s = c.seq2seq
    if s.layout not in LAYOUTS:
        raise ConfigError(f"seq2seq.layout={s.layout!r}: allowed {', '.join(LAYOUTS)}")
    if s.remedy not in REMEDIES:
        raise ConfigError(f"seq2seq.remedy={s.remedy!r}: allowed {', '.join(REMEDIES)}")
    if s.reward not in rewards.REWARDS:
        raise ConfigError(f"seq2seq.reward={s.reward!r}: allowed {', '.join(rewards.REWARDS)}")
    for key in ("src_len", "tgt_len", "ss_passes", "mrt_samples"):
        if not isinstance(s[key], int) or s[key] < 1:
            raise ConfigError(f"seq2seq.{key}={s[key]!r}: must be a positive int")
    if s.layout == "unilm" and c.model.attention != "softmax":
        raise ConfigError(
            "seq2seq.layout='unilm' needs model.attention='softmax' (the UniLM mask is not "
            "a key-padding mask, which linear attention requires)"
        )
    if not 0 <= s.seq_weight <= 1:
        raise ConfigError(f"seq2seq.seq_weight={s.seq_weight}: must be in [0, 1]")
    if min(parse_list(s, "eval_beams", int)) < 1:
        raise ConfigError(f"seq2seq.eval_beams={s.eval_beams!r}: comma-separated positive ints")


def model_config(c, *, vocab_size: int, max_length: int) -> ModelConfig:
    """ModelConfig from config.model (+ sizes from the data); errors name the model.* key."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    kwargs = {k: v for k, v in c.model.items() if k in fields}
    unknown = set(c.model.keys()) - fields
    if unknown:
        raise ConfigError(f"model: unknown keys {sorted(unknown)}")
    kwargs["num_kv_heads"] = kwargs.get("num_kv_heads") or None
    try:
        return ModelConfig(**kwargs, vocab_size=vocab_size, max_length=max_length)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
