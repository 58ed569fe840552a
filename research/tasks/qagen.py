"""Question generation with UniLM (docs/research_notes.md section 6): passage -> answer -> question.

A row is [CLS] passage [SEP] answer [SEP] question [SEP], padded to data.seq_len. Segment 0 is
[CLS] passage [SEP] (bidirectional); segment 1 is answer [SEP] question [SEP] (causal over
itself, seeing the whole passage): `Bert(unilm=True)`, Dong et al. 2019. The loss is the
cross-entropy of the segment-1 tokens only, each predicted from the token before it. Only the
passage is cut to fit: a window of at most `passage_budget` = seq_len - answer_len -
question_len - 4 tokens that holds the answer. An example whose answer or question is longer
than its budget is dropped (the count is printed when the data is built).

Generation (`generate_qa`, traceable, one jit): stage 1 samples k answers per passage (top-p
0.95 as the note, or top-k as its first version) until [SEP]; stage 2 prefills [CLS] passage
[SEP] answer [SEP] with the UniLM mask and beam-searches one question per answer. Duplicate
answers of a passage and, with `in_passage`, answers that are not a span of the passage are
marked dropped (`keep`). Evaluation on held-out passages: the question's corpus BLEU-4 and
ROUGE-L F1 with the gold answer given (`research.tasks.seq2seq.metrics.text_scores`, shared by
every task), and the sampled answers' exact match and F1 against the passage's gold answers
(SQuAD's max over golds); CJK text is scored per character, other text per word (`text_units`).
"""

import collections
import dataclasses
import functools
import itertools
import unicodedata

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Int

from research import ops
from research.config import ConfigError, RunConfig
from research.data import DataError, pipeline, qa, wordpiece
from research.models import Bert, ModelConfig
from research.ops import decoding
from research.ops.checks import check_positive_field
from research.tasks import bert
from research.tasks.base import Task, TaskData
from research.tasks.seq2seq.metrics import text_scores, text_units


@dataclasses.dataclass(frozen=True)
class QagenConfig:
    """The `qagen` section."""

    init: str = ""  # "" (random) | workdir:PATH (an mlm run) | hf:PATH (research.tasks.bert)
    answer_len: int = 8  # longest answer in tokens (longer examples are dropped)
    question_len: int = 64  # longest question in tokens (longer examples are dropped)
    num_answers: int = 4  # k answers sampled per passage
    top_p: float = 0.95  # answer sampling: nucleus mass (the note)
    top_k: int = 0  # answer sampling: keep the k most likely tokens (0 = off; the note's v1: 5)
    temperature: float = 1.0
    beam_size: int = 3  # the question's beam search
    in_passage: bool = True  # keep only sampled answers that are a span of the passage
    eval_examples: int = 128  # held-out (passage, answer) pairs: the question's BLEU-4/ROUGE-L
    eval_passages: int = 64  # held-out passages: the sampled answers' EM / F1

    def __post_init__(self):
        for name in ("answer_len", "question_len", "num_answers", "beam_size"):
            check_positive_field(name, getattr(self, name))
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r}: must be in (0, 1]")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r}: must be an int >= 0 (0 = off)")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature!r}: must be > 0")
        if not isinstance(self.in_passage, bool):
            raise ValueError(f"in_passage={self.in_passage!r}: must be true or false")
        for name in ("eval_examples", "eval_passages"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r}: must be an int >= 0")


def passage_budget(seq_len: int, s: QagenConfig) -> int:
    """Passage tokens a row leaves room for: [CLS] p [SEP] a [SEP] q [SEP]."""
    return seq_len - s.answer_len - s.question_len - 4


# ---- rows ---------------------------------------------------------------------------------


def passage_window(vocab, passage: str, start: int, n_chars: int, budget: int) -> list[int]:
    """The passage's token ids, cut to `budget` tokens: the window that holds the answer
    passage[start : start + n_chars] near its middle (start < 0: the first tokens)."""
    if start < 0:
        return vocab.encode(passage)[:budget]
    before = vocab.encode(passage[:start])
    span = vocab.encode(passage[start : start + n_chars])
    ids = before + span + vocab.encode(passage[start + n_chars :])
    if len(ids) <= budget:
        return ids
    first = max(0, min(len(before) - (budget - len(span)) // 2, len(ids) - budget))
    return ids[first : first + budget]


def qa_row(
    passage, answer, question, *, seq_len: int, cls_id: int, sep_id: int, pad_id: int
) -> dict:
    """One training row from token ids: inputs, segment_ids, mask [L]; targets [L] (the next
    token) and weights [L] (1 where the next token is in segment 1)."""
    ids = [cls_id, *passage, sep_id, *answer, sep_id, *question, sep_id]
    if len(ids) > seq_len:
        raise ValueError(f"a row of {len(ids)} tokens does not fit seq_len={seq_len}")
    n0 = len(passage) + 2
    inputs = np.full(seq_len, pad_id, np.int32)
    inputs[: len(ids)] = ids
    pos = np.arange(seq_len)
    targets = np.full(seq_len, pad_id, np.int32)
    targets[: len(ids) - 1] = ids[1:]
    weights = ((pos >= n0 - 1) & (pos < len(ids) - 1)).astype(np.float32)
    return {
        "inputs": inputs,
        "segment_ids": (pos >= n0).astype(np.int32),
        "mask": pos < len(ids),
        "targets": targets,
        "weights": weights,
    }


def encode_example(vocab, ex: dict, *, seq_len: int, s: QagenConfig) -> dict | None:
    """The row of example {passage, answer, question, answer_start}; None when the answer or
    the question is longer than its budget (or encodes to nothing)."""
    answer, question = vocab.encode(ex["answer"]), vocab.encode(ex["question"])
    if not 0 < len(answer) <= s.answer_len or not 0 < len(question) <= s.question_len:
        return None
    passage = passage_window(
        vocab,
        ex["passage"],
        ex.get("answer_start", -1),
        len(ex["answer"]),
        passage_budget(seq_len, s),
    )
    return qa_row(
        passage,
        answer,
        question,
        seq_len=seq_len,
        cls_id=vocab.cls_id,
        sep_id=vocab.sep_id,
        pad_id=vocab.pad_id,
    )


def encode_rows(vocab, examples, *, seq_len: int, s: QagenConfig, name: str) -> list[dict]:
    rows = [encode_example(vocab, e, seq_len=seq_len, s=s) for e in examples]
    kept = [r for r in rows if r is not None]
    if len(kept) < len(rows):
        print(
            f"qagen {name}: {len(rows) - len(kept):,} of {len(rows):,} examples dropped (answer "
            f"> {s.answer_len} or question > {s.question_len} tokens)",
            flush=True,
        )
    return kept


def prompts(vocab, passages, *, budget: int, answers=None, starts=None):
    """[CLS] passage [SEP] prompts, right-padded: (ids [N, budget + 2], lengths [N]). With
    `answers` (str or None per passage) the window holds the answer at `starts` (its character
    offset; None: the first occurrence)."""
    out = np.full((len(passages), budget + 2), vocab.pad_id, np.int32)
    lengths = np.zeros(len(passages), np.int32)
    for i, p in enumerate(passages):
        a = None if answers is None else answers[i]
        start = -1 if a is None else p.find(a) if starts is None else starts[i]
        ids = [vocab.cls_id, *passage_window(vocab, p, start, len(a or ""), budget), vocab.sep_id]
        out[i, : len(ids)] = ids
        lengths[i] = len(ids)
    return out, lengths


def make_qagen_loss(max_targets: int):
    """loss_fn on qagen rows: cross-entropy of the segment-1 tokens; the MLM head runs only at
    the `max_targets` (= answer_len + question_len + 2) positions that predict them."""

    def loss(model, batch: dict, *, key=None, step=None):
        w = batch["weights"]
        at = jnp.argsort(-w, axis=-1, stable=True)[:, :max_targets]
        weights = jnp.take_along_axis(w, at, axis=1)
        targets = jnp.take_along_axis(batch["targets"], at, axis=1)
        logits = model(
            batch["inputs"],
            segment_ids=batch["segment_ids"],
            mask=batch["mask"],
            unilm=True,
            predict_at=at,
        ).logits
        loss_sum, weight_sum = ops.cross_entropy(logits, targets, mask=weights)
        hits = (jnp.argmax(logits, axis=-1) == targets) * weights
        return loss_sum, weight_sum, {"correct": jnp.sum(hits)}

    return loss


# ---- two-stage generation (traceable) -----------------------------------------------------


def answer_lengths(tokens: Int[Array, "n a"], sep_id: int) -> tuple[Array, Array]:
    """Sampled answers [N, A] -> (tokens before the first [SEP] [N], whether it ended [N])."""
    is_sep = tokens == sep_id
    ended = jnp.any(is_sep, axis=1)
    return jnp.where(ended, jnp.argmax(is_sep, axis=1), tokens.shape[1]).astype(jnp.int32), ended


def question_prompts(
    prompt: Int[Array, "n p"],
    lengths: Int[Array, " n"],
    answers: Int[Array, "n a"],
    answer_len: Int[Array, " n"],
    *,
    sep_id: int,
    pad_id: int,
):
    """[CLS] passage [SEP] + answer [SEP] -> (tokens [N, P + A + 1], segment ids (1 from the
    answer on), lengths [N])."""
    n, p = prompt.shape
    a = answers.shape[1]
    pos = jnp.arange(p + a + 1)[None, :]
    rel = pos - lengths[:, None]  # index into the answer
    ans = jnp.take_along_axis(answers, jnp.clip(rel, 0, a - 1), axis=1)
    wide = jnp.pad(prompt, ((0, 0), (0, a + 1)), constant_values=pad_id)
    alen = answer_len[:, None]
    after = jnp.where(rel < alen, ans, jnp.where(rel == alen, sep_id, pad_id))
    tokens = jnp.where(rel < 0, wide, after)
    return tokens, (rel >= 0).astype(jnp.int32), lengths + answer_len + 1


def answer_log_prob(model, tokens, segments, lengths, prompt_lengths, answer_len, max_answer):
    """log p(answer [SEP] | passage) [N] under the model, from one UniLM forward pass."""
    valid = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
    at = jnp.clip(
        prompt_lengths[:, None] - 1 + jnp.arange(max_answer + 1)[None, :], 0, tokens.shape[1] - 2
    )
    logits = model(tokens, segment_ids=segments, mask=valid, unilm=True, predict_at=at).logits
    targets = jnp.take_along_axis(tokens, at + 1, axis=1)
    scored = jnp.arange(max_answer + 1)[None, :] <= answer_len[:, None]
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]
    return jnp.sum(jnp.where(scored, lp, 0.0), axis=1)


def beam_questions(
    model, tokens, segments, lengths, *, question_len: int, beam_size: int, sep_id: int, pad_id: int
):
    """The best beam's question [N, question_len + 1] ([SEP]-ended, pad after) and its log-prob
    [N], continuing the prompts `tokens` (segments as given, UniLM mask) as segment 1."""
    logits, cache = model.prefill(
        tokens,
        lengths=lengths,
        segment_ids=segments,
        unilm=True,
        max_length=tokens.shape[1] + question_len + 1,
    )
    step = functools.partial(model.decode_step, segment=1)
    seqs, scores = decoding.beam_search(
        step,
        logits,
        cache,
        beam_size=beam_size,
        max_new_tokens=question_len + 1,
        eos_id=sep_id,
        pad_id=pad_id,
    )
    return seqs[:, 0], scores[:, 0]


def in_passage(prompt, lengths, answers, answer_len) -> Bool[Array, " n"]:
    """Whether each answer's tokens [N, A] (first answer_len) are a span of its passage (the
    prompt's tokens 1 .. lengths - 2)."""
    n, p = prompt.shape
    a = answers.shape[1]
    idx = jnp.clip(jnp.arange(p)[:, None] + jnp.arange(a)[None, :], 0, p - 1)  # [P, A]
    window = prompt[:, idx]  # [N, P, A]
    same = (window == answers[:, None, :]) | (jnp.arange(a) >= answer_len[:, None])[:, None, :]
    starts = jnp.arange(p)[None, :]
    fits = (starts >= 1) & (starts + answer_len[:, None] <= lengths[:, None] - 1)
    return jnp.any(jnp.all(same, axis=2) & fits, axis=1) & (answer_len > 0)


def first_of_each(answers, answer_len, valid) -> Bool[Array, "b k"]:
    """[B, k, A] answers -> True for a valid answer no earlier valid answer of its passage
    equals (deduplication)."""
    a = answers.shape[2]
    key = jnp.where(jnp.arange(a) < answer_len[..., None], answers, -1)
    same = jnp.all(key[:, :, None, :] == key[:, None, :, :], axis=-1)  # [B, k, k]
    k = answers.shape[1]
    earlier = jnp.tril(jnp.ones((k, k), bool), -1)  # [j, i]: i < j
    dup = jnp.any(same & earlier[None] & valid[:, None, :], axis=2)
    return valid & ~dup


def generate_qa(
    model,
    prompt: Int[Array, "b p"],
    lengths: Int[Array, " b"],
    key,
    *,
    num_answers: int,
    answer_len: int,
    question_len: int,
    top_p: float = 1.0,
    top_k: int = 0,
    temperature: float = 1.0,
    beam_size: int = 1,
    sep_id: int,
    pad_id: int,
    require_in_passage: bool = True,
    banned_ids: tuple[int, ...] = (),
) -> dict:
    """Two-stage generation for prompts [CLS] passage [SEP] [B, P] (right-padded to lengths).

    Stage 1 samples `num_answers` answers per passage (up to answer_len tokens, then [SEP]);
    stage 2 beam-searches one question per answer; `banned_ids` are never sampled. The stage-2
    row, [CLS] passage [SEP] answer [SEP] question [SEP], is at most P + answer_len + 1 +
    question_len + 1 tokens (= seq_len for P = the passage budget + 2).
    Returns answers [B, k, answer_len + 1] (sampled tokens, [SEP] and pad), answer_length
    [B, k], answer_score (log p(answer [SEP] | passage)) [B, k], questions [B, k,
    question_len + 1], question_score (the beam's log-prob) [B, k], and keep [B, k]: ended
    with [SEP], non-empty, first of its duplicates, and a span of the passage when
    `require_in_passage`.
    """
    b, k = prompt.shape[0], num_answers
    rep, rep_len = jnp.repeat(prompt, k, axis=0), jnp.repeat(lengths, k)
    logits, cache = model.prefill(rep, lengths=rep_len, max_length=rep.shape[1] + answer_len + 1)
    # Special tokens ([PAD], [CLS], [MASK], ...) are never answer text.
    ban = jnp.zeros(logits.shape[-1]).at[jnp.asarray(banned_ids, jnp.int32)].set(-jnp.inf)

    def step(token, cache):
        logits, cache = model.decode_step(token, cache, segment=1)
        return logits + ban, cache

    sampled = decoding.sample(
        step,
        logits + ban,
        cache,
        key,
        max_new_tokens=answer_len + 1,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_tokens=(sep_id,),
        pad_id=pad_id,
    )
    alen, ended = answer_lengths(sampled, sep_id)
    valid = ended & (alen > 0)
    alen = jnp.minimum(alen, answer_len)
    answers = sampled[:, :answer_len]  # the [SEP] slot dropped: the stage-2 row fits seq_len
    out = questions_for(
        model,
        rep,
        rep_len,
        answers,
        alen,
        question_len=question_len,
        beam_size=beam_size,
        sep_id=sep_id,
        pad_id=pad_id,
    )
    if require_in_passage:
        valid = valid & in_passage(rep, rep_len, answers, alen)
    keep = first_of_each(sampled.reshape(b, k, -1), alen.reshape(b, k), valid.reshape(b, k))
    shaped = {name: x.reshape(b, k, *x.shape[1:]) for name, x in out.items()}
    return {"answers": sampled.reshape(b, k, -1), **shaped, "keep": keep}


def questions_for(
    model,
    prompt,
    lengths,
    answers,
    answer_len,
    *,
    question_len: int,
    beam_size: int,
    sep_id: int,
    pad_id: int,
) -> dict:
    """Stage 2 for given answers [N, A] (their first answer_len [N] tokens): answer_length,
    answer_score, questions [N, question_len + 1], question_score (see `generate_qa`)."""
    tokens, segments, qlen = question_prompts(
        prompt, lengths, answers, answer_len, sep_id=sep_id, pad_id=pad_id
    )
    score = answer_log_prob(model, tokens, segments, qlen, lengths, answer_len, answers.shape[1])
    questions, q_score = beam_questions(
        model,
        tokens,
        segments,
        qlen,
        question_len=question_len,
        beam_size=beam_size,
        sep_id=sep_id,
        pad_id=pad_id,
    )
    return {
        "answer_length": answer_len,
        "answer_score": score,
        "questions": questions,
        "question_score": q_score,
    }


# ---- metrics ------------------------------------------------------------------------------


def answer_units(text: str) -> list[str]:
    """SQuAD's answer normalisation on `text_units`: accents stripped (NFKD), punctuation and
    the English articles dropped; CJK characters stay one unit each."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return [t for t in text_units(plain) if t.isalnum() and t not in ("a", "an", "the")]


def span_f1(prediction: str, gold: str) -> float:
    """SQuAD's F1: the bag overlap of `answer_units`."""
    p, g = answer_units(prediction), answer_units(gold)
    common = sum(min(p.count(t), g.count(t)) for t in set(p))
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def answer_scores(predictions: list[list[str]], golds: list[list[str]]) -> dict:
    """Exact match and F1 of every predicted answer against its passage's gold answers (max over
    them), x100, averaged over the predictions; `answers` = predictions per passage."""
    em, f1 = [], []
    for preds, gold in zip(predictions, golds, strict=True):
        for p in preds:
            em.append(max(answer_units(p) == answer_units(g) for g in gold))
            f1.append(max(span_f1(p, g) for g in gold))
    return {
        "answer_em": 100 * float(np.mean(em)) if em else 0.0,
        "answer_f1": 100 * float(np.mean(f1)) if f1 else 0.0,
        "answers": float(np.mean([len(p) for p in predictions])),
    }


def baseline_question(ex: dict) -> str:
    """The trivial baseline: the sentence that holds the answer, the answer removed."""
    p, a = ex["passage"], ex["answer"]
    start = ex.get("answer_start", p.find(a))
    ends = "。！？；.!?;\n"
    first = max([p.rfind(c, 0, start) for c in ends]) + 1
    last = min([i for i in (p.find(c, start + len(a)) for c in ends) if i >= 0] or [len(p)])
    return (p[first:start] + p[start + len(a) : last]).strip()


def by_passage(examples: list[dict], n: int) -> list[tuple[str, list[str]]]:
    """The first n distinct passages with all their gold answers."""
    out: dict[str, list[str]] = {}
    for e in examples:
        if e["passage"] not in out and len(out) == n:
            continue
        out.setdefault(e["passage"], []).append(e["answer"])
    return list(out.items())


def frequent_answers(ranked: list[str], passage: str, k: int) -> list[str]:
    """The answer baseline: the first k of `ranked` (train answers, most frequent first) that
    occur in `passage` (the text the model sees)."""
    return list(itertools.islice((a for a in ranked if a in passage), k))


def baseline_metrics(
    vocab, held_out: list[dict], s: QagenConfig, ranked: list[str], seq_len: int
) -> dict:
    """The trivial baseline on the pairs and passages `evaluate_model` scores: the question is
    the answer's sentence without the answer (`baseline_question`); the answers are the
    num_answers most frequent train answers found in the passage (`frequent_answers`)."""
    out = {}
    pairs = fitting(vocab, held_out, s, s.eval_examples)
    if pairs:
        scores = text_scores([baseline_question(e) for e in pairs], [e["question"] for e in pairs])
        out |= {"question_bleu4": scores["bleu"], "question_rougeL": scores["rougeL"]}
    passages = by_passage(held_out, s.eval_passages)
    if passages:
        budget = passage_budget(seq_len, s)  # the window generation sees: the first tokens
        seen = [vocab.decode(passage_window(vocab, p, -1, 0, budget)) for p, _ in passages]
        out |= answer_scores(
            [frequent_answers(ranked, p, s.num_answers) for p in seen],
            [golds for _, golds in passages],
        )
    return out


# ---- the task -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def read_examples(source: str, data_dir: str) -> dict[str, list[dict]]:
    """The source's examples, read once per process (evaluation runs several times)."""
    return qa.qa_sources(source, data_dir)


@functools.lru_cache(maxsize=2)
def _ranked_answers(source: str, data_dir: str) -> list[str]:
    """The train split's answers, most frequent first (the answer baseline)."""
    counts = collections.Counter(e["answer"] for e in read_examples(source, data_dir)["train"])
    return [a for a, _ in counts.most_common()]


def qagen_vocab(run: RunConfig, train: list[dict]) -> wordpiece.BertVocab:
    """The pretrained model's vocabulary; else People's Daily's character vocabulary (the MLM's)
    or one built from the source's train text."""
    s, d = run.task_config, run.data
    if s.init or d.source == "peoples_daily":
        return bert.vocabulary(d, s.init, key="qagen.init")
    texts = lambda: (e[k] for e in train for k in ("passage", "question"))  # noqa: E731
    path = wordpiece.char_vocab_path(d.data_dir, f"qagen-{d.source}", d.vocab_size)
    return wordpiece.train_or_load(texts, path, vocab_size=d.vocab_size)


_BASELINES: dict = {}


class QagenTask(Task):
    name = "qagen"
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
        if run.model.attention != "softmax":
            raise ConfigError(
                "task='qagen' needs model.attention='softmax' (the UniLM mask is not a "
                "key-padding mask, which linear attention requires)"
            )
        if passage_budget(run.data.seq_len, s) < max(8, s.answer_len):
            raise ConfigError(
                f"data.seq_len={run.data.seq_len}: leaves {passage_budget(run.data.seq_len, s)} "
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
        rows = {
            name: encode_rows(vocab, wanted[name], seq_len=d.seq_len, s=s, name=name)
            for name in wanted
        }
        for name, r in rows.items():
            if len(r) < t.batch_size:
                raise DataError(
                    f"data.source={d.source!r}: the {name} split has {len(r)} rows "
                    f"that fit, fewer than batch_size={t.batch_size}"
                )

        def make(is_train: bool):
            return pipeline.array_iterator(
                rows["train" if is_train else "validation"],
                batch_size=t.batch_size,
                seed=t.seed,
                train=is_train,
                shards=d.shards,
            )

        return TaskData(vocab.vocab_size(), d.seq_len, make, vocab)

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

    def loss_fn(self, run: RunConfig, data: TaskData | None):
        s = run.task_config
        return make_qagen_loss(s.answer_len + s.question_len + 2)

    def evaluate(self, run: RunConfig, data: TaskData, eval_model, state, batches) -> dict:
        """The model's generation metrics and, as baseline_*, the trivial baseline's."""
        model = eval_model(state.params, state.consts)
        splits = read_examples(run.data.source, run.data.data_dir)
        s, held_out = run.task_config, splits["validation"]
        out = evaluate_model(model, data.vocab, held_out, s, run.data.seq_len, seed=run.train.seed)
        key = (run.data.source, run.data.data_dir, s, run.data.seq_len)
        if key not in _BASELINES:  # the same at every evaluation of a run
            ranked = _ranked_answers(run.data.source, run.data.data_dir)
            _BASELINES[key] = baseline_metrics(data.vocab, held_out, s, ranked, run.data.seq_len)
        return out | {f"baseline_{k}": v for k, v in _BASELINES[key].items()}


def fitting(vocab, examples, s: QagenConfig, n: int) -> list[dict]:
    """The first n examples whose answer and question fit their budgets."""
    out = []
    for e in examples:
        if len(out) == n:
            break
        a, q = vocab.encode(e["answer"]), vocab.encode(e["question"])
        if 0 < len(a) <= s.answer_len and 0 < len(q) <= s.question_len:
            out.append(e)
    return out


def _batched(n: int, size: int):
    for i in range(0, n, size):
        yield i, min(i + size, n)


@functools.partial(jax.jit, static_argnames=("graphdef", "opts"))
def _ask(graphdef, params, prompt, lengths, answers, alen, *, opts):
    return questions_for(nnx.merge(graphdef, params), prompt, lengths, answers, alen, **dict(opts))


@functools.partial(jax.jit, static_argnames=("graphdef", "opts", "gen"))
def _both(graphdef, params, prompt, lengths, key, *, opts, gen):
    return generate_qa(nnx.merge(graphdef, params), prompt, lengths, key, **dict(opts), **dict(gen))


class Generator:
    """Batched, jitted generation with a trained qagen model: `generate` (both stages) and `ask`
    (questions for given answers). Every batch is padded to `batch_size` rows, so each shape
    compiles once (the jitted functions are module-level: a new Generator for the same model
    and options reuses them); the passage is cut to the run's budget (the window holding a given
    answer)."""

    def __init__(self, model, vocab, s: QagenConfig, seq_len: int, *, batch_size: int = 64):
        self.vocab, self.s, self.batch_size = vocab, s, batch_size
        self.budget = passage_budget(seq_len, s)
        self.graphdef, self.params = nnx.split(model)
        self.opts = (
            ("beam_size", s.beam_size),
            ("pad_id", vocab.pad_id),
            ("question_len", s.question_len),
            ("sep_id", vocab.sep_id),
        )
        self.gen = (
            ("answer_len", s.answer_len),
            ("num_answers", s.num_answers),
            ("require_in_passage", s.in_passage),
            ("temperature", s.temperature),
            ("top_k", s.top_k),
            ("top_p", s.top_p),
            ("banned_ids", special_ids(vocab)),
        )

    def _question(self, ids) -> str:
        return self.vocab.decode(ids_until(ids, self.vocab.sep_id))

    def ask(self, passages: list[str], answers: list[str], starts=None) -> list[dict]:
        """{question, answer_score, question_score} for each (passage, given answer); `starts`:
        the answers' character offsets (None: their first occurrence)."""
        out = []
        for i, j in _batched(len(passages), self.batch_size):
            ps = pad_list(passages[i:j], self.batch_size)
            ans = pad_list(answers[i:j], self.batch_size)
            at = None if starts is None else pad_list(list(starts[i:j]), self.batch_size)
            prompt, lengths = prompts(self.vocab, ps, budget=self.budget, answers=ans, starts=at)
            ids, alen = answer_ids(self.vocab, ans, self.s.answer_len)
            got = jax.device_get(
                _ask(self.graphdef, self.params, prompt, lengths, ids, alen, opts=self.opts)
            )
            out += [
                {
                    "question": self._question(got["questions"][r]),
                    "answer_score": float(got["answer_score"][r]),
                    "question_score": float(got["question_score"][r]),
                }
                for r in range(j - i)
            ]
        return out

    def generate(self, passages: list[str], key) -> list[list[dict]]:
        """For each passage, its kept {answer, question, answer_score, question_score}."""
        out = []
        for i, j in _batched(len(passages), self.batch_size):
            prompt, lengths = prompts(
                self.vocab, pad_list(passages[i:j], self.batch_size), budget=self.budget
            )
            got = jax.device_get(
                _both(
                    self.graphdef,
                    self.params,
                    prompt,
                    lengths,
                    jax.random.fold_in(key, i),
                    opts=self.opts,
                    gen=self.gen,
                )
            )
            for r in range(j - i):
                out.append(
                    [
                        {
                            "answer": self.vocab.decode(
                                got["answers"][r, k, : got["answer_length"][r, k]]
                            ),
                            "question": self._question(got["questions"][r, k]),
                            "answer_score": float(got["answer_score"][r, k]),
                            "question_score": float(got["question_score"][r, k]),
                        }
                        for k in range(self.s.num_answers)
                        if got["keep"][r, k]
                    ]
                )
        return out


def evaluate_model(
    model,
    vocab,
    held_out: list[dict],
    s: QagenConfig,
    seq_len: int,
    *,
    seed: int = 0,
    batch_size: int = 64,
) -> dict:
    """Question BLEU-4 / ROUGE-L (gold answers given) on `s.eval_examples` held-out pairs, and
    answer EM / F1 of k sampled answers on `s.eval_passages` held-out passages."""
    gen = Generator(model, vocab, s, seq_len, batch_size=batch_size)
    out = {}
    pairs = fitting(vocab, held_out, s, s.eval_examples)
    if pairs:
        asked = gen.ask(
            [e["passage"] for e in pairs],
            [e["answer"] for e in pairs],
            [e.get("answer_start", e["passage"].find(e["answer"])) for e in pairs],
        )
        scores = text_scores([a["question"] for a in asked], [e["question"] for e in pairs])
        out |= {"question_bleu4": scores["bleu"], "question_rougeL": scores["rougeL"]}
    passages = by_passage(held_out, s.eval_passages)
    if passages:
        got = gen.generate([p for p, _ in passages], jax.random.key(seed))
        out |= answer_scores(
            [[g["answer"] for g in kept] for kept in got], [golds for _, golds in passages]
        )
    return out


def special_ids(vocab) -> tuple[int, ...]:
    """The vocabulary's special tokens but [SEP] (which ends an answer)."""
    names = ("pad_id", "unk_id", "cls_id", "mask_id")
    return tuple(sorted({int(getattr(vocab, n)) for n in names if hasattr(vocab, n)}))


def pad_list(items: list, size: int) -> list:
    """items repeated from the start to `size` (one compiled shape for every batch)."""
    return items + [items[0]] * (size - len(items))


def answer_ids(vocab, answers: list[str], answer_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Given answers as ids [N, answer_len] (pad after) and their lengths [N]."""
    out = np.full((len(answers), answer_len), vocab.pad_id, np.int32)
    lengths = np.zeros(len(answers), np.int32)
    for i, a in enumerate(answers):
        ids = vocab.encode(a)[:answer_len]
        out[i, : len(ids)], lengths[i] = ids, len(ids)
    return out, lengths


def ids_until(ids, stop_id: int) -> list[int]:
    ids = [int(i) for i in ids]
    return ids[: ids.index(stop_id)] if stop_id in ids else ids
