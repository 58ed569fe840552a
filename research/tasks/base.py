"""The Task interface: everything that differs between training tasks, behind a few methods.

The loop (`research.train.loop`) knows no task by name. For a `RunConfig` it asks the task to
  1. `validate(run)`: cross-checks between the task's options and the model (ConfigError);
  2. `build_data(run)`: a `TaskData` (vocabulary size, the model's longest row, iterators);
  3. `model_config(run, vocab_size, max_length)`, `build_model(mcfg, rngs=...)` and, for a run
     without a checkpoint, `initialize(run, model)` (pretrained weights);
  4. `loss_fn(run, data)`: loss_fn(model, batch, *, key=None, step=None) -> (loss_sum,
     weight_sum, {metric: sum}); training passes a PRNG key and the step, evaluation neither;
  5. `evaluate(run, data, eval_model, state, batches)`: metrics beyond the loss (decoding).
The planner (`research.plan`) builds no data: it asks for `abstract_data(run)`, a stand-in
`TaskData` that `model_config` and `loss_fn` take in place of build_data's, and for
`abstract_batch(run, batch_size)`, the shapes and dtypes of a batch.
A new task is one module in this package that subclasses `Task`, registered in `TASKS`.
"""

import abc
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from research.config import ConfigError, RunConfig, typed
from research.data.vocab import Vocab
from research.models import DecoderLM, ModelConfig
from research.models.config import RECURRENT_KINDS
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


def abstract_rows(batch_size: int, **fields: tuple) -> dict[str, jax.ShapeDtypeStruct]:
    """A batch's shapes and dtypes from its rows'.

    Args:
      batch_size: the batch's rows.
      **fields: name=(shape of one row's field, dtype), e.g. inputs=((seq_len,), jnp.int32).

    Returns:
      {name: ShapeDtypeStruct((batch_size, *shape), dtype)}.
    """
    return {
        k: jax.ShapeDtypeStruct((batch_size, *shape), dtype) for k, (shape, dtype) in fields.items()
    }


def _no_batches(train: bool) -> Iterator[dict]:
    raise RuntimeError("an abstract TaskData (research.plan) has no batches")


class Task(abc.ABC):
    """Base class; subclasses set `name`, define the abstract methods, override what differs."""

    name: str = ""
    section: str | None = None  # ConfigDict section with the task's own options (or None)
    section_type: type | None = None  # its typed dataclass
    causal: bool = True  # the model has causal self-attention (checked against the model)
    packs_documents: bool = False  # honours data.document_boundaries (packed rows, segment ids)
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

    def check_attention(self, run: RunConfig) -> None:
        """ConfigError for a causal-only attention kind in a model with bidirectional or
        cross-attention (called by `research.train.config.parse` for every task)."""
        kind = run.model.attention
        if kind in RECURRENT_KINDS and self.model_class(run) is not DecoderLM:
            raise ConfigError(
                f"model.attention={kind!r} is causal self-attention only (a recurrence); "
                f"task={run.task!r} trains a {self.model_class(run).__name__} with bidirectional "
                "or cross-attention: use softmax, linear or linformer"
            )

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

    def abstract_data(self, run: RunConfig) -> TaskData:
        """A stand-in for `build_data`'s TaskData that reads and builds nothing (the planner's).

        Args:
          run: the run's config.

        Returns:
          TaskData with what `model_config` and `loss_fn` need: default, data.vocab_size tokens,
          data.seq_len positions, no vocabulary; its make_iterator raises (no batches). Tasks
          whose loss needs the vocabulary give a stand-in one.
        """
        return TaskData(run.data.vocab_size, run.data.seq_len, _no_batches)

    def abstract_batch(self, run: RunConfig, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The shapes and dtypes of a batch of `batch_size` rows, as make_iterator yields them.

        Args:
          run: the run's config.
          batch_size: the batch's rows.

        Returns:
          {key: ShapeDtypeStruct}; default, next-token rows: inputs, targets [B, seq_len] int32
          and weights [B, seq_len] float32.
        """
        row = (run.data.seq_len,)
        return abstract_rows(
            batch_size,
            inputs=(row, jnp.int32),
            targets=(row, jnp.int32),
            weights=(row, jnp.float32),
        )

    # What research.generate says of a run of this task it cannot prompt with free text.
    generate_hint = "it does not generate text from a prompt"

    def text_prompt(self, run: RunConfig, vocab, text: str):
        """`text` laid out as a prompt for `research.generate` (a `research.sampling.TextPrompt`),
        or None for a task that does not generate from free text (the default)."""
        del run, vocab, text

    @abc.abstractmethod
    def loss_fn(self, run: RunConfig, data: TaskData):
        """loss_fn(model, batch, *, key=None, step=None) -> (loss_sum, weight_sum, sums).

        Args:
          run: the run's config.
          data: build_data's TaskData, or abstract_data's when planning.

        Returns:
          The loss function the train and eval steps call.
        """

    def evaluate(self, run: RunConfig, data: TaskData, eval_model, state, batches) -> dict:
        """Extra eval metrics. eval_model(params, consts) -> model (dropout off), traceable;
        batches: (process-local numpy batch, the same as global arrays) pairs. Default: none."""
        return {}
