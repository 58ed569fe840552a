"""Token-level losses returning (loss_sum, weight_sum), so means stay exact across devices.

Average as loss_sum / weight_sum only after summing both over devices and accumulation steps;
a mean of per-device means is wrong whenever devices hold different numbers of tokens.
"""

import jax
import jax.numpy as jnp


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    mask: jax.Array | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Sum of token cross-entropies and the sum of weights.

    logits [..., V] (any float dtype; computed in fp32), labels [...] of an integer dtype (float
    labels raise ValueError rather than being silently truncated), mask [...] bool or
    float weights (default all ones). Per token, with targets t = (1 - eps) onehot(y) + eps / V:
      loss = -sum_v t_v log softmax(logits)_v + z_loss * logsumexp(logits)^2
    (label smoothing: Szegedy et al. 2016; z-loss: PaLM, Chowdhery et al. 2022).
    Returns (loss_sum, weight_sum), both fp32 scalars.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if z_loss < 0:
        raise ValueError(f"z_loss must be >= 0, got {z_loss!r}")
    labels_dtype = jnp.result_type(labels)
    if not jnp.issubdtype(labels_dtype, jnp.integer):
        raise ValueError(f"labels must have an integer dtype (token ids), got {labels_dtype}")
    if jnp.shape(labels) != jnp.shape(logits)[:-1]:
        raise ValueError(
            f"labels shape {jnp.shape(labels)} must equal logits shape without the vocab axis "
            f"{jnp.shape(logits)[:-1]}"
        )
    if mask is not None and jnp.shape(mask) != jnp.shape(labels):
        raise ValueError(
            f"mask shape {jnp.shape(mask)} must equal labels shape {jnp.shape(labels)}"
        )
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    log_p = logits - lse[..., None]
    nll = -jnp.take_along_axis(log_p, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_p, axis=-1)
    if z_loss:
        nll = nll + z_loss * lse**2
    weights = jnp.ones_like(nll) if mask is None else jnp.asarray(mask, jnp.float32)
    # masked positions contribute exactly 0, whatever they hold (0 * inf or NaN was NaN: a
    # padding label outside the vocabulary, a -inf logit under label smoothing)
    return jnp.sum(jnp.where(weights > 0, nll * weights, 0.0)), jnp.sum(weights)


def mlm_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    mlm_mask: jax.Array,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Masked-LM loss (Devlin et al. 2019): cross-entropy over positions where mlm_mask is True.

    logits [B, L, V], labels [B, L] the original tokens, mlm_mask [B, L] bool.
    """
    return cross_entropy(logits, labels, mask=mlm_mask, label_smoothing=label_smoothing)


def mlm_corrupt(
    key: jax.Array,
    tokens: jax.Array,
    *,
    mask_id: int,
    vocab_size: int,
    maskable: jax.Array,
    rate: float = 0.15,
) -> tuple[jax.Array, jax.Array]:
    """BERT masking: pick `rate` of the maskable tokens; of those 80% -> mask_id, 10% -> a random
    token, 10% unchanged (Devlin et al. 2019).

    tokens [B, L] int; maskable [B, L] bool (False for padding and special tokens).
    Returns (corrupted tokens [B, L], mlm_mask [B, L]: the positions to predict).
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), got {rate!r}")
    k_pick, k_kind, k_tok = jax.random.split(key, 3)
    chosen = jax.random.bernoulli(k_pick, rate, tokens.shape) & maskable
    kind = jax.random.uniform(k_kind, tokens.shape)
    random_tokens = jax.random.randint(k_tok, tokens.shape, 0, vocab_size, tokens.dtype)
    out = jnp.where(chosen & (kind < 0.8), mask_id, tokens)
    out = jnp.where(chosen & (kind >= 0.8) & (kind < 0.9), random_tokens, out)
    return out, chosen
