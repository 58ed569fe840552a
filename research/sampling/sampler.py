"""The sampler: `research.ops.decoding` run on a model, `decode` (traceable) and `generate` (jit).

`decode` prefills a `DecoderLM`, a UniLM `Bert` or an `EncoderDecoder` and runs greedy / sample
/ beam search; it has no jit of its own, so training losses and the tasks' evaluations call it
inside theirs. The prompt may carry segment ids (a chat history's speakers, a UniLM row's
segments) and a `Bert` may prefill it with the UniLM mask; new tokens take `segment`. `generate`
checks its arguments, then runs `decode` in one jitted function: the model is split into
(graphdef, state) with `nnx.split` and merged back inside, so parameters are ordinary jit
arguments and nothing is retraced per call.
"""

import functools
import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.data.vocab import Vocab
from research.models.transformer import EncoderDecoder
from research.ops import decoding


class TextPrompt(NamedTuple):
    """A text prompt laid out as a task's model continues it (`research.generate`): its token
    ids, the vocabulary that decodes the continuation, and the special ids of `generate`."""

    ids: list[int]
    vocab: Vocab
    bos_id: int | None  # an EncoderDecoder's first decoder token; None: the model continues ids
    eos_id: int
    pad_id: int


DECODERS = {"greedy": decoding.greedy, "sample": decoding.sample, "beam": decoding.beam_search}
METHODS = tuple(DECODERS)


def _keyword_options(fn, *, required_only=False):
    """The keyword-only options of a decoding function (all, or those without a default)."""
    return frozenset(
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is p.KEYWORD_ONLY
        and p.name != "max_new_tokens"
        and not (required_only and p.default is not p.empty)
    )


# method -> the keyword options its `research.ops.decoding` function takes (and must be given).
OPTIONS = {m: _keyword_options(fn) for m, fn in DECODERS.items()}
REQUIRED = {m: _keyword_options(fn, required_only=True) for m, fn in DECODERS.items()}


def check_options(method: str, options) -> None:
    """ValueError for an unknown method, an option `method` does not take, or a missing one."""
    if method not in DECODERS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    allowed = ", ".join(sorted(OPTIONS[method]))
    for name in options:
        if name not in OPTIONS[method]:
            raise ValueError(f"unknown option {name!r} for method={method!r}; allowed: {allowed}")
    missing = sorted(REQUIRED[method] - set(options))
    if missing:
        raise ValueError(f"method={method!r} needs option(s) {', '.join(missing)}")


def decode(
    model,
    prompt,
    *,
    lengths,
    max_new_tokens: int,
    method: str,
    key=None,
    bos_id=None,
    segment=None,
    segment_ids=None,
    unilm: bool = False,
    logit_bias=None,
    **options,
):
    """Prefill and decode; traceable (no jit here), so it runs inside a jitted loss.

    DecoderLM / Bert: prompt [B, P] right-padded to `lengths` [B]; the cache holds P +
    max_new_tokens positions; `segment` (int or [B]) applies to new tokens (Bert: the prompt is
    segment 0, new tokens segment 1 unless given). EncoderDecoder: prompt = source ids [B, S],
    src_mask = position < lengths, and decoding starts from `bos_id`.
    `options` go to `research.ops.decoding.greedy / sample / beam_search` (see OPTIONS).

    Args:
      model: a `DecoderLM`, `Bert` or `EncoderDecoder`.
      prompt: token ids [B, P], right-padded.
      lengths: the prompts' lengths [B].
      max_new_tokens: tokens to decode.
      method: "greedy", "sample" or "beam".
      key: the PRNG key of "sample".
      bos_id: the first decoder token of an EncoderDecoder.
      segment: the new tokens' segment (int or [B]).
      segment_ids: the prompt's segment ids [B, P] (a DecoderLM's or Bert's prompt; None: 0).
      unilm: prefill a `Bert` prompt with the UniLM mask (segment 1 causal over itself).
      logit_bias: added to every step's logits [V] (-inf bans a token).
      **options: the decoding function's options (see OPTIONS).

    Returns:
      tokens [B, max_new_tokens], or for "beam" (tokens [B, K, N], scores [B, K]).
    """
    check_options(method, options)
    if method == "sample" and key is None:
        raise ValueError("method='sample' needs a PRNG key")
    lengths = jnp.asarray(lengths)
    if isinstance(model, EncoderDecoder):
        if bos_id is None:
            raise ValueError("an EncoderDecoder decodes from bos_id; pass bos_id=")
        if segment is not None:
            raise ValueError("an EncoderDecoder has no segments; drop segment=")
        if segment_ids is not None or unilm:
            raise ValueError("an EncoderDecoder has no segments; drop segment_ids= and unilm=")
        src_mask = jnp.arange(prompt.shape[1])[None, :] < lengths[:, None]
        logits, cache = model.prefill(
            prompt, src_mask=src_mask, bos_id=bos_id, max_length=max_new_tokens + 1
        )
        step = model.decode_step
    else:
        prefill = {} if segment_ids is None else {"segment_ids": segment_ids}
        if unilm:
            prefill["unilm"] = True
        logits, cache = model.prefill(
            prompt, lengths=lengths, max_length=prompt.shape[1] + max_new_tokens, **prefill
        )
        kwargs = {} if segment is None else {"segment": segment}
        step = functools.partial(model.decode_step, **kwargs)
    if logit_bias is not None:
        logits, step = logits + logit_bias, _biased(step, logit_bias)
    if method == "sample":
        return decoding.sample(step, logits, cache, key, max_new_tokens=max_new_tokens, **options)
    return DECODERS[method](step, logits, cache, max_new_tokens=max_new_tokens, **options)


def _biased(step, bias):
    """`step` with `bias` added to the logits it returns."""

    def biased(token, cache):
        logits, cache = step(token, cache)
        return logits + bias, cache

    return biased


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "method", "max_new_tokens", "bos_id", "unilm", "options"),
)
def _decode_jit(
    graphdef,
    state,
    prompt,
    lengths,
    key,
    segment,
    segment_ids,
    logit_bias,
    *,
    method,
    max_new_tokens,
    bos_id,
    unilm,
    options,
):
    model = nnx.merge(graphdef, state)
    return decode(
        model,
        prompt,
        lengths=lengths,
        max_new_tokens=max_new_tokens,
        method=method,
        key=key,
        bos_id=bos_id,
        segment=segment,
        segment_ids=segment_ids,
        unilm=unilm,
        logit_bias=logit_bias,
        **dict(options),
    )


def _check_concrete(model, prompt, lengths):
    """Token ids and lengths that jit would silently clamp, checked when they are known."""
    if lengths.shape != prompt.shape[:1]:
        raise ValueError(f"lengths must be [batch] = {prompt.shape[:1]}, got {lengths.shape}")
    if isinstance(prompt, jax.core.Tracer) or isinstance(lengths, jax.core.Tracer):
        return
    vocab = model.cfg.vocab_size
    if prompt.size and not (0 <= int(prompt.min()) and int(prompt.max()) < vocab):
        raise ValueError(
            f"prompt token ids must be in [0, {vocab}), got {int(prompt.min())} to "
            f"{int(prompt.max())}"
        )
    if lengths.size and not (1 <= int(lengths.min()) and int(lengths.max()) <= prompt.shape[1]):
        raise ValueError(
            f"lengths must be in [1, {prompt.shape[1]}] (the prompt width), got "
            f"{int(lengths.min())} to {int(lengths.max())}"
        )


def generate(
    model,
    prompt,
    *,
    lengths=None,
    max_new_tokens: int,
    method: str = "greedy",
    key=None,
    bos_id=None,
    segment=None,
    segment_ids=None,
    unilm: bool = False,
    logit_bias=None,
    **options,
):
    """Continue right-padded prompts [B, P] (`lengths` [B]) of a `DecoderLM` or UniLM `Bert`, or
    decode from sources [B, S] (`lengths` = source lengths) of an `EncoderDecoder` (`bos_id`).

    method "greedy" / "sample" (options: temperature, top_k, top_p, stop_tokens, pad_id) return
    tokens [B, max_new_tokens]; "beam" (beam_size, eos_id, alpha, pad_id) returns (tokens [B, K,
    N], scores [B, K]). `segment` (DecoderLM speakers; Bert defaults to 1) applies to new tokens,
    `segment_ids` [B, P] to the prompt; `unilm` prefills a `Bert` prompt with the UniLM mask;
    `logit_bias` [V] is added to every step's logits (-inf bans a token: `logit_ban`).
    Arguments are checked here, before tracing; the decode itself is `decode` under one jit.
    """
    check_options(method, options)
    if method == "sample" and key is None:
        raise ValueError("method='sample' needs a PRNG key")
    decoding.check_max_new_tokens(max_new_tokens)  # before prefill sizes the cache with it
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt.ndim != 2:
        raise ValueError(f"prompt must be [batch, length] token ids, got shape {prompt.shape}")
    if isinstance(model, EncoderDecoder):
        vocab = model.cfg.vocab_size
        if not (isinstance(bos_id, int | np.integer) and 0 <= bos_id < vocab):
            raise ValueError(
                f"an EncoderDecoder needs bos_id, an int in [0, {vocab}), got {bos_id!r}"
            )
        if segment is not None:
            raise ValueError("an EncoderDecoder has no segments; drop segment=")
        if segment_ids is not None or unilm:
            raise ValueError("an EncoderDecoder has no segments; drop segment_ids= and unilm=")
    elif bos_id is not None:
        raise ValueError(
            f"bos_id is for an EncoderDecoder; a {type(model).__name__} continues its prompt"
        )
    lengths = jnp.full(prompt.shape[:1], prompt.shape[1]) if lengths is None else lengths
    _check_concrete(model, prompt, jnp.asarray(lengths))
    bos_id = None if bos_id is None else int(bos_id)
    key = jax.random.PRNGKey(0) if key is None else key
    graphdef, state = nnx.split(model)
    opts = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
    return _decode_jit(
        graphdef,
        state,
        prompt,
        jnp.asarray(lengths, jnp.int32),
        key,
        segment,
        None if segment_ids is None else jnp.asarray(segment_ids, jnp.int32),
        None if logit_bias is None else _checked_bias(model, logit_bias),
        method=method,
        max_new_tokens=max_new_tokens,
        bos_id=bos_id,
        unilm=bool(unilm),
        options=opts,
    )


def _checked_bias(model, logit_bias) -> jax.Array:
    """logit_bias as a float32 [V] array; ValueError for another shape."""
    bias = jnp.asarray(logit_bias, jnp.float32)
    if bias.shape != (model.cfg.vocab_size,):
        raise ValueError(
            f"logit_bias must be [vocab_size] = [{model.cfg.vocab_size}], got shape {bias.shape}"
        )
    return bias


def logit_ban(vocab_size: int, ids) -> jax.Array:
    """A [vocab_size] logit bias: -inf at `ids` (never drawn), 0 elsewhere."""
    return jnp.zeros(vocab_size).at[jnp.asarray(ids, jnp.int32)].set(-jnp.inf)


def special_ids(vocab) -> tuple[int, ...]:
    """The vocabulary's special tokens but [SEP] (which ends an answer or a turn): what sampling
    text never draws ([PAD], [UNK], [CLS], [MASK]; the decoded text would drop them unseen)."""
    names = ("pad_id", "unk_id", "cls_id", "mask_id")
    return tuple(sorted({int(getattr(vocab, n)) for n in names if hasattr(vocab, n)}))
