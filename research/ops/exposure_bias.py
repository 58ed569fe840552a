"""Remedies for exposure bias in teacher-forced seq2seq training (docs/research_notes.md section 1).

Conventions: `inputs` [B, L] are the teacher-forced input tokens (decoder inputs, or the whole
UniLM sequence) and `logits[:, t]` predicts `inputs[:, t + 1]`; `target_mask` [B, L] marks the
target-side input positions a remedy may change (padding and source tokens are 0).
Loss functions compose as `loss_fn(model, batch, delta) -> (loss_sum, weight_sum, metrics)`,
where `delta` perturbs the input token embeddings in one of two forms (the caller's loss_fn
decides where it goes; `delta_shape` gives its shape):

- per position: delta [B, L, D] is added after the embedding lookup, one row per token
  occurrence; d(loss)/d(delta) is the gradient w.r.t. each position's embedding, as the note's
  reference penalises (`K.gradients(ce, [emb])[0].values`: one row per looked-up occurrence);
- table: delta [V, D] is added to the embedding table, so the gradients of all occurrences of
  a token are summed into its row before any square is taken.

The wrappers return the two-argument `loss_fn(model, batch)` that `research.train.step`
differentiates.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

POOLS = ("target", "vocab")
SCHEDULES = ("constant", "linear", "exponential", "inverse_sigmoid")


# ---- random replacement ------------------------------------------------------------------------
def random_replacement(
    key,
    inputs,
    target_mask,
    *,
    sample_prob: float = 0.5,
    token_prob: float = 0.3,
    pool: str = "target",
    vocab_size: int | None = None,
    pad_id: int = 0,
):
    """Replace target-side input tokens by random ones; labels are not touched (apply to inputs).

    With probability `sample_prob` a sample is perturbed; in it each position with target_mask
    is replaced with probability `token_prob` by a token drawn uniformly from that sample's own
    target-side tokens (pool="target") or from the vocabulary without `pad_id` (pool="vocab").
    inputs, target_mask [B, L] -> inputs [B, L]. A sample with no target tokens is unchanged.
    """
    for name, p in (("sample_prob", sample_prob), ("token_prob", token_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}={p}: must be in [0, 1]")
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r}: allowed {', '.join(POOLS)}")
    if pool == "vocab" and (vocab_size is None or vocab_size < 2):
        raise ValueError(f"pool='vocab' needs vocab_size >= 2, got {vocab_size}")
    inputs = jnp.asarray(inputs)
    mask = jnp.asarray(target_mask).astype(bool) & (inputs != pad_id)
    k_sample, k_token, k_draw = jax.random.split(key, 3)
    b, length = inputs.shape
    perturbed = jax.random.bernoulli(k_sample, sample_prob, (b, 1))
    replace = perturbed & jax.random.bernoulli(k_token, token_prob, (b, length)) & mask
    if pool == "target":
        # Uniform over this sample's target positions: categorical over log(mask).
        logits = jnp.where(mask, 0.0, -jnp.inf)[:, None, :].repeat(length, axis=1)
        logits = jnp.where(jnp.any(mask, axis=1)[:, None, None], logits, 0.0)
        src = jax.random.categorical(k_draw, logits, axis=-1)  # [B, L] positions
        drawn = jnp.take_along_axis(inputs, src, axis=1)
    else:
        r = jax.random.randint(k_draw, (b, length), 0, vocab_size - 1)
        drawn = r + (r >= pad_id)  # skips pad_id
    return jnp.where(replace, drawn, inputs)


# ---- scheduled sampling ------------------------------------------------------------------------
def teacher_forcing_prob(
    step,
    schedule: str = "inverse_sigmoid",
    *,
    k: float = 1000.0,
    floor: float = 0.0,
    slope: float = 1e-4,
):
    """Probability of feeding the gold token at training step `step` (Bengio et al. 2015):
    constant k; linear max(floor, 1 - slope * step); exponential k^step (k < 1);
    inverse_sigmoid k / (k + exp(step / k)) (k >= 1)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: allowed {', '.join(SCHEDULES)}")
    step = jnp.asarray(step, jnp.float32)
    if schedule == "constant":
        if not 0 <= k <= 1:
            raise ValueError(f"constant schedule: k={k} must be a probability")
        return jnp.full_like(step, k)
    if schedule == "linear":
        return jnp.maximum(floor, 1.0 - slope * step)
    if schedule == "exponential":
        if not 0 < k < 1:
            raise ValueError(f"exponential schedule: k={k} must be in (0, 1)")
        return jnp.maximum(floor, k**step)
    if k < 1:
        raise ValueError(f"inverse_sigmoid schedule: k={k} must be >= 1")
    return jnp.maximum(floor, k / (k + jnp.exp(step / k)))


def mix_predictions(
    key, inputs, logits, target_mask, tf_prob, *, sample: bool = False, temperature: float = 1.0
):
    """One scheduled-sampling mix (Duckworth et al. 2019, parallel form): each target-side input
    position t >= 1 keeps the gold token with probability tf_prob, else takes the model's
    prediction from position t - 1 (argmax, or a sample at `temperature`), under stop_gradient.
    inputs, target_mask [B, L]; logits [B, L, V] -> inputs [B, L]."""
    k_pred, k_mix = jax.random.split(key)
    logits = jax.lax.stop_gradient(logits)
    if sample:
        pred = jax.random.categorical(k_pred, logits / temperature, axis=-1)
    else:
        pred = jnp.argmax(logits, axis=-1)
    pred = jnp.pad(pred[:, :-1], ((0, 0), (1, 0))).astype(inputs.dtype)  # pred for t from t-1
    use_model = ~jax.random.bernoulli(k_mix, tf_prob, inputs.shape)
    use_model &= jnp.asarray(target_mask).astype(bool)
    use_model = use_model.at[:, 0].set(False)
    return jnp.where(use_model, pred, inputs)


# ---- embedding-gradient penalty and FGM --------------------------------------------------------
LossWithDelta = Callable  # (model, batch, delta) -> (loss_sum, weight_sum, metrics)
# The perturbation's shape: one shape, a tuple of shapes (one delta per input, e.g. the source
# and target of an encoder-decoder), or a callable batch -> either (per-position shapes).
DeltaShape = tuple | Callable


def _zero_delta(delta_shape: DeltaShape, batch, dtype):
    shape = delta_shape(batch) if callable(delta_shape) else delta_shape
    if all(isinstance(n, int) for n in shape):
        return jnp.zeros(shape, dtype)
    return tuple(jnp.zeros(s, dtype) for s in shape)


def _squared_norm(tree):
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def _with_embedding_gradient(loss_fn: LossWithDelta, epsilon, delta_shape, delta_dtype, combine):
    """Wrapper shared by the penalty and FGM: the unperturbed loss and, unless epsilon is 0,
    g = d(mean CE)/d(delta) at delta 0, handed to combine(model, batch, s, w, metrics, g)."""
    if epsilon < 0:
        raise ValueError(f"epsilon={epsilon}: must be >= 0")

    def wrapped(model, batch):
        zeros = _zero_delta(delta_shape, batch, delta_dtype)
        s, w, metrics = loss_fn(model, batch, zeros)
        if epsilon == 0:
            return s, w, metrics

        def mean(d):
            s_d, w_d, _ = loss_fn(model, batch, d)
            return s_d / jnp.maximum(w_d, 1.0)

        return combine(model, batch, s, w, metrics, jax.grad(mean)(zeros))

    return wrapped


def gradient_penalty(
    loss_fn: LossWithDelta, *, epsilon: float, delta_shape: DeltaShape, delta_dtype=jnp.float32
):
    """loss = CE + epsilon * sum (dCE/d delta)^2 (mean CE; the gradient of this loss is second
    order). Per position (delta [B, L, D] after the lookup) this is the note's penalty, the sum
    over input positions of the squared gradient w.r.t. that position's embedding, with epsilon
    0.5 (docs/research_notes.md section 1); with a table delta [V, D] it squares per-token sums
    of those gradients instead (the table form)."""

    def combine(model, batch, s, w, metrics, g):
        penalty = epsilon * _squared_norm(g)
        # Sums are divided by the weight later, so add weight x penalty to keep CE + penalty.
        return s + penalty * w, w, {**metrics, "mean/penalty": penalty * w}

    return _with_embedding_gradient(loss_fn, epsilon, delta_shape, delta_dtype, combine)


def fgm(
    loss_fn: LossWithDelta, *, epsilon: float, delta_shape: DeltaShape, delta_dtype=jnp.float32
):
    """Fast gradient method (Miyato et al. 2017): r = epsilon * g / |g| with g = dCE/d delta
    (fixed, no gradient through r); loss = CE(E) + CE(E + r). |g| is the norm over the whole
    perturbed table and batch, as Su's Keras FGM does (the paper normalises per example), so
    each example's share of epsilon shrinks with the batch."""

    def combine(model, batch, s, w, metrics, g):
        norm = jnp.sqrt(_squared_norm(g)) + 1e-12
        r = jax.lax.stop_gradient(jax.tree.map(lambda x: epsilon * x / norm, g))
        s_adv, _, _ = loss_fn(model, batch, r)
        return s + s_adv, w, {**metrics, "mean/adversarial_loss": s_adv}

    return _with_embedding_gradient(loss_fn, epsilon, delta_shape, delta_dtype, combine)


# ---- sequence-level training -------------------------------------------------------------------
def sequence_log_prob(logits, tokens, mask):
    """sum_t log p(tokens_t) over mask: logits [B, T, V], tokens, mask [B, T] -> [B] (fp32)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.sum(tok * mask, axis=-1)


def scst_loss(sample_log_prob, sample_reward, baseline_reward):
    """Self-critical sequence training (Rennie et al. 2017): REINFORCE with the greedy decode's
    reward as baseline. [B] each -> [B] losses -(r(w^s) - r(w^g)) log p(w^s)."""
    advantage = jax.lax.stop_gradient(sample_reward - baseline_reward)
    return -advantage * sample_log_prob


def mrt_risk(log_probs, rewards, *, alpha: float = 5e-3):
    """Minimum risk training (Shen et al. 2016) over S candidates per source.

    log_probs, rewards [B, S] -> risk [B] = sum_s Q_s (1 - r_s), Q = softmax_s(alpha log p_s),
    the model distribution renormalised over the candidate set with sharpness alpha.
    dRisk/dlog p_s = alpha Q_s (Delta_s - E_Q[Delta]) with Delta = 1 - r.
    """
    if alpha <= 0 or not math.isfinite(alpha):
        raise ValueError(f"alpha={alpha}: must be a positive number")
    q = jax.nn.softmax(alpha * log_probs.astype(jnp.float32), axis=-1)
    return jnp.sum(q * (1.0 - jax.lax.stop_gradient(rewards)), axis=-1)
