"""The Task interface: everything that differs between training tasks, behind a few methods.

The loop (`research.train.loop`) knows no task by name. For a `RunConfig` it asks the task to
  1. `validate(run)`: cross-checks between the task's options and the model (ConfigError);
  2. `build_data(run)`: a `TaskData` (vocabulary size, the model's longest row, iterators);
  3. `model_config(run, vocab_size, max_length)`, `build_model(mcfg, rngs=...)` and, for a run
     without a checkpoint, `initialize(run, model)` (pretrained weights);
  4. `loss_fn(run, data)`: loss_fn(model, batch, *, key=None, step=None) -> (loss_sum,
     weight_sum, {metric: sum}); training passes a PRNG key and the step, evaluation neither;
  5. `evaluate(run, data, eval_model, state, batches)`: metrics beyond the loss (decoding).
A new task is one module in this package that subclasses `Task`, registered in `TASKS`.
"""

import abc
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from flax import nnx

from research.config import ConfigError, RunConfig, typed
from research.data.vocab import Vocab
from research.models import ModelConfig
from research.ops.checks import check_causal_allowed


@dataclasses.dataclass(frozen=True)
class TaskData:
    """What a task's data gives the loop and the model."""

    vocab_size: int  # the model's token vocabulary
    max_length: int  # the longest row the model sees
    make_iterator: Callable[[bool], Iterator[dict]]  # train -> this process's numpy batches
    vocab: Vocab | None = None  # ids <-> text and the special ids; None without text
    # What `Task.evaluate` needs beyond the model (held-out examples), so evaluation reads no file.
    eval_examples: Any = None


class Task(abc.ABC):
    """Base class; subclasses set `name`, define the abstract methods, override what differs."""

    name: str = ""
    section: str | None = None  # ConfigDict section with the task's own options (or None)
    section_type: type | None = None  # its typed dataclass
    causal: bool = True  # the model has causal self-attention (checked against the model)
    # Its loss is a per-token cross entropy (perplexity, tokens/s); False for a classifier,
    # whose run summary shows accuracy and examples/s instead.
    predicts_tokens: bool = True

    def parse_section(self, section) -> Any:
        """The task's typed options from its ConfigDict section (None for tasks without)."""
        if self.section_type is None:
            return None
        return typed(self.section_type, section, name=self.section, prefix=f"{self.section}.")

    def validate(self, run: RunConfig) -> None:
        """Raise ConfigError for a model this task cannot train."""
        if self.causal:
            try:
                check_causal_allowed(
                    attention=run.model.attention, feature_map=run.model.feature_map
                )
            except ValueError as e:  # "attention='linformer' cannot be causal ..."
                raise ConfigError(f"model.{e}; task={run.task!r} needs causal attention") from None

    @abc.abstractmethod
    def build_data(self, run: RunConfig) -> TaskData:
        """The task's data: built (on process 0) and opened as iterators."""

    def model_config(self, run: RunConfig, *, vocab_size: int, max_length: int) -> ModelConfig:
        return run.model.replace(vocab_size=vocab_size, max_length=max_length)

    @abc.abstractmethod
    def model_class(self, run: RunConfig) -> type:
        """The model family this run trains."""

    def build_model(self, run: RunConfig, mcfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
        return self.model_class(run)(mcfg, rngs=rngs)

    def initialize(self, run: RunConfig, model: nnx.Module) -> None:
        """Start a fresh model from pretrained weights, in place (called before training when
        the run has no checkpoint yet). Default: keep the initialisation."""
        del run, model

    @abc.abstractmethod
    def loss_fn(self, run: RunConfig, data: TaskData | None):
        """loss_fn(model, batch, *, key=None, step=None) -> (loss_sum, weight_sum, sums);
        `data` is None when planning (no data is built)."""

    def evaluate(self, run: RunConfig, data: TaskData, eval_model, state, batches) -> dict:
        """Extra eval metrics. eval_model(params, consts) -> model (dropout off), traceable;
        batches: (process-local numpy batch, the same as global arrays) pairs. Default: none."""
        return {}
