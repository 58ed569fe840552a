"""Thin adapter: run `research.ops.decoding` on a model, the whole decode in one `jax.jit`.

The model is split into (graphdef, state) with `nnx.split` and merged back inside the jitted
function, so parameters are ordinary jit arguments and nothing is retraced per call.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from research.ops import decoding

METHODS = ("greedy", "sample", "beam")


@functools.partial(jax.jit, static_argnames=("graphdef", "method", "max_new_tokens", "options"))
def _decode(graphdef, state, prompt, lengths, key, *, method, max_new_tokens, options):
    model = nnx.merge(graphdef, state)
    opts = dict(options)
    segment = opts.pop("segment", None)
    kwargs = {} if segment is None else {"segment": segment}
    logits, cache = model.prefill(
        prompt, lengths=lengths, max_length=prompt.shape[1] + max_new_tokens
    )

    def step(token, cache):
        return model.decode_step(token, cache, **kwargs)

    if method == "greedy":
        return decoding.greedy(step, logits, cache, max_new_tokens=max_new_tokens, **opts)
    if method == "sample":
        return decoding.sample(step, logits, cache, key, max_new_tokens=max_new_tokens, **opts)
    return decoding.beam_search(step, logits, cache, max_new_tokens=max_new_tokens, **opts)


def _check_concrete(model, prompt, lengths):
    """Token ids and lengths that jit would silently clamp, checked when they are known."""
    if lengths.shape != prompt.shape[:1]:
        raise ValueError(f"lengths must be [batch] = {prompt.shape[:1]}, got {lengths.shape}")
    if isinstance(prompt, jax.core.Tracer) or isinstance(lengths, jax.core.Tracer):
        return
    vocab = model.cfg.vocab_size
    if prompt.size and not (0 <= int(prompt.min()) and int(prompt.max()) < vocab):
        raise ValueError(f"prompt token ids must be in [0, {vocab}), got {int(prompt.min())} to "
                         f"{int(prompt.max())}")  # fmt: skip
    if lengths.size and not (1 <= int(lengths.min()) and int(lengths.max()) <= prompt.shape[1]):
        raise ValueError(f"lengths must be in [1, {prompt.shape[1]}] (the prompt width), got "
                         f"{int(lengths.min())} to {int(lengths.max())}")  # fmt: skip


def generate(model, prompt, *, lengths=None, max_new_tokens: int, method: str = "greedy",
             key=None, **options):  # fmt: skip
    """Continue right-padded prompts [B, P] (`lengths` [B]) of a `DecoderLM` or UniLM `Bert`.

    method "greedy" / "sample" (options: temperature, top_k, top_p, stop_tokens, pad_id) return
    tokens [B, max_new_tokens]; "beam" (beam_size, eos_id, alpha) returns (tokens [B, K, N],
    scores [B, K]). `segment` (DecoderLM speakers; Bert defaults to 1) applies to new tokens.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if method == "sample" and key is None:
        raise ValueError("method='sample' needs a PRNG key")
    decoding.check_max_new_tokens(max_new_tokens)  # before prefill sizes the cache with it
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt.ndim != 2:
        raise ValueError(f"prompt must be [batch, length] token ids, got shape {prompt.shape}")
    lengths = jnp.full(prompt.shape[:1], prompt.shape[1]) if lengths is None else lengths
    _check_concrete(model, prompt, jnp.asarray(lengths))
    key = jax.random.PRNGKey(0) if key is None else key
    graphdef, state = nnx.split(model)
    opts = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
    return _decode(graphdef, state, prompt, jnp.asarray(lengths, jnp.int32), key, method=method,
                   max_new_tokens=max_new_tokens, options=opts)  # fmt: skip
