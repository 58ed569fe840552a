"""Autoregressive decoding as pure functions, entirely inside `lax.while_loop`, jit-friendly.

Every function starts from `logits` [B, V] for the next token and a `cache` (any pytree whose
leaves have batch as their leading axis), and calls `step_fn(tokens [N], cache) -> (logits
[N, V], cache)` once per generated token. Models provide both through `prefill`/`decode_step`.
"""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from research.ops.checks import check_positive_int

StepFn = Callable[[jax.Array, object], tuple[jax.Array, object]]


def check_max_new_tokens(max_new_tokens) -> None:
    check_positive_int("max_new_tokens", max_new_tokens)


def _check(max_new_tokens: int, stop_tokens: Sequence[int]):
    check_max_new_tokens(max_new_tokens)
    return jnp.asarray(tuple(stop_tokens), jnp.int32).reshape(-1)


def filter_logits(
    logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
    """Temperature, then top-k, then nucleus (top-p) filtering; removed entries become -inf.

    logits [..., V]. top_k=0 and top_p=1 disable the filters. Top-p keeps the smallest set of
    most likely tokens whose probability reaches p (Holtzman et al. 2020), always at least one,
    the token that crosses p included; tokens tied with the last one kept are kept too (Hugging
    Face's warpers, the same order of filters, break such ties by their sort and keep fewer).
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"temperature must be a finite number > 0 for sampling, got {temperature!r}"
        )
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    logits = logits.astype(jnp.float32) / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
        keep = before < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def _generate(step_fn, logits, cache, choose, max_new_tokens, stop, pad_id):
    b = logits.shape[0]

    def cond(state):
        t, _, _, _, done, _ = state
        return (t < max_new_tokens) & ~jnp.all(done)

    def body(state):
        t, logits, cache, out, done, key_index = state
        token = choose(logits, key_index).astype(jnp.int32)
        token = jnp.where(done, pad_id, token)
        out = out.at[:, t].set(token)
        done = done | jnp.isin(token, stop)
        logits, cache = step_fn(token, cache)
        return t + 1, logits, cache, out, done, key_index + 1

    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
    init = (jnp.int32(0), logits, cache, out, jnp.zeros((b,), bool), jnp.int32(0))
    return lax.while_loop(cond, body, init)[3]


def greedy(
    step_fn: StepFn, logits, cache, *, max_new_tokens: int, stop_tokens=(), pad_id: int = 0
) -> jax.Array:
    """Argmax decoding. Returns tokens [B, max_new_tokens]; after a stop token, pad_id."""
    stop = _check(max_new_tokens, stop_tokens)

    def choose(logits, _):
        return jnp.argmax(logits, axis=-1)

    return _generate(step_fn, logits, cache, choose, max_new_tokens, stop, pad_id)


def sample(
    step_fn: StepFn,
    logits,
    cache,
    key,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_tokens=(),
    pad_id: int = 0,
) -> jax.Array:
    """Ancestral sampling with temperature, top-k and top-p. Returns tokens [B, max_new_tokens]."""
    stop = _check(max_new_tokens, stop_tokens)
    filter_logits(jnp.zeros((1, 2)), temperature=temperature, top_k=top_k, top_p=top_p)

    def choose(logits, i):
        filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        return jax.random.categorical(jax.random.fold_in(key, i), filtered, axis=-1)

    return _generate(step_fn, logits, cache, choose, max_new_tokens, stop, pad_id)


def length_penalty(lengths: jax.Array, alpha: float) -> jax.Array:
    """GNMT length normaliser ((5 + |Y|) / 6)^alpha (Wu et al. 2016); alpha = 0 gives 1."""
    return ((5.0 + lengths.astype(jnp.float32)) / 6.0) ** alpha


def beam_search(
    step_fn: StepFn,
    logits,
    cache,
    *,
    beam_size: int,
    max_new_tokens: int,
    eos_id: int,
    alpha: float = 0.0,
    pad_id: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Batched beam search over log-probabilities, finished hypotheses kept apart (as Flax's and
    T2T's beam search, and Hugging Face's BeamSearchScorer, do).

    Each step extends the K alive beams by every token and takes the 2K best candidates by
    log p. Those ending in `eos_id` that rank among the K best join the finished set, scored
    log p(Y) / length_penalty(|Y|, alpha) with |Y| counting EOS, which keeps its K best; the K
    best of the others stay alive (at most K of the 2K end in EOS, so K remain). A finished
    hypothesis is never pushed out by alive ones, and beam_size 1 at alpha 0 is greedy decoding
    (with alpha > 0 a longer unfinished beam can outscore an earlier EOS). At the
    end the alive beams are scored the same way at max_new_tokens tokens (Hugging Face's
    finalize) and compete with the finished ones.
    Returns (tokens [B, beam_size, max_new_tokens], pad_id after EOS; scores [B, beam_size]),
    best first.
    """
    _check(max_new_tokens, ())
    check_positive_int("beam_size", beam_size)
    b, vocab = logits.shape
    if beam_size > vocab:
        raise ValueError(f"beam_size {beam_size} exceeds the vocabulary size {vocab}")
    for name, token_id in (("eos_id", eos_id), ("pad_id", pad_id)):
        if not 0 <= token_id < vocab:
            raise ValueError(
                f"{name}={token_id!r} is not a token id of the {vocab}-token vocabulary"
            )
    k = beam_size

    def take(x, index):  # x [B, N, ...] -> [B, M, ...] at index [B, M]
        return jnp.take_along_axis(x, index.reshape(*index.shape, *([1] * (x.ndim - 2))), 1)

    cache = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), cache)
    logits = jnp.repeat(logits, k, axis=0)
    # Only beam 0 is alive at the start, so the K copies do not produce duplicate hypotheses.
    alive_lp = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf), (b, 1))
    alive_seq = jnp.full((b, k, max_new_tokens), pad_id, jnp.int32)
    fin_seq, fin_score = alive_seq, jnp.full((b, k), -jnp.inf)

    def body(t, state):
        logits, cache, alive_seq, alive_lp, fin_seq, fin_score = state
        step_lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, vocab)
        total = (alive_lp[..., None] + step_lp).reshape(b, k * vocab)
        cand_lp, flat = lax.top_k(total, 2 * k)
        parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        cand_seq = take(alive_seq, parent).at[:, :, t].set(token)
        eos = token == eos_id
        # Finished: the K best of those kept so far and this step's EOS candidates that rank
        # among its K best (Hugging Face's rule: beam_size 1 is then greedy decoding).
        new = eos & (jnp.arange(2 * k) < k)[None]
        new_score = jnp.where(new, cand_lp / length_penalty(t + 1, alpha), -jnp.inf)
        fin_score, best = lax.top_k(jnp.concatenate([fin_score, new_score], 1), k)
        fin_seq = take(jnp.concatenate([fin_seq, cand_seq], 1), best)
        # Alive: the K best candidates that did not end.
        alive_lp, best = lax.top_k(jnp.where(eos, -jnp.inf, cand_lp), k)
        alive_seq = take(cand_seq, best)
        rows = (jnp.arange(b)[:, None] * k + take(parent, best)).reshape(-1)
        cache = jax.tree.map(lambda x: x[rows], cache)
        logits, cache = step_fn(take(token, best).reshape(-1), cache)
        return logits, cache, alive_seq, alive_lp, fin_seq, fin_score

    init = (logits, cache, alive_seq, alive_lp, fin_seq, fin_score)
    _, _, alive_seq, alive_lp, fin_seq, fin_score = lax.fori_loop(0, max_new_tokens, body, init)
    alive_score = alive_lp / length_penalty(jnp.int32(max_new_tokens), alpha)
    scores, best = lax.top_k(jnp.concatenate([fin_score, alive_score], 1), k)
    return take(jnp.concatenate([fin_seq, alive_seq], 1), best), scores
