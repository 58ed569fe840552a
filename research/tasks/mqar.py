"""Multi-query associative recall (Zoology, Arora et al. 2023) with a `DecoderLM`.

MQAR batches carry weight 1 only at query positions, so the LM loss is the recall loss and its
accuracy is MQAR accuracy.
"""

from research.config import RunConfig
from research.data import shards, sources
from research.models import DecoderLM
from research.tasks.base import Task, TaskData
from research.tasks.lm import lm_loss


class MqarTask(Task):
    name = "mqar"

    def build_data(self, run: RunConfig) -> TaskData:
        train_source, eval_source = sources.mqar_sources(run.data, seed=run.train.seed)
        t, d = run.train, run.data

        def make(train: bool):
            return shards.array_iterator(
                train_source if train else eval_source,
                batch_size=t.batch_size,
                seed=t.seed,
                train=train,
                shards=d.shards,
            )

        return TaskData(d.vocab_size, d.seq_len, make)

    def model_class(self, run: RunConfig) -> type:
        return DecoderLM

    def loss_fn(self, run: RunConfig, data: TaskData):
        return lm_loss
