"""The seq2seq task: teacher forcing plus one exposure-bias remedy, and decode-based metrics.

Two layouts (research.data.pipeline.seq2seq_example): "encdec" trains an `EncoderDecoder`,
"unilm" a `Bert` with the UniLM mask (Dong et al. 2019). `config.seq2seq.remedy` picks one of
REMEDIES; each is a pure function from research.ops.exposure_bias applied inside the jitted step,
and each reduces to plain teacher forcing at strength 0 (tests). Evaluation decodes with beam
sizes 1, 2, 3 and scores with rouge-score and sacrebleu (RESEARCH.md section 1's table layout).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research import ops
from research.ops import decoding, rewards
from research.ops import exposure_bias as eb
from research.train.config import parse_list

REMEDIES = ("none", "random_replacement", "gradient_penalty", "fgm", "scheduled_sampling",
            "scst", "mrt")  # fmt: skip


def forward(model, batch, inputs, delta=None, layout="encdec", pad=0):
    """Teacher-forced logits [B, T, V] for `inputs` (the gold or perturbed input tokens)."""
    if layout == "encdec":
        return model(batch["src"], inputs, src_mask=batch["src_mask"],
                     tgt_mask=batch["weights"] > 0, embedding_delta=delta)  # fmt: skip
    valid = (batch["weights"] > 0) | (batch["segment_ids"] == 0) & (inputs != pad)
    return model(inputs, segment_ids=batch["segment_ids"], mask=valid, unilm=True,
                 embedding_delta=delta).logits  # fmt: skip


def _ce(model, batch, inputs, delta, layout, label_smoothing=0.0):
    logits = forward(model, batch, inputs, delta, layout)
    s, w = ops.cross_entropy(logits, batch["targets"], mask=batch["weights"],
                             label_smoothing=label_smoothing)  # fmt: skip
    hits = (jnp.argmax(logits, -1) == batch["targets"]) * batch["weights"]
    return s, w, {"correct": jnp.sum(hits)}


# ---- decoding inside jit -----------------------------------------------------------------------
def _prefill(model, batch, layout, bos, max_new, src_len):
    if layout == "encdec":
        return model.prefill(batch["src"], src_mask=batch["src_mask"], bos_id=bos,
                             max_length=max_new + 1)  # fmt: skip
    # unilm: the prompt (source + separator, at most src_len + 1 tokens) is right-padded.
    prompt = batch["inputs"][:, : src_len + 1]
    return model.prefill(prompt, lengths=batch["prompt_length"], segment_ids=jnp.zeros_like(prompt),
                         max_length=src_len + 1 + max_new)  # fmt: skip


def _step_fn(model, layout):
    if layout == "encdec":
        return model.decode_step
    return functools.partial(model.decode_step, segment=1)


def generate(model, batch, *, layout, method, max_new, src_len, bos, eos, pad, key=None,
             beam_size=1, temperature=1.0):  # fmt: skip
    """[B, max_new] tokens (pad after EOS) by greedy / sample / beam (best beam)."""
    logits, cache = _prefill(model, batch, layout, bos, max_new, src_len)
    step = _step_fn(model, layout)
    if method == "greedy":
        return decoding.greedy(step, logits, cache, max_new_tokens=max_new, stop_tokens=(eos,),
                               pad_id=pad)  # fmt: skip
    if method == "sample":
        return decoding.sample(step, logits, cache, key, max_new_tokens=max_new,
                               temperature=temperature, stop_tokens=(eos,), pad_id=pad)  # fmt: skip
    tokens, _ = decoding.beam_search(step, logits, cache, beam_size=beam_size,
                                     max_new_tokens=max_new, eos_id=eos, pad_id=pad)  # fmt: skip
    return tokens[:, 0]


def _as_teacher_forced(batch, tokens, layout, bos, eos, pad):
    """A batch whose targets are `tokens` [B, T] (cut after EOS), to score log p(tokens)."""
    b, t = tokens.shape
    # Up to and including the first EOS; the decoder writes pad only after it (a pad sampled
    # before EOS is a real, scored token).
    alive = jnp.cumsum(tokens == eos, axis=1) - (tokens == eos) == 0
    mask = alive.astype(jnp.float32)
    if layout == "encdec":
        inputs = jnp.concatenate([jnp.full((b, 1), bos, tokens.dtype), tokens[:, :-1]], axis=1)
        inputs = jnp.where(jnp.pad(mask[:, :-1], ((0, 0), (1, 0)), constant_values=1) > 0,
                           inputs, pad)  # fmt: skip
        return {**batch, "inputs": inputs, "targets": tokens, "weights": mask}, inputs
    # unilm: [prompt, tokens] in one row; predictions for tokens start at the separator.
    p = batch["prompt_length"]
    width = batch["inputs"].shape[1]
    pos = jnp.arange(width)[None, :]
    rel = pos - p[:, None]  # index into tokens of the input at pos (for pos >= p)
    tok_in = jnp.take_along_axis(tokens, jnp.clip(rel, 0, t - 1), axis=1)
    in_mask = jnp.take_along_axis(mask, jnp.clip(rel, 0, t - 1), axis=1) > 0
    inputs = jnp.where(pos < p[:, None], batch["inputs"], jnp.where((rel < t) & in_mask, tok_in,
                                                                    pad))  # fmt: skip
    rel_t = pos - p[:, None] + 1  # target at pos is tokens[pos - p + 1]
    tgt = jnp.take_along_axis(tokens, jnp.clip(rel_t, 0, t - 1), axis=1)
    w = jnp.take_along_axis(mask, jnp.clip(rel_t, 0, t - 1), axis=1)
    w = jnp.where((rel_t >= 0) & (rel_t < t), w, 0.0)
    seg = (pos >= p[:, None]).astype(jnp.int32)
    out = {**batch, "inputs": inputs, "targets": jnp.where(w > 0, tgt, pad), "weights": w,
           "segment_ids": seg}  # fmt: skip
    return out, inputs


def _sequence_log_prob(model, batch, tokens, layout, bos, eos, pad):
    tf, inputs = _as_teacher_forced(batch, tokens, layout, bos, eos, pad)
    logits = forward(model, tf, inputs, None, layout)
    return eb.sequence_log_prob(logits, tf["targets"], tf["weights"])


def _references(batch, layout, eos, pad):
    """Gold target ids [B, T] without EOS (the reward's reference)."""
    t = jnp.where(batch["weights"] > 0, batch["targets"], pad)
    return jnp.where(t == eos, pad, t)


# ---- the loss ----------------------------------------------------------------------------------
def make_loss(c, vocab_size: int, bos: int, eos: int, pad: int, d_model: int):
    """loss_fn(model, batch, *, key=None, step=None) for config.seq2seq; key None = evaluation
    (plain teacher-forced CE, no remedy)."""
    s = c.seq2seq
    layout, remedy = s.layout, s.remedy
    if remedy not in REMEDIES:
        raise ValueError(f"seq2seq.remedy={remedy!r}: allowed {', '.join(REMEDIES)}")
    delta_shape = (vocab_size, d_model)
    max_new, src_len = s.tgt_len, s.src_len

    def teacher_forced(model, batch, delta):
        return _ce(model, batch, batch["inputs"], delta, layout, s.label_smoothing)

    penalised = {
        "gradient_penalty": eb.gradient_penalty(teacher_forced, epsilon=s.penalty_epsilon,
                                                delta_shape=delta_shape),
        "fgm": eb.fgm(teacher_forced, epsilon=s.fgm_epsilon, delta_shape=delta_shape),
    }  # fmt: skip

    def loss_fn(model, batch, *, key=None, step=None):
        if key is None or remedy == "none":
            return teacher_forced(model, batch, None)
        if remedy in penalised:
            return penalised[remedy](model, batch)
        key = jax.random.fold_in(key, 7)  # independent of the dropout stream
        if remedy == "random_replacement":
            inputs = eb.random_replacement(key, batch["inputs"], batch["replace_mask"],
                                           sample_prob=s.replace_sample_prob,
                                           token_prob=s.replace_token_prob, pool=s.replace_pool,
                                           vocab_size=vocab_size, pad_id=pad)  # fmt: skip
            return _ce(model, batch, inputs, None, layout, s.label_smoothing)
        if remedy == "scheduled_sampling":
            p = eb.teacher_forcing_prob(step, s.ss_schedule, k=s.ss_k, floor=s.ss_floor,
                                        slope=s.ss_slope)  # fmt: skip
            inputs = batch["inputs"]
            for i in range(s.ss_passes):  # pass i + 1 mixes pass i's predictions
                logits = forward(model, batch, inputs, None, layout)
                k_i = jax.random.fold_in(key, i)
                inputs = eb.mix_predictions(k_i, batch["inputs"], logits, batch["replace_mask"], p,
                                            sample=s.ss_sample)  # fmt: skip
            out = _ce(model, batch, inputs, None, layout, s.label_smoothing)
            return out[0], out[1], {**out[2], "teacher_forcing_prob": p * out[1]}
        # Sequence-level: samples and the greedy baseline under stop_gradient, then log p.
        ce_sum, w, metrics = teacher_forced(model, batch, None)
        ref = _references(batch, layout, eos, pad)
        reward_fn = rewards.reward(s.reward)
        gen = functools.partial(generate, layout=layout, max_new=max_new, src_len=src_len,
                                bos=bos, eos=eos, pad=pad,
                                temperature=s.sample_temperature)  # fmt: skip
        if remedy == "scst":
            sample = jax.lax.stop_gradient(gen(model, batch, method="sample", key=key))
            greedy = jax.lax.stop_gradient(gen(model, batch, method="greedy"))
            r_s, r_g = reward_fn(sample, ref, pad_id=pad), reward_fn(greedy, ref, pad_id=pad)
            logp = _sequence_log_prob(model, batch, sample, layout, bos, eos, pad)
            seq_loss = jnp.mean(eb.scst_loss(logp, r_s, r_g))
            extra = {"reward": jnp.mean(r_s) * w, "baseline_reward": jnp.mean(r_g) * w}
        else:  # mrt
            keys = jax.random.split(key, s.mrt_samples)
            samples = [jax.lax.stop_gradient(gen(model, batch, method="sample", key=k))
                       for k in keys]  # fmt: skip
            logp = jnp.stack([_sequence_log_prob(model, batch, x, layout, bos, eos, pad)
                              for x in samples], axis=1)  # fmt: skip
            r = jnp.stack([reward_fn(x, ref, pad_id=pad) for x in samples], axis=1)
            seq_loss = jnp.mean(eb.mrt_risk(logp, r, alpha=s.mrt_alpha))
            extra = {"reward": jnp.mean(r) * w}
        lam = s.seq_weight
        # Sums are divided by w later: (1 - lam) CE_mean + lam seq_loss.
        return (1 - lam) * ce_sum + lam * seq_loss * w, w, {**metrics, **extra}

    return loss_fn


# ---- evaluation by decoding --------------------------------------------------------------------
def decode_metrics(model_def, state, batches, vocab, c) -> dict:
    """Decode eval batches with beam 1, 2, 3 (beam 1 = greedy) and score them with rouge-score
    (rougeL/1/2 F1) and sacrebleu (corpus BLEU), x100, as in RESEARCH.md section 1.

    batches: (process-local numpy batch, the same as global arrays) pairs.
    """
    import sacrebleu
    from jax.experimental import multihost_utils
    from rouge_score import rouge_scorer

    s = c.seq2seq
    beams = parse_list(s, "eval_beams", int)

    @functools.partial(jax.jit, static_argnames="beam")
    def run(params, consts, batch, beam):
        model = model_def.merge(params, consts, train=False)
        return generate(model, batch, layout=s.layout, method="beam", beam_size=beam,
                        max_new=s.tgt_len, src_len=s.src_len, bos=vocab.bos, eos=vocab.eos,
                        pad=vocab.pad)  # fmt: skip

    def gather(x):
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    hyps = {b: [] for b in beams}
    refs = []
    for local, batch in batches:
        ref = gather(np.where(local["weights"] > 0, local["targets"], vocab.pad))
        refs += [vocab.detokenize(r) for r in ref]
        for b in beams:
            hyps[b] += [vocab.detokenize(h) for h in gather(run(state.params, state.consts,
                                                                batch, beam=b))]  # fmt: skip
    scorer = rouge_scorer.RougeScorer(["rougeL", "rouge1", "rouge2"])
    tokenize = "none" if vocab.tok is None else "13a"
    result = {}
    for b in beams:
        pairs = list(zip(refs, hyps[b], strict=True))
        scores = [scorer.score(r, h) for r, h in pairs]
        for name in ("rougeL", "rouge1", "rouge2"):
            result[f"beam{b}_{name}"] = 100 * float(np.mean([x[name].fmeasure for x in scores]))
        result[f"beam{b}_bleu"] = sacrebleu.corpus_bleu(hyps[b], [refs], tokenize=tokenize).score
        result[f"beam{b}_exact"] = 100 * float(np.mean([h == r for r, h in pairs]))
    return result
