"""Two-stage question generation with a UniLM `Bert` (docs/research_notes.md section 6): passage
-> answer -> question, on the sampler (`research.sampling.sampler.decode`).

`generate_qa` (traceable, one jit): stage 1 samples k answers per passage (top-p / top-k /
temperature) until [SEP]; stage 2 prefills [CLS] passage [SEP] answer [SEP] with the UniLM mask
and beam-searches one question per answer (`questions_for`). Duplicate answers of a passage and,
with `require_in_passage`, answers that are not a span of the passage are marked dropped
(`keep`). `Generator` batches and jits both stages for text passages (research.qagen, the qagen
task's evaluation and experiment).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Int

from research.data import qa_rows
from research.sampling.sampler import decode, logit_ban, special_ids


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
    model,
    tokens,
    segments,
    lengths,
    *,
    question_len: int,
    beam_size: int,
    sep_id: int,
    pad_id: int,
    banned_ids: tuple[int, ...] = (),
):
    """The best beam's question [N, question_len + 1] ([SEP]-ended, pad after) and its log-prob
    [N], continuing the prompts `tokens` (segments as given, UniLM mask) as segment 1;
    `banned_ids` never appear in it."""
    ban = None
    if banned_ids:
        ban = logit_ban(model.cfg.vocab_size, banned_ids)
    seqs, scores = decode(
        model,
        tokens,
        lengths=lengths,
        max_new_tokens=question_len + 1,
        method="beam",
        segment=1,
        segment_ids=segments,
        unilm=True,
        beam_size=beam_size,
        eos_id=sep_id,
        pad_id=pad_id,
        logit_bias=ban,
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
    stage 2 beam-searches one question per answer; `banned_ids` appear in neither. The stage-2
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
    # Special tokens ([PAD], [CLS], [MASK], ...) are never answer text.
    vocab_size = model.cfg.vocab_size
    ban = logit_ban(vocab_size, banned_ids)
    sampled = decode(
        model,
        rep,
        lengths=rep_len,
        max_new_tokens=answer_len + 1,
        method="sample",
        key=key,
        segment=1,
        logit_bias=ban,
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
        banned_ids=banned_ids,
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
    banned_ids: tuple[int, ...] = (),
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
        banned_ids=banned_ids,
    )
    return {
        "answer_length": answer_len,
        "answer_score": score,
        "questions": questions,
        "question_score": q_score,
    }


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

    def __init__(self, model, vocab, s, seq_len: int, *, batch_size: int = 64):
        """A generator for `model` (a UniLM `Bert`) and its vocabulary.

        Args:
          model: the trained model.
          vocab: its vocabulary (encode, decode; pad, cls, sep ids).
          s: the qagen options (`research.tasks.qagen.QagenConfig`: answer_len, question_len,
            num_answers, top_p, top_k, temperature, beam_size, in_passage).
          seq_len: the run's row length (with s, the passage budget).
          batch_size: passages per jitted batch.
        """
        self.vocab, self.s, self.batch_size = vocab, s, batch_size
        self.budget = qa_rows.passage_budget(seq_len, s.answer_len, s.question_len)
        self.graphdef, self.params = nnx.split(model)
        self.opts = (
            ("banned_ids", special_ids(vocab)),  # in the answers and the questions
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
            prompt, lengths = qa_rows.prompts(
                self.vocab, ps, budget=self.budget, answers=ans, starts=at
            )
            ids, alen = qa_rows.answer_ids(self.vocab, ans, self.s.answer_len)
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
            prompt, lengths = qa_rows.prompts(
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


def pad_list(items: list, size: int) -> list:
    """items repeated from the start to `size` (one compiled shape for every batch)."""
    return items + [items[0]] * (size - len(items))


def ids_until(ids, stop_id: int) -> list[int]:
    ids = [int(i) for i in ids]
    return ids[: ids.index(stop_id)] if stop_id in ids else ids
