"""BERT-of-Theseus' replacement stage (Xu et al. 2020; docs/research_notes.md section 5): a frozen
fine-tuned classifier (`theseus.predecessor`, a `classify` run) and k successor layers that
start from the first k layers of a pretrained BERT (`theseus.init`) and learn to stand in for
its modules (`research.models.theseus.Theseus`).

Every training step draws r_i ~ Bernoulli(p_t) per module from the run's seed and the step
(`make_theseus_loss`); p_t is `replace_prob`, or with replace_schedule="linear"
min(1, replace_prob + replace_slope * t) (replace_slope 0: p reaches 1 at the last step).
Evaluation runs the successor alone (r = 1).
The run's workdir then is a pretrained model for `classify` (init=workdir:PATH gives the
k-layer successor), the third stage.
"""

import dataclasses
import json
import pathlib

import jax

from research.config import ConfigError, RunConfig
from research.data import classification
from research.data import vocab as vocab_io
from research.models import ModelConfig, stack
from research.models import params as params_io
from research.models.params import transfer
from research.models.theseus import Theseus, check_successor_layers, draw_replacement, replace_prob
from research.tasks import bert
from research.tasks.base import TaskData
from research.tasks.bert import BertTask
from research.tasks.classify import (
    abstract_classify_batch,
    check_labels,
    classify_data,
    classify_loss,
)

SCHEDULES = ("constant", "linear")
# Fields that fix what a layer computes and its parameters' shapes: a successor from another
# architecture is refused.
_LAYER_FIELDS = (
    "d_model",
    "num_heads",
    "num_kv_heads",
    "d_ff",
    "norm",
    "use_bias",
    "activation",
    "attention",
    "feature_map",
    "favor_features",
    "linear_form",
    "linformer_k",
    "short_conv",
    "positions",
)


@dataclasses.dataclass(frozen=True)
class TheseusConfig:
    """The `theseus` section."""

    predecessor: str = ""  # workdir:PATH of a fine-tuned `classify` run (frozen here)
    init: str = ""  # the successor's first k layers: workdir:PATH | hf:PATH | "" = the
    #                 predecessor run's own classify.init
    successor_layers: int = 2  # k; must divide the predecessor's layers
    replace_prob: float = 0.5  # p (constant), or p_0 of the linear schedule
    replace_schedule: str = "constant"  # constant | linear: min(1, p_0 + replace_slope * step)
    replace_slope: float = 0.0  # linear: per step; 0 = (1 - p_0) / num_train_steps

    def __post_init__(self):
        if not 0.0 <= self.replace_prob <= 1.0:
            raise ValueError(f"replace_prob={self.replace_prob!r}: must be in [0, 1]")
        if self.replace_schedule not in SCHEDULES:
            raise ValueError(
                f"replace_schedule={self.replace_schedule!r}: allowed {', '.join(SCHEDULES)}"
            )
        if self.replace_slope < 0:
            raise ValueError(f"replace_slope={self.replace_slope!r}: must be >= 0")
        if not isinstance(self.successor_layers, int) or self.successor_layers < 1:
            raise ValueError(f"successor_layers={self.successor_layers!r}: must be an int >= 1")


def _predecessor(s: TheseusConfig) -> tuple[pathlib.Path, ModelConfig]:
    parsed = bert.parse_init(s.predecessor, key="theseus.predecessor")
    if parsed is None or parsed[0] != "workdir":
        raise ConfigError(
            f"theseus.predecessor={s.predecessor!r}: use workdir:PATH of a fine-tuned classify run"
        )
    path = parsed[1]
    if not params_io.checkpoint_steps(path / "checkpoints"):
        raise ConfigError(
            f"theseus.predecessor={s.predecessor!r}: no checkpoints in {path / 'checkpoints'}"
        )
    mcfg = ModelConfig(**json.loads((path / "model.json").read_text()))
    if not mcfg.num_labels:
        raise ConfigError(
            f"theseus.predecessor={s.predecessor!r}: that run has no classifier "
            "(num_labels=0); train one with configs/classify.py first"
        )
    return path, mcfg


def _successor_init(s: TheseusConfig, path: pathlib.Path) -> str:
    """theseus.init, or the predecessor's own pretrained model (its classify.init)."""
    if s.init:
        return s.init
    raw = bert.run_config(path)
    init = raw.get("classify", {}).get("init", "")
    if not init:
        raise ConfigError(
            f"theseus.init='': the predecessor {path} started from random weights; "
            "name the pretrained BERT (workdir:PATH or hf:PATH)"
        )
    return init


class TheseusTask(BertTask):
    """Starts from a predecessor and a pretrained BERT (not from `init` alone): overrides every
    BertTask method but the hooks that say what its runs hand on (the k-layer successor)."""

    name = "theseus"
    section = "theseus"
    section_type = TheseusConfig
    predicts_tokens = False

    @classmethod
    def exported_layers(cls, saved: dict) -> int | None:
        return saved["theseus"]["successor_layers"]

    @classmethod
    def exported_model(cls, saved: dict, mcfg: ModelConfig, *, rngs):
        # Its model.json is the predecessor's; the checkpoint holds both models.
        k = cls.exported_layers(saved)
        return Theseus(mcfg, successor_layers=k, rngs=rngs), Theseus.successor_model

    def validate(self, run: RunConfig) -> None:
        if run.model.scan_layers:
            raise ConfigError(
                "model.scan_layers=True: BERT-of-Theseus swaps single layers "
                "in and out, which a scanned stack cannot; set it False (the "
                "predecessor and successor may come from scanned runs)"
            )
        s = run.task_config
        path, mcfg = _predecessor(s)
        try:
            check_successor_layers(
                mcfg.num_layers, s.successor_layers, key="theseus.successor_layers"
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
        init = _successor_init(s, path)
        pre = bert.pretrained_config(init, key="theseus.init")[0]
        differ = [f for f in _LAYER_FIELDS if getattr(pre, f) != getattr(mcfg, f)]
        if differ:
            raise ConfigError(
                f"theseus.init={init!r}: its layers differ from the predecessor's in "
                + ", ".join(f"{f} ({getattr(pre, f)} vs {getattr(mcfg, f)})" for f in differ)
            )
        if pre.num_layers < s.successor_layers:
            raise ConfigError(
                f"theseus.init={init!r}: has {pre.num_layers} layers, fewer than "
                f"successor_layers={s.successor_layers}"
            )

    def build_data(self, run: RunConfig) -> TaskData:
        s, d = run.task_config, run.data
        path, mcfg = _predecessor(s)
        vocab = vocab_io.load(path)
        train, validation, _ = classification.sources_of(d)
        check_labels(train, mcfg.num_labels, name=f"{d.source} train")
        check_labels(validation, mcfg.num_labels, name=f"{d.source} validation")
        return classify_data(run, vocab, train, validation)

    def model_config(self, run: RunConfig, *, vocab_size: int, max_length: int) -> ModelConfig:
        _, mcfg = _predecessor(run.task_config)
        if vocab_size != mcfg.vocab_size or max_length > mcfg.max_length:
            raise ConfigError(
                f"theseus.predecessor: its model takes {mcfg.vocab_size} tokens "
                f"and {mcfg.max_length} positions; the data needs {vocab_size} "
                f"and {max_length}"
            )
        # Unrolled whatever the predecessor's run used: modules are swapped layer by layer; the
        # softmax kernel is this run's (a predecessor trained with cuDNN trains on, elsewhere).
        return mcfg.replace(
            dropout=run.model.dropout,
            scan_layers=False,
            softmax_implementation=run.model.softmax_implementation,
            dtype=run.model.dtype,
        )

    def model_class(self, run: RunConfig) -> type:
        return Theseus

    def build_model(self, run: RunConfig, mcfg: ModelConfig, *, rngs):
        return Theseus(mcfg, successor_layers=run.task_config.successor_layers, rngs=rngs)

    def initialize(self, run: RunConfig, model: Theseus) -> None:
        s = run.task_config
        path, _ = _predecessor(s)
        init = _successor_init(s, path)
        where = f"theseus.predecessor={s.predecessor!r}"
        try:  # a checkpoint whose shapes differ from its model.json, or lacks a tensor
            copied, fresh = transfer(
                bert.pretrained_model(s.predecessor, key="theseus.predecessor"), model.predecessor
            )
            if fresh:
                raise ValueError(f"the checkpoint lacks {', '.join(fresh[:3])}")
            where = f"theseus.init={init!r}"
            pretrained = stack.convert(bert.pretrained_model(init, key="theseus.init"), scan=False)
            for mine, theirs in zip(model.successor, pretrained.layers[: model.k], strict=True):
                missing = transfer(theirs, mine)[1]
                if missing:
                    raise ValueError(f"its layers lack {', '.join(missing[:3])}")
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        print(
            f"theseus: predecessor ({len(copied)} tensors, frozen) from {s.predecessor}; "
            f"successor layers = the first {model.k} layers of {init}",
            flush=True,
        )

    def abstract_batch(self, run: RunConfig, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        return abstract_classify_batch(batch_size, run.data.seq_len)

    def loss_fn(self, run: RunConfig, data: TaskData):
        return make_theseus_loss(
            run.task_config, seed=run.train.seed, num_train_steps=run.train.num_train_steps
        )


def replacement_draws(s: TheseusConfig, *, seed: int, num_train_steps: int):
    """draws(step, k) -> r [k] bool: module i replaced at `step` with probability p_step
    (constant, or linear with replace_slope 0 meaning p = 1 at the last step)."""
    slope = s.replace_slope or (1.0 - s.replace_prob) / max(num_train_steps - 1, 1)
    base = jax.random.fold_in(jax.random.key(seed), 0x7E5E)

    def draws(step, k: int):
        p = replace_prob(step, p=s.replace_prob, schedule=s.replace_schedule, slope=slope)
        return draw_replacement(jax.random.fold_in(base, step), p, k)

    return draws


def make_theseus_loss(s: TheseusConfig, *, seed: int, num_train_steps: int):
    """The replacement stage's loss: classification cross-entropy with the modules replaced by
    r ~ Bernoulli(p_step) in training, the successor alone in evaluation (key None).

    r is drawn from the run's seed and the step number, not from the key the step passes:
    every device of a shard_map step and every microbatch of an accumulated step must run the
    same model (the step's key differs per device and per microbatch, for dropout).
    """
    draws = replacement_draws(s, seed=seed, num_train_steps=num_train_steps)

    def theseus_loss(model, batch: dict, *, key=None, step=None):
        replace = None if key is None else draws(step, model.k)
        return classify_loss(model, batch, replace=replace)

    return theseus_loss
