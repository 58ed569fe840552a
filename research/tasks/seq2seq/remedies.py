"""Exposure-bias remedies as a registry: name -> factory(ctx) -> loss(model, batch, key, step).

Each loss returns (loss_sum, weight_sum, {metric: sum}) and is built from the pure functions of
`research.ops.exposure_bias` (the research note's section 1). `Context` holds what every remedy
shares: the typed options, the special ids, and teacher-forced / decoding helpers.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from research.ops import exposure_bias as eb
from research.ops import rewards
from research.sampling import decode
from research.tasks.seq2seq import teacher_forcing as tf


@dataclasses.dataclass(frozen=True)
class Context:
    cfg: object  # Seq2seqConfig
    vocab_size: int
    bos: int
    eos: int
    pad: int
    d_model: int

    def teacher_forced(self, model, batch, delta=None, inputs=None, *, smoothing=True):
        """The teacher-forced CE sums; `smoothing=False` (evaluation): plain CE, without the
        config's label smoothing, so eval loss and perplexity compare across its values."""
        inputs = batch["inputs"] if inputs is None else inputs
        eps = self.cfg.label_smoothing if smoothing else 0.0
        return tf.cross_entropy(model, batch, inputs, delta, self.cfg.layout, eps)

    def generate(self, model, batch, *, method, key=None, beam_size=1):
        """Decodes with the model's dropout off: a dropout step inside the decoding loop cannot
        draw its key there. Right for SCST's greedy baseline (inference); the samples then come
        from the dropout-free model while their log-probability is the training model's (with
        dropout), a small mismatch at dropout > 0 (the shipped configs use 0)."""
        return generate(
            nnx.view(model, only=nnx.Dropout, deterministic=True),
            batch,
            layout=self.cfg.layout,
            method=method,
            max_new=self.cfg.tgt_len,
            src_len=self.cfg.src_len,
            bos=self.bos,
            eos=self.eos,
            pad=self.pad,
            key=key,
            beam_size=beam_size,
            temperature=self.cfg.sample_temperature,
        )

    def delta_shape(self, form: str):
        """The embedding perturbation's shape (research.ops.exposure_bias): "table" [V, D];
        "position" one row per input token, a callable of the batch: [B, L, D] for the UniLM
        row, or (source [B, S, D], target [B, T, D]) for encdec."""
        d = self.d_model
        if form == "table":
            return (self.vocab_size, d)
        if self.cfg.layout == "encdec":
            return lambda batch: ((*batch["src"].shape, d), (*batch["inputs"].shape, d))
        return lambda batch: (*batch["inputs"].shape, d)

    def log_prob(self, model, batch, tokens):
        return tf.sequence_log_prob(
            model, batch, tokens, self.cfg.layout, self.bos, self.eos, self.pad
        )


def generate(
    model,
    batch,
    *,
    layout,
    method,
    max_new,
    src_len,
    bos,
    eos,
    pad,
    key=None,
    beam_size=1,
    temperature=1.0,
):
    """[B, max_new] tokens (pad after EOS) by greedy / sample / beam (the best beam), inside jit:
    encdec decodes from the source; unilm continues [source, separator] as segment 1."""
    if layout == "encdec":
        prompt, lengths = batch["src"], jnp.sum(batch["src_mask"], axis=1)
    else:  # the prompt (source + separator, at most src_len + 1 tokens) is right-padded
        prompt, lengths = batch["inputs"][:, : src_len + 1], batch["prompt_length"]
    bos_id = bos if layout == "encdec" else None
    run = functools.partial(
        decode, model, prompt, lengths=lengths, max_new_tokens=max_new, bos_id=bos_id
    )
    if method == "greedy":
        return run(method="greedy", stop_tokens=(eos,), pad_id=pad)
    if method == "sample":
        return run(
            method="sample", key=key, temperature=temperature, stop_tokens=(eos,), pad_id=pad
        )
    tokens, _ = run(method="beam", beam_size=beam_size, eos_id=eos, pad_id=pad)
    return tokens[:, 0]


Loss = Callable  # loss(model, batch, key, step) -> (loss_sum, weight_sum, sums)
REMEDIES: dict[str, Callable[[Context], Loss]] = {}


def remedy(name: str):
    def register(factory):
        REMEDIES[name] = factory
        return factory

    return register


@remedy("none")
def teacher_forcing(ctx: Context) -> Loss:
    return lambda model, batch, key, step: ctx.teacher_forced(model, batch)


@remedy("random_replacement")
def random_replacement(ctx: Context) -> Loss:
    s = ctx.cfg

    def loss(model, batch, key, step):
        inputs = eb.random_replacement(
            key,
            batch["inputs"],
            batch["replace_mask"],
            sample_prob=s.replace_sample_prob,
            token_prob=s.replace_token_prob,
            pool=s.replace_pool,
            vocab_size=ctx.vocab_size,
            pad_id=ctx.pad,
        )
        return ctx.teacher_forced(model, batch, inputs=inputs)

    return loss


@remedy("gradient_penalty")
def gradient_penalty(ctx: Context) -> Loss:
    fn = eb.gradient_penalty(
        ctx.teacher_forced,
        epsilon=ctx.cfg.penalty_epsilon,
        delta_shape=ctx.delta_shape(ctx.cfg.penalty_form),
    )
    return lambda model, batch, key, step: fn(model, batch)


@remedy("fgm")
def fgm(ctx: Context) -> Loss:
    fn = eb.fgm(
        ctx.teacher_forced, epsilon=ctx.cfg.fgm_epsilon, delta_shape=ctx.delta_shape("table")
    )
    return lambda model, batch, key, step: fn(model, batch)


@remedy("scheduled_sampling")
def scheduled_sampling(ctx: Context) -> Loss:
    s = ctx.cfg

    def loss(model, batch, key, step):
        p = eb.teacher_forcing_prob(
            step, s.ss_schedule, k=s.ss_k, floor=s.ss_floor, slope=s.ss_slope
        )
        inputs = batch["inputs"]
        for i in range(s.ss_passes):  # pass i + 1 mixes pass i's predictions
            logits = tf.forward(model, batch, inputs, None, s.layout)
            inputs = eb.mix_predictions(
                jax.random.fold_in(key, i),
                batch["inputs"],
                logits,
                batch["replace_mask"],
                p,
                sample=s.ss_sample,
            )
        out = ctx.teacher_forced(model, batch, inputs=inputs)
        return out[0], out[1], {**out[2], "mean/teacher_forcing_prob": p * out[1]}

    return loss


def _mix(ctx: Context, ce, seq_loss, extra):
    """(1 - lam) CE_mean + lam seq_loss, as sums (the loop divides by the weight)."""
    ce_sum, w, metrics = ce
    lam = ctx.cfg.seq_weight
    return (1 - lam) * ce_sum + lam * seq_loss * w, w, {**metrics, **extra(w)}


@remedy("scst")
def scst(ctx: Context) -> Loss:
    """Self-critical sequence training: the greedy decode's reward is the baseline."""
    reward = rewards.reward(ctx.cfg.reward)

    def loss(model, batch, key, step):
        ce = ctx.teacher_forced(model, batch)
        ref = tf.references(batch, ctx.eos, ctx.pad)
        sample = jax.lax.stop_gradient(ctx.generate(model, batch, method="sample", key=key))
        greedy = jax.lax.stop_gradient(ctx.generate(model, batch, method="greedy"))
        r_s, r_g = (
            reward(tf.without_eos(x, ctx.eos, ctx.pad), ref, pad_id=ctx.pad)
            for x in (sample, greedy)
        )
        seq_loss = jnp.mean(eb.scst_loss(ctx.log_prob(model, batch, sample), r_s, r_g))
        return _mix(
            ctx,
            ce,
            seq_loss,
            lambda w: {"mean/reward": jnp.mean(r_s) * w, "mean/baseline_reward": jnp.mean(r_g) * w},
        )

    return loss


@remedy("mrt")
def mrt(ctx: Context) -> Loss:
    """Minimum risk training over `mrt_samples` samples per source."""
    reward = rewards.reward(ctx.cfg.reward)

    def loss(model, batch, key, step):
        ce = ctx.teacher_forced(model, batch)
        ref = tf.references(batch, ctx.eos, ctx.pad)
        keys = jax.random.split(key, ctx.cfg.mrt_samples)
        samples = [
            jax.lax.stop_gradient(ctx.generate(model, batch, method="sample", key=k)) for k in keys
        ]
        logp = jnp.stack([ctx.log_prob(model, batch, x) for x in samples], axis=1)
        r = jnp.stack(
            [reward(tf.without_eos(x, ctx.eos, ctx.pad), ref, pad_id=ctx.pad) for x in samples],
            axis=1,
        )
        seq_loss = jnp.mean(eb.mrt_risk(logp, r, alpha=ctx.cfg.mrt_alpha))
        return _mix(ctx, ce, seq_loss, lambda w: {"mean/reward": jnp.mean(r) * w})

    return loss
