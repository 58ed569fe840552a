"""PET (Schick & Schütze 2021): classification as a cloze task for a masked LM.

A pattern (`research.data.patterns.Pattern`) writes the text and [MASK] slots into one row, e.g.
"[MASK]满意。{text}" ("very satisfied." before a review, the slot on 很); a verbalizer names a word
per label (negative 不, positive 很). A label's score is the MLM's log-probability of its word at
the slots (`research.ops.pet.label_scores`); the prediction is the best-scoring label, so a
pretrained MLM classifies with no training at all (zero-shot).

Training (`pet` section) is MLM training on rows built from the train split:
  labeled rows      the pattern applied, the slots' targets the label's verbalizer tokens, and
                    15% random MLM masking of the other tokens (80/10/10), as in the note;
  unlabeled rows    (pet.unlabeled = true: semi-supervised) [CLS] text [SEP] with random MLM
                    masking only, mixed into the same batches: pet.unlabeled_share of the rows,
                    or with pet.natural_mix their natural proportion, unlabeled / (labeled +
                    unlabeled) (the reference trains on the union of both lists, shuffled).
The loss is the cross-entropy at every predicted position (`research.tasks.mlm.mlm_loss`).
Evaluation scores the validation split through the pattern: loss = -log p(label's words), and
accuracy.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from research import ops
from research.config import ConfigError, RunConfig
from research.data import DataError, classification, cloze, patterns, wordpiece
from research.tasks import bert
from research.tasks.base import TaskData
from research.tasks.bert import BertTask
from research.tasks.classify import check_labels, labeled_subset
from research.tasks.mlm import abstract_mlm_batch, make_mlm_loss, max_predictions


@dataclasses.dataclass(frozen=True)
class PetConfig:
    """The `pet` section."""

    init: str = ""  # the MLM: workdir:PATH (an mlm run) | hf:PATH | "" (random: for tests)
    template: str = "[MASK]满意。{text}"  # "{text}" once, [MASK] per verbalizer token
    verbalizer: tuple[str, ...] = ("不", "很")  # the word of label 0, 1, ...
    labeled_examples: int = 0  # train on this many labeled train examples (seeded draw); 0 = all
    unlabeled: bool = False  # semi-supervised: also plain-MLM rows of all train text
    unlabeled_share: float = 0.5  # share of each batch's rows that are unlabeled
    natural_mix: bool = False  # instead: unlabeled / (labeled + unlabeled), the reference's mix
    mask_rate: float = 0.15  # random MLM masking of the rows' tokens (80/10/10)

    def __post_init__(self):
        if not isinstance(self.labeled_examples, int) or self.labeled_examples < 0:
            raise ValueError(f"labeled_examples={self.labeled_examples!r}: must be an int >= 0")
        if not 0.0 < self.unlabeled_share < 1.0:
            raise ValueError(f"unlabeled_share={self.unlabeled_share!r}: must be in (0, 1)")
        if not 0.0 <= self.mask_rate < 1.0:
            raise ValueError(f"mask_rate={self.mask_rate!r}: must be in [0, 1)")
        for name in ("unlabeled", "natural_mix"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be true or false")

    @property
    def pattern(self) -> patterns.Pattern:
        return patterns.Pattern(self.template, tuple(self.verbalizer))


def mix_share(cfg: PetConfig, labeled: int, unlabeled: int) -> float:
    """The share of semi-supervised training rows that are unlabeled: cfg.unlabeled_share, or
    with cfg.natural_mix unlabeled / (labeled + unlabeled), the two lists' natural proportion."""
    return unlabeled / (labeled + unlabeled) if cfg.natural_mix else cfg.unlabeled_share


def check_room(pattern: patterns.Pattern, vocab, seq_len: int) -> None:
    """ConfigError unless rows of seq_len tokens hold the pattern and some text (the training
    and scoring rows raised a bare ValueError at their first batch)."""
    try:
        patterns.encode(pattern, "", vocab, max_length=seq_len)
    except ValueError as e:
        raise ConfigError(str(e).replace("max_length", "data.seq_len")) from None


def pattern_for(cfg: PetConfig, vocab) -> tuple[patterns.Pattern, np.ndarray]:
    """(pattern, verbalizer ids [num_labels, S]) checked against the vocabulary (ConfigError)."""
    try:
        pattern = cfg.pattern
        return pattern, patterns.verbalizer_ids(pattern, vocab)
    except ValueError as e:
        raise ConfigError(f"pet: {e}") from None


def make_loss(verbalizer_ids: np.ndarray, max_predicted: int):
    """Training batches (with targets) get the MLM loss, their hits as accuracy/mlm (over every
    predicted token); evaluation batches (with mask_positions, labels) the loss
    -sum_s log p(verbalizer[label, s] at slot s) and the label accuracy."""
    table = jnp.asarray(verbalizer_ids)
    mlm_loss = make_mlm_loss(max_predicted)

    def loss_fn(model, batch, *, key=None, step=None):
        if "targets" in batch:
            # MLM hits over every predicted token (slots, random masks, unlabeled rows): logged
            # as accuracy/mlm, so that "accuracy" is only ever the evaluation's label accuracy
            loss_sum, weight_sum, sums = mlm_loss(model, batch)
            hits = sums.pop("correct")
            return loss_sum, weight_sum, {**sums, "correct/mlm": hits, "predicted/mlm": weight_sum}
        pos = batch["mask_positions"]  # the head runs at the slots only: logits [B, S, V]
        logits = model(batch["inputs"], mask=batch["mask"], predict_at=pos).logits
        pos = jnp.broadcast_to(jnp.arange(pos.shape[1]), pos.shape)
        scores = ops.label_scores(logits, pos, table)
        weights = batch["weights"]
        loss_sum, weight_sum = ops.pet_loss(logits, pos, table, batch["labels"], weights)
        hits = (jnp.argmax(scores, axis=-1) == batch["labels"]) * weights
        return loss_sum, weight_sum, {"correct": jnp.sum(hits)}

    return loss_fn


def scores(
    model, vocab, pattern: patterns.Pattern, records, *, seq_len: int, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(label scores [N, num_labels], labels [N]) of every record through `pattern`: the MLM's
    log-probability of each label's words at the slots (`research.ops.label_scores`)."""
    table = jnp.asarray(patterns.verbalizer_ids(pattern, vocab))

    @jax.jit
    def score(m, x, k, pos):
        logits = m(x, mask=k, predict_at=pos).logits  # [B, S, V]: the slots only
        at = jnp.broadcast_to(jnp.arange(pos.shape[1]), pos.shape)
        return ops.label_scores(logits, at, table)

    out, labels = [], []
    for b in cloze.eval_batches(records, vocab, pattern, seq_len=seq_len, batch_size=batch_size):
        keep = b["weights"] > 0
        out.append(np.asarray(score(model, b["inputs"], b["mask"], b["mask_positions"]))[keep])
        labels.append(b["labels"][keep])
    return np.concatenate(out), np.concatenate(labels)


def accuracy(
    model, vocab, pattern: patterns.Pattern, records, *, seq_len: int, batch_size: int = 64
) -> float:
    """Share of `records` whose best-scoring label (through `pattern`) is the label."""
    table = jnp.asarray(patterns.verbalizer_ids(pattern, vocab))

    @jax.jit
    def predict(m, x, k, pos):
        logits = m(x, mask=k, predict_at=pos).logits  # [B, S, V]: the slots only
        at = jnp.broadcast_to(jnp.arange(pos.shape[1]), pos.shape)
        return jnp.argmax(ops.label_scores(logits, at, table), axis=-1)

    batches = cloze.eval_batches(records, vocab, pattern, seq_len=seq_len, batch_size=batch_size)
    return bert.accuracy(
        lambda b: predict(model, b["inputs"], b["mask"], b["mask_positions"]), batches
    )


class PetTask(BertTask):
    name = "pet"
    section = "pet"
    section_type = PetConfig
    predicts_tokens = False

    def parse_section(self, section):
        cfg = super().parse_section(section)
        try:
            cfg.pattern  # noqa: B018 - the template and verbalizer on their own, before any data
        except ValueError as e:
            raise ConfigError(f"pet: {e}") from None
        return cfg

    def build_data(self, run: RunConfig) -> TaskData:
        s, t, d = run.task_config, run.train, run.data
        vocab = self.vocabulary(run)
        pattern, verbalizer = pattern_for(s, vocab)
        check_room(pattern, vocab, d.seq_len)
        train, validation, _ = classification.sources_of(d)
        labeled = labeled_subset(train, s.labeled_examples, t.seed)
        num_labels = len(s.verbalizer)
        for name, records in (("train", labeled), ("validation", validation)):
            try:
                check_labels(records, num_labels, name=f"{d.source} {name}")
            except DataError as e:
                raise DataError(f"{e} (pet.verbalizer has {num_labels} words)") from None
        unlabeled = train if s.unlabeled else None
        share = mix_share(s, len(labeled), len(train))

        def make(is_train: bool):
            if is_train:
                return cloze.train_iterator(
                    labeled,
                    unlabeled,
                    vocab,
                    pattern,
                    seq_len=d.seq_len,
                    batch_size=t.batch_size,
                    seed=t.seed,
                    rate=s.mask_rate,
                    unlabeled_share=share,
                    shards=d.shards,
                )
            return cloze.eval_iterator(
                validation,
                vocab,
                pattern,
                seq_len=d.seq_len,
                batch_size=t.batch_size,
                shards=d.shards,
            )

        return TaskData(vocab.vocab_size(), d.seq_len, make, vocab)

    def abstract_data(self, run: RunConfig) -> TaskData:
        """The planner's stand-in, with the vocabulary the verbalizer's ids need: the pretrained
        one, or (init "": the run builds a character vocabulary from the data) a character
        vocabulary of the verbalizer's own words, which tokenizes them alike."""
        s = run.task_config
        if s.init:
            vocab = self.vocabulary(run)
        else:
            tokens = len(wordpiece.SPECIALS) + sum(len(w) for w in s.verbalizer)
            tokenizer = wordpiece.build_char_tokenizer(s.verbalizer, vocab_size=tokens)
            vocab = wordpiece.BertVocab(tokenizer)
        return dataclasses.replace(super().abstract_data(run), vocab=vocab)

    def abstract_batch(self, run: RunConfig, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        return abstract_mlm_batch(batch_size, run.data.seq_len)  # the training rows

    def loss_fn(self, run: RunConfig, data: TaskData):
        s = run.task_config
        table = pattern_for(s, data.vocab)[1]
        return make_loss(table, max_predictions(run.data.seq_len, s.mask_rate, table.shape[1]))


def zero_shot_signal(validation: tuple, test: tuple, unlabeled=None) -> dict:
    """Whether a two-label zero-shot score carries signal beyond its prior. validation and test
    are (scores [N, 2], labels [N]) (`research.tasks.pet.scores`); the gap is score(label 1) -
    score(label 0). unlabeled: scores [M, 2] of unlabeled examples, or None.

    Returns:
      auc_validation / auc_test: the probability that a label-1 example's gap exceeds a label-0
        example's (Mann-Whitney U / (n1 n0)); 0.5 = no signal, whatever the prior.
      threshold: the gap threshold of best validation accuracy (the prior calibrated away on
        validation), and threshold_validation / threshold_test: the accuracy (%) with it.
      positive_share_test: the share of test examples the plain argmax puts in label 1.
      With `unlabeled`: median_threshold, the median gap of the unlabeled examples (a threshold
        that uses no label, right when the two labels are about equally common), and
        median_validation / median_test: the accuracy (%) with it.
    """
    import scipy.stats  # here, not at import: every CLI process imports this module

    gaps = {}
    for name, (s, y) in (("validation", validation), ("test", test)):
        gaps[name] = (s[:, 1] - s[:, 0], np.asarray(y))
    out = {}
    for name, (g, y) in gaps.items():
        u = scipy.stats.mannwhitneyu(g[y == 1], g[y == 0]).statistic
        out[f"auc_{name}"] = float(u / ((y == 1).sum() * (y == 0).sum()))
    g, y = gaps["validation"]
    cuts = np.concatenate([[-np.inf], np.unique(g)])  # predict 1 where gap > cut
    accs = [float(np.mean((g > t) == y)) for t in cuts]
    t = float(cuts[int(np.argmax(accs))])
    gt, yt = gaps["test"]
    out |= {
        "threshold": t,
        "threshold_validation": 100 * max(accs),
        "threshold_test": 100 * float(np.mean((gt > t) == yt)),
        "positive_share_test": float(np.mean(gt > 0)),
    }
    if unlabeled is not None:
        m = float(np.median(unlabeled[:, 1] - unlabeled[:, 0]))
        out["median_threshold"] = m
        for name, (g, y) in gaps.items():
            out[f"median_{name}"] = 100 * float(np.mean((g > m) == y))
    return out
