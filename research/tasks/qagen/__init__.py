"""Question generation with UniLM (docs/research_notes.md section 6): passage -> answer -> question.

A row is [CLS] passage [SEP] answer [SEP] question [SEP], padded to data.seq_len. Segment 0 is
[CLS] passage [SEP] (bidirectional); segment 1 is answer [SEP] question [SEP] (causal over
itself, seeing the whole passage): `Bert(unilm=True)`, Dong et al. 2019. The loss is the
cross-entropy of the segment-1 tokens only, each predicted from the token before it. Only the
passage is cut to fit: a window of at most `passage_budget` = seq_len - answer_len -
question_len - 4 tokens that holds the answer. An example whose answer or question is longer
than its budget is dropped (the count is printed when the data is built).

Rows are `research.data.qa_rows`; the loss is `loss.py`. Generation
(`research.sampling.qagen`: traceable, one jit) samples k answers per passage (top-p 0.95 as the
note, or top-k as its first version) until [SEP], then prefills [CLS] passage [SEP] answer [SEP]
with the UniLM mask and beam-searches one question per answer; duplicate answers of a passage
and, with `in_passage`, answers that are not a span of the passage are dropped. Evaluation on
held-out passages (`metrics.py`; `TaskData.eval_examples` carries them and the trivial baseline's
metrics): the question's corpus BLEU-4 and ROUGE-L F1 with the gold answer given, and the
sampled answers' exact match and F1 against the passage's gold answers (SQuAD's max over golds).
"""

import dataclasses
import functools

import jax.numpy as jnp

from research.config import ConfigError, RunConfig
from research.data import DataError, qa, qa_rows, wordpiece
from research.data.shards import array_iterator
from research.models import Bert, ModelConfig
from research.sampling.qagen import Generator
from research.tasks import bert
from research.tasks.base import Task, TaskData, abstract_rows
from research.tasks.qagen import loss, metrics
from research.tasks.qagen.config import QagenConfig
from research.tasks.qagen.metrics import (
    baseline_question,
    evaluate_model,
    fitting,
    question_template,
    template_question,
)

__all__ = [
    "Generator",
    "QagenConfig",
    "QagenTask",
    "baseline_question",
    "evaluate_model",
    "fitting",
    "question_template",
    "read_examples",
    "template_question",
    "train_template",
]


@functools.lru_cache(maxsize=2)
def train_template(source: str, data_dir: str) -> tuple[str, str]:
    """`question_template` of the source's train split, computed once per process (the task's
    baseline and the experiment's examples share it)."""
    return question_template(read_examples(source, data_dir)["train"])


@functools.lru_cache(maxsize=2)
def read_examples(source: str, data_dir: str) -> dict[str, list[dict]]:
    """The source's examples, read once per process (the task's data and the experiment's
    report share them)."""
    return qa.qa_sources(source, data_dir)


def qagen_vocab(run: RunConfig, train: list[dict]) -> wordpiece.BertVocab:
    """The pretrained model's vocabulary; else People's Daily's character vocabulary (the MLM's)
    or one built from the source's train text."""
    s, d = run.task_config, run.data
    if s.init or d.source == "peoples_daily":
        return bert.vocabulary(d, s.init, key="qagen.init")
    texts = lambda: (e[k] for e in train for k in ("passage", "question"))  # noqa: E731
    name = f"qagen-{d.source}"
    if wordpiece.is_local(d.source):
        name += f"-{wordpiece.texts_digest(texts())}"
    path = wordpiece.char_vocab_path(d.data_dir, name, d.vocab_size)
    return wordpiece.train_or_load(texts, path, vocab_size=d.vocab_size)


@dataclasses.dataclass(frozen=True)
class QagenEval:
    """What `QagenTask.evaluate` needs beyond the model (`TaskData.eval_examples`)."""

    held_out: list[dict]  # the validation examples
    baseline: dict  # the trivial baseline's metrics on them (the same at every evaluation)


class QagenTask(Task):
    name = "qagen"
    generate_hint = "generate questions with research.qagen"
    section = "qagen"
    section_type = QagenConfig
    causal = False

    def validate(self, run: RunConfig) -> None:
        s = run.task_config
        try:
            bert.parse_init(s.init, key="qagen.init")
        except ConfigError as e:
            if not s.init.startswith("workdir:"):
                raise
            raise ConfigError(
                f"{e} (train it first: python -m research.main --config=configs/"
                f"mlm.py --workdir={s.init.removeprefix('workdir:')}; or "
                "--config.qagen.init= for random weights)"
            ) from None
        # with init the model built is the pretrained one's architecture: check that
        pre = bert.pretrained_config(s.init, key="qagen.init") if s.init else None
        attention = run.model.attention if pre is None else pre[0].attention
        if attention != "softmax":
            whose = "model.attention" if pre is None else f"{s.init}'s attention"
            raise ConfigError(
                f"task='qagen' needs softmax attention, but {whose} is {attention!r} (the UniLM "
                "mask is not a key-padding mask, which the other kinds require)"
            )
        budget = qa_rows.passage_budget(run.data.seq_len, s.answer_len, s.question_len)
        if budget < max(8, s.answer_len):
            raise ConfigError(
                f"data.seq_len={run.data.seq_len}: leaves {budget} "
                f"passage tokens after qagen.answer_len={s.answer_len} and qagen.question_len="
                f"{s.question_len} (+4 specials); need at least max(8, answer_len)"
            )

    def build_data(self, run: RunConfig) -> TaskData:
        s, t, d = run.task_config, run.train, run.data
        try:
            splits = read_examples(d.source, d.data_dir)
        except DataError as e:
            raise ConfigError(str(e)) from None
        vocab = qagen_vocab(run, splits["train"])
        wanted = {"train": splits["train"][: d.train_examples], "validation": splits["validation"]}
        if len(wanted["train"]) < len(splits["train"]):
            print(
                f"qagen train: the first {len(wanted['train']):,} of {len(splits['train']):,} "
                "examples (data.train_examples)",
                flush=True,
            )
        rows = {
            name: qa_rows.encode_rows(
                vocab,
                wanted[name],
                seq_len=d.seq_len,
                answer_len=s.answer_len,
                question_len=s.question_len,
                name=name,
            )
            for name in wanted
        }
        for name, r in rows.items():
            if len(r) < t.batch_size:
                raise DataError(
                    f"data.source={d.source!r}: the {name} split has {len(r)} rows "
                    f"that fit, fewer than batch_size={t.batch_size}"
                )

        def make(is_train: bool):
            return array_iterator(
                rows["train" if is_train else "validation"],
                batch_size=t.batch_size,
                seed=t.seed,
                train=is_train,
                shards=d.shards,
            )

        held_out = splits["validation"]
        ranked = metrics.ranked_answers(splits["train"])
        template = train_template(d.source, d.data_dir)
        evaluation = QagenEval(
            held_out, metrics.baseline_metrics(vocab, held_out, s, ranked, d.seq_len, template)
        )
        return TaskData(vocab.vocab_size(), d.seq_len, make, vocab, eval_examples=evaluation)

    def model_config(self, run: RunConfig, *, vocab_size: int, max_length: int) -> ModelConfig:
        mcfg = bert.build_config(
            run,
            run.task_config.init,
            key="qagen.init",
            vocab_size=vocab_size,
            max_length=max_length,
            mlm_head=True,
            pooler=False,
            num_labels=0,
        )
        return mcfg.replace(num_segments=max(mcfg.num_segments, 2))

    def model_class(self, run: RunConfig) -> type:
        return Bert

    def initialize(self, run: RunConfig, model) -> None:
        bert.initialize(run.task_config.init, model, key="qagen.init")

    def abstract_batch(self, run: RunConfig, batch_size: int) -> dict:
        """Question-generation rows: inputs, targets, segment_ids [B, seq_len] int32, mask
        [B, seq_len] bool and weights [B, seq_len] float32 (`research.data.qa_rows`)."""
        row = (run.data.seq_len,)
        return abstract_rows(
            batch_size,
            inputs=(row, jnp.int32),
            targets=(row, jnp.int32),
            segment_ids=(row, jnp.int32),
            mask=(row, jnp.bool_),
            weights=(row, jnp.float32),
        )

    def loss_fn(self, run: RunConfig, data: TaskData):
        s = run.task_config
        return loss.make_qagen_loss(s.answer_len + s.question_len + 2)

    def evaluate(self, run: RunConfig, data: TaskData, eval_model, state, batches) -> dict:
        """The model's generation metrics and, as baseline_*, the trivial baseline's."""
        model = eval_model(state.params, state.consts)
        s, evaluation = run.task_config, data.eval_examples
        out = metrics.evaluate_model(
            model, data.vocab, evaluation.held_out, s, run.data.seq_len, seed=run.train.seed
        )
        return out | {f"baseline_{k}": v for k, v in evaluation.baseline.items()}
