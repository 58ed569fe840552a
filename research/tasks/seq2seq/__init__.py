"""The seq2seq task: teacher forcing plus one exposure-bias remedy, and decode-based metrics.

Two layouts (research.data.pipeline.seq2seq_example): "encdec" trains an `EncoderDecoder`,
"unilm" a `Bert` with the UniLM mask (Dong et al. 2019). The `seq2seq` config section
(`Seq2seqConfig`) picks one of REMEDIES (remedies.py), each a pure function applied inside the
jitted step that reduces to plain teacher forcing at strength 0 (tests). Evaluation decodes with
the beam sizes `eval_beams` and scores with `metrics.text_scores` (CJK per character).
"""

import jax

from research.config import ConfigError, RunConfig
from research.data import pipeline, sources
from research.models import Bert, EncoderDecoder, ModelConfig
from research.tasks.base import Task, TaskData
from research.tasks.seq2seq.config import Seq2seqConfig
from research.tasks.seq2seq.metrics import decode_metrics
from research.tasks.seq2seq.remedies import REMEDIES, Context, generate

__all__ = ["REMEDIES", "Seq2seqConfig", "Seq2seqTask", "generate", "make_loss"]


def make_loss(cfg: Seq2seqConfig, vocab_size: int, bos: int, eos: int, pad: int, d_model: int):
    """loss_fn(model, batch, *, key=None, step=None) for the remedy `cfg.remedy`; key None =
    evaluation (plain teacher-forced CE, no remedy)."""
    ctx = Context(cfg, vocab_size, bos, eos, pad, d_model)
    train_loss = REMEDIES[cfg.remedy](ctx)

    def loss_fn(model, batch, *, key=None, step=None):
        if key is None:
            return ctx.teacher_forced(model, batch)
        # A stream independent of the dropout keys, which are derived from the same key.
        return train_loss(model, batch, jax.random.fold_in(key, 7), step)

    return loss_fn


class Seq2seqTask(Task):
    name = "seq2seq"
    section = "seq2seq"
    section_type = Seq2seqConfig

    def validate(self, run: RunConfig) -> None:
        super().validate(run)
        if run.task_config.layout == "unilm" and run.model.attention != "softmax":
            raise ConfigError(
                "seq2seq.layout='unilm' needs model.attention='softmax' (the UniLM mask is not "
                "a key-padding mask, which linear attention requires)"
            )

    def build_data(self, run: RunConfig) -> TaskData:
        s, t, d = run.task_config, run.train, run.data
        train_source, eval_source, vocab = sources.seq2seq_sources(d, seed=t.seed)

        def make(train: bool):
            return pipeline.seq2seq_iterator(train_source if train else eval_source, vocab,
                                             layout=s.layout, src_len=s.src_len,
                                             tgt_len=s.tgt_len, batch_size=t.batch_size,
                                             seed=t.seed, train=train,
                                             shards=d.shards)  # fmt: skip

        # UniLM rows hold source + separator + target.
        return TaskData(vocab.size, s.src_len + s.tgt_len + 1, make, vocab)

    def model_config(self, run: RunConfig, *, vocab_size: int, max_length: int) -> ModelConfig:
        mcfg = super().model_config(run, vocab_size=vocab_size, max_length=max_length)
        if run.task_config.layout == "unilm":  # two segments and the MLM head to decode with
            mcfg = mcfg.replace(num_segments=2, mlm_head=True)
        return mcfg

    def model_class(self, run: RunConfig) -> type:
        return EncoderDecoder if run.task_config.layout == "encdec" else Bert

    def loss_fn(self, run: RunConfig, data: TaskData | None):
        if data is None:
            raise ConfigError("task='seq2seq' needs its data's vocabulary for the loss")
        v = data.vocab
        return make_loss(run.task_config, v.size, v.bos, v.eos, v.pad, run.model.d_model)

    def evaluate(self, run: RunConfig, data: TaskData, eval_model, state, batches) -> dict:
        return decode_metrics(run.task_config, data.vocab, eval_model, state, batches)
