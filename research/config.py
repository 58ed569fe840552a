"""Typed run configuration: the frozen dataclasses every layer below `research.main` takes.

Experiment files in `configs/` stay ml_collections ConfigDicts (command-line overrides,
presets); `research.train.config.parse` turns one into a `RunConfig` once, at the boundary.
Each field is documented where it is declared; `defaults()` builds the ConfigDict skeleton
(`configs/common.py`) from these same declarations, so no default is written twice.

ConfigDict layout: the `TrainConfig` fields and `task` at the top level, then the sections
`optimizer`, `mesh`, `data` (`research.data.config.DataConfig`), `model`
(`research.models.ModelConfig` without the sizes the data decides) and, for tasks with options of
their own, a section named after the task (for example `seq2seq`).
"""

import dataclasses
import types
import typing
from typing import Any

from ml_collections import ConfigDict, config_dict

from research.data.config import DataConfig
from research.models.config import ModelConfig
from research.ops.checks import check_positive_field


class ConfigError(ValueError):
    """A user mistake in the config; `research.main` prints it on one line and exits 2."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The loop's schedule: how long, how often to log, evaluate and save."""

    seed: int = 0  # parameters, dropout and data order
    batch_size: int = 16  # global batch (all processes), in sequences
    accum_steps: int = 1  # gradient accumulation microbatches per step (divides batch_size)
    num_train_steps: int = 1000
    log_every_steps: int = 50  # train metrics to metrics.jsonl / TensorBoard
    eval_every_steps: int = 500  # and at the last step
    eval_steps: int = 20  # eval batches per evaluation: the eval split's first ones, or all
    checkpoint_every_steps: int = 500  # and at the last step, and on SIGTERM
    keep_checkpoints: int = 3  # newest N kept

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.name != "seed":
                check_positive_field(f.name, getattr(self, f.name))
        # grain and NumPy take [0, 2**32 - 1]; streams add small salts to the seed (cloze.py)
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed={self.seed!r}: must be an int in [0, 2**31 - 1]")
        if self.batch_size % self.accum_steps:
            raise ValueError(
                f"batch_size={self.batch_size} is not divisible by accum_steps={self.accum_steps}"
            )


SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup then decay (`research.train.optim`)."""

    learning_rate: float = 1e-3  # peak, reached after warmup
    warmup_steps: int = 100  # linear 0 -> learning_rate
    schedule: str = "cosine"  # decay after warmup, to 0 at num_train_steps: one of SCHEDULES
    weight_decay: float = 0.1  # AdamW, matrices only (not norms, not biases)
    grad_clip: float = 1.0  # global-norm clipping; 0 = off
    adam_b1: float = 0.9
    adam_b2: float = 0.95
    adam_eps: float = 1e-8

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate!r}: must be > 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: allowed {', '.join(SCHEDULES)}")
        for name in ("warmup_steps", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 0")
        for name in ("adam_b1", "adam_b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be in [0, 1)")
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps={self.adam_eps!r}: must be > 0")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes (`research.train.sharding`); -1 on one axis = the remaining devices."""

    data: int = -1  # data parallelism: each device its own examples, parameters replicated
    fsdp: int = 1  # fully sharded data parallelism: examples and parameters split
    tensor: int = 1  # tensor parallelism: heads, mlp and vocab dimensions split

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# Model fields the data decides (the tokenizer's size, the sequence length); not in configs.
MODEL_SIZE_FIELDS = ("vocab_size", "max_length")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run, validated. `model` holds placeholder sizes until the task's data sets
    vocab_size and max_length; `task_config` is the task's own typed section (or None)."""

    task: str
    train: TrainConfig
    optimizer: OptimizerConfig
    mesh: MeshConfig
    data: DataConfig
    model: ModelConfig
    task_config: Any = None
    raw: dict = dataclasses.field(default_factory=dict, compare=False)  # as stored in checkpoints


# ---- ConfigDict <-> dataclass --------------------------------------------------------------
def _is_sequence(tp) -> bool:
    return typing.get_origin(tp) in (tuple, list)


def _element_type(tp):
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    return args[0] if args else str


def as_list(value, kind=str, *, name: str = "value", distinct: bool = False) -> tuple:
    """A list value from a config: a tuple/list, or a comma-separated string ("16,32" or
    "softmax,elu"; ml_collections passes a string tuple override as one element). `distinct`:
    a value given twice is refused (a sweep axis: the repeat would read the same run again and
    count it as another)."""
    items = value if isinstance(value, tuple | list) else (value,)
    parts = []
    for item in items:
        parts += [p.strip() for p in item.split(",")] if isinstance(item, str) else [item]
    parts = [p for p in parts if p != ""]
    if not parts:
        raise ConfigError(f"{name} is empty")
    try:
        out = tuple(kind(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r}: expected a list of {kind.__name__}") from None
    if distinct and len(set(out)) != len(out):
        twice = next(x for i, x in enumerate(out) if x in out[:i])
        raise ConfigError(f"{name}={value!r}: {twice!r} is given twice; values must be distinct")
    return out


def seed_list(value) -> tuple[int, ...]:
    """A study's `seeds` (as `as_list` reads them), checked before anything trains: distinct
    ints in [0, 2**31 - 1], the range of TrainConfig.seed."""
    seeds = as_list(value, int, name="seeds")
    if len(set(seeds)) != len(seeds) or not all(0 <= x < 2**31 for x in seeds):
        raise ConfigError(f"seeds={value!r}: must be distinct ints in [0, 2**31 - 1]")
    return seeds


def _convert(name: str, value, tp):
    """Coerce what ml_collections gives (ints for floats, strings for lists) to the field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if _is_sequence(tp):
        return as_list(value, _element_type(tp), name=name)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def typed(cls, section, *, name: str, prefix: str, **extra):
    """`cls(**section, **extra)` with one-line ConfigErrors. `name` names the section in
    unknown-key errors; `prefix` starts every other message ("optimizer." gives
    "optimizer.schedule='step': allowed ...")."""
    section = dict(section or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - fields)
    if unknown:
        allowed = ", ".join(sorted(fields - set(extra)))
        raise ConfigError(f"{name}: unknown keys {unknown}; allowed: {allowed}")
    hints = typing.get_type_hints(cls)
    # A list whose default is empty may be set empty; every other list must name something.
    may_be_empty = {f.name for f in dataclasses.fields(cls) if f.default == ()}
    kwargs = {
        k: () if k in may_be_empty and v in ((), [], "") else _convert(f"{prefix}{k}", v, hints[k])
        for k, v in section.items()
    }
    try:
        return cls(**kwargs, **extra)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix}{e}") from None


def section_defaults(cls, *, exclude: tuple = ()) -> ConfigDict:
    """A ConfigDict of a dataclass's defaults (tuples for lists, typed placeholders for None),
    so command-line overrides are type-checked like any other key."""
    hints = typing.get_type_hints(cls)
    out = ConfigDict()
    for f in dataclasses.fields(cls):
        if f.name in exclude or f.default is dataclasses.MISSING:
            continue
        if f.default is None:
            args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
            out[f.name] = config_dict.placeholder(args[0] if args else object)
        else:
            out[f.name] = f.default
    return out


def defaults() -> ConfigDict:
    """The shared ConfigDict skeleton of every single-run experiment config."""
    c = section_defaults(TrainConfig)
    c.task = "lm"  # a name in research.tasks.TASKS
    c.optimizer = section_defaults(OptimizerConfig)
    c.mesh = section_defaults(MeshConfig)
    c.data = section_defaults(DataConfig)
    c.model = section_defaults(ModelConfig, exclude=MODEL_SIZE_FIELDS)
    return c
