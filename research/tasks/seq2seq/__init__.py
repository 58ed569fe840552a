"""The seq2seq task: teacher forcing plus one exposure-bias remedy, and decode-based metrics.

Two layouts (research.data.seq2seq.seq2seq_example): "encdec" trains an `EncoderDecoder`,
"unilm" a `Bert` with the UniLM mask (Dong et al. 2019). The `seq2seq` config section
(`Seq2seqConfig`) picks one of REMEDIES (remedies.py), each a pure function applied inside the
jitted step that reduces to plain teacher forcing at strength 0 (tests). Evaluation decodes with
the beam sizes `eval_beams` and scores with `metrics.text_scores` (CJK per character).

`seq2seq.init` (workdir:PATH of an mlm run, or hf:PATH) starts a unilm run from that BERT, as
qagen and the BERT tasks do (`research.tasks.bert`): its architecture, weights and vocabulary
(one token per character for seqlab's Chinese MLM); rows are [CLS] source [SEP] target [SEP].
"""

import dataclasses

import jax
import numpy as np

from research.config import ConfigError, RunConfig
from research.data import DataError, sources
from research.data.seq2seq import seq2seq_example, seq2seq_iterator
from research.models import Bert, EncoderDecoder, ModelConfig
from research.sampling import TextPrompt
from research.tasks import bert
from research.tasks.base import Task, TaskData, abstract_rows
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
            return ctx.teacher_forced(model, batch, smoothing=False)
        # A stream independent of the dropout keys, which are derived from the same key.
        return train_loss(model, batch, jax.random.fold_in(key, 7), step)

    return loss_fn


class Seq2seqTask(Task):
    name = "seq2seq"
    generate_hint = "its data are synthetic ids, not text"
    section = "seq2seq"
    section_type = Seq2seqConfig

    def validate(self, run: RunConfig) -> None:
        super().validate(run)
        s = run.task_config
        if s.remedy in ("gradient_penalty", "fgm") and run.train.accum_steps > 1:
            # both act on one loss call's mean: per microbatch, the penalty doubled with two
            raise ConfigError(
                f"seq2seq.remedy={s.remedy!r} with accum_steps={run.train.accum_steps}: its "
                "strength is per loss call, so microbatches would change it; use accum_steps=1"
            )
        d = run.data
        if d.source == "seq2seq_synthetic":  # rows were cut to the lengths without a word
            n = d.max_len
            longest = (2 * n + 1, n + 1) if d.seq2seq_task == "addition" else (n, n)
            for key, have, need, what in (
                ("src_len", s.src_len, longest[0], "source"),
                ("tgt_len", s.tgt_len, longest[1] + 1, "target and its EOS"),
            ):
                if have < need:
                    raise ConfigError(
                        f"seq2seq.{key}={have} would cut the data: the longest "
                        f"{d.seq2seq_task} {what} at data.max_len={n} is {need} tokens; set "
                        f"seq2seq.{key}={need} or a smaller data.max_len"
                    )
        if s.init:
            self._validate_init(run)
        elif s.layout == "unilm" and run.model.attention != "softmax":
            raise ConfigError(
                "seq2seq.layout='unilm' needs model.attention='softmax' (the UniLM mask is not "
                "a key-padding mask, which linear attention requires)"
            )

    def _validate_init(self, run: RunConfig) -> None:
        s = run.task_config
        if s.layout != "unilm":
            raise ConfigError(
                f"seq2seq.init={s.init!r} needs seq2seq.layout='unilm' (a BERT "
                f"decodes with the UniLM mask), not {s.layout!r}"
            )
        if run.data.source == "seq2seq_synthetic":
            raise ConfigError(
                f"seq2seq.init={s.init!r}: data.source='seq2seq_synthetic' has its "
                "own digit vocabulary, not the BERT's; use text data "
                "(inews_titles, jsonl:PATH, tfds:NAME)"
            )
        try:
            pre = bert.pretrained_config(s.init, key="seq2seq.init")
        except ConfigError as e:
            if not s.init.startswith("workdir:") or "no model.json" not in str(e):
                raise
            raise ConfigError(
                f"{e} (train it first: python -m research.main --config=configs/"
                f"mlm.py --workdir={s.init.removeprefix('workdir:')}; or "
                "--config.seq2seq.init= for random weights)"
            ) from None
        mcfg, vocab = pre
        if vocab.vocab_size() > mcfg.vocab_size:  # ids the embedding table has no row for
            raise ConfigError(
                f"seq2seq.init={s.init!r}: its vocabulary has {vocab.vocab_size()} "
                f"tokens, its model only {mcfg.vocab_size} embeddings"
            )
        if mcfg.attention != "softmax":
            raise ConfigError(
                f"seq2seq.init={s.init!r}: its attention is {mcfg.attention!r}; "
                "the UniLM mask needs softmax attention"
            )

    def build_data(self, run: RunConfig) -> TaskData:
        s, t, d = run.task_config, run.train, run.data
        bert_vocab = bert.vocabulary(d, s.init, key="seq2seq.init") if s.init else None
        try:
            train_source, eval_source, vocab = sources.seq2seq_sources(
                d, seed=t.seed, bert_vocab=bert_vocab
            )
        except DataError as e:
            if bert_vocab is None:
                raise
            raise ConfigError(f"seq2seq.init={s.init!r}: {e}") from None

        def make(train: bool):
            return seq2seq_iterator(
                train_source if train else eval_source,
                vocab,
                layout=s.layout,
                src_len=s.src_len,
                tgt_len=s.tgt_len,
                batch_size=t.batch_size,
                seed=t.seed,
                train=train,
                shards=d.shards,
            )

        # UniLM rows hold source + separator + target. From a BERT the run keeps the BERT's
        # vocabulary (saved as tokenizer.json, so the run is itself a BERT workdir).
        return TaskData(vocab.size, s.src_len + s.tgt_len + 1, make, bert_vocab or vocab)

    def model_config(self, run: RunConfig, *, vocab_size: int, max_length: int) -> ModelConfig:
        s = run.task_config
        if s.init:  # the pretrained BERT's architecture, with its MLM head to decode with
            mcfg = bert.build_config(
                run,
                s.init,
                key="seq2seq.init",
                vocab_size=vocab_size,
                max_length=max_length,
                mlm_head=True,
                pooler=False,
                num_labels=0,
            )
            return mcfg.replace(num_segments=max(mcfg.num_segments, 2))
        mcfg = super().model_config(run, vocab_size=vocab_size, max_length=max_length)
        if s.layout == "unilm":  # two segments and the MLM head to decode with
            mcfg = mcfg.replace(num_segments=2, mlm_head=True)
        return mcfg

    def model_class(self, run: RunConfig) -> type:
        return EncoderDecoder if run.task_config.layout == "encdec" else Bert

    def initialize(self, run: RunConfig, model) -> None:
        bert.initialize(run.task_config.init, model, key="seq2seq.init")

    def abstract_data(self, run: RunConfig) -> TaskData:
        """The planner's stand-in: the pretrained BERT's vocabulary with init, else ids 0, 1, 2
        standing in for the data's pad, bos and eos among data.vocab_size tokens."""
        s = run.task_config
        pre = bert.pretrained_config(s.init, key="seq2seq.init")  # None without init
        vocab = sources.Seq2seqVocab(run.data.vocab_size, 0, 1, 2) if pre is None else pre[1]
        size = seq2seq_vocab(vocab).size
        return dataclasses.replace(
            super().abstract_data(run),
            vocab_size=size,
            max_length=s.src_len + s.tgt_len + 1,
            vocab=vocab,
        )

    def abstract_batch(self, run: RunConfig, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The rows of `research.data.seq2seq.seq2seq_example` for the run's layout and lengths."""
        s = run.task_config
        row = seq2seq_example(
            [], [], layout=s.layout, src_len=s.src_len, tgt_len=s.tgt_len, pad=0, bos=1, eos=2
        )
        fields = {k: (np.shape(v), np.asarray(v).dtype) for k, v in row.items()}
        return abstract_rows(batch_size, **fields)

    def loss_fn(self, run: RunConfig, data: TaskData):
        s, v = run.task_config, seq2seq_vocab(data.vocab)
        pre = bert.pretrained_config(s.init, key="seq2seq.init")  # None without init
        # The trained model's embedding table: the pretrained one with init.
        mcfg = run.model.replace(vocab_size=v.size) if pre is None else pre[0]
        size, d_model = mcfg.vocab_size, mcfg.d_model
        return make_loss(s, size, v.bos, v.eos, v.pad, d_model)

    def text_prompt(self, run: RunConfig, vocab, text: str) -> TextPrompt | None:
        """`text` as a source research.generate decodes from (None without a text vocabulary):
        the source as training lays it out ([CLS] first for a BERT's vocabulary, cut to
        src_len: longer ran the encoder on positions it never trained); encdec decodes from
        bos, unilm continues the source + separator."""
        v = seq2seq_vocab(vocab)  # a run started from a BERT keeps the BERT's vocabulary
        if v.tok is None:
            return None
        ids = [*v.prefix, *v.tok.encode(text)][: run.task_config.src_len]
        if run.task_config.layout == "unilm":
            return TextPrompt([*ids, v.bos_id], v.tok, None, v.eos_id, v.pad_id)
        return TextPrompt(ids, v.tok, v.bos_id, v.eos_id, v.pad_id)

    def evaluate(self, run: RunConfig, data: TaskData, eval_model, state, batches) -> dict:
        return decode_metrics(
            run.task_config, seq2seq_vocab(data.vocab), eval_model, state, batches
        )


def seq2seq_vocab(vocab) -> sources.Seq2seqVocab:
    """A run's vocabulary as seq2seq ids: itself, or a BERT vocabulary ([CLS] / [SEP])."""
    return vocab if isinstance(vocab, sources.Seq2seqVocab) else sources.bert_seq2seq_vocab(vocab)
