"""The kept-state chat session: a trained chat model's cache carried from turn to turn, so a turn
costs its own tokens (research.chat and research.bench.chat use it)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.data import dialogue
from research.ops import decoding
from research.sampling.sampler import logit_ban, special_ids


class ChatSession:
    """A conversation with a trained chat model, its cache kept between turns.

    The history is [CLS] u1 [SEP] r1 [SEP] u2 [SEP] ...; the user is speaker 0. A new user turn
    is fed into the cache one token at a time (softmax attention: its keys and values; linear
    attention: the O(1) recurrent state), so a turn costs its own tokens, not the history. When
    the next turn and a full reply would not fit `max_context` tokens, the history is laid out
    again from its newest whole turns (left truncation, as the held-out contexts are cut) and
    prefilled once; a newest turn longer than the room keeps its end (training cuts a single
    overlong turn at its end instead, keeping its start: a row must begin at [CLS]).
    Replies are sampled (temperature, top-k, top-p) until [SEP] or `max_tokens`.
    """

    def __init__(
        self,
        model,
        vocab,
        *,
        max_context: int,
        max_tokens: int = 32,
        top_k: int = 5,
        top_p: float = 1.0,
        temperature: float = 1.0,
        seed: int = 0,
    ):
        if max_context < max_tokens + 4:
            raise ValueError(
                f"max_context={max_context} leaves no room for a turn and a reply "
                f"of max_tokens={max_tokens}"
            )
        cfg = model.cfg
        if cfg.positions in ("learned", "sinusoidal") and max_context > cfg.max_length:
            raise ValueError(
                f"max_context={max_context} exceeds the model's {cfg.max_length} "
                f"{cfg.positions} positions"
            )
        decoding.filter_logits(
            jnp.zeros((1, 2)), temperature=temperature, top_k=top_k, top_p=top_p
        )  # checks the options now, not mid-conversation
        self.vocab, self.max_context, self.max_tokens = vocab, max_context, max_tokens
        self.options = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self.key = jax.random.key(seed)
        graphdef, self._state = nnx.split(model)

        @jax.jit
        def prefill(state, tokens, segments, lengths):
            m = nnx.merge(graphdef, state)
            return m.prefill(tokens, lengths=lengths, segment_ids=segments, max_length=max_context)

        @jax.jit
        def step(state, token, cache, segment):
            return nnx.merge(graphdef, state).decode_step(token, cache, segment=segment)

        # [PAD], [UNK], [CLS], [MASK] are never drawn: the reply's text would drop them unseen
        ban = logit_ban(cfg.vocab_size, special_ids(vocab))

        @jax.jit
        def choose(logits, key):
            filtered = decoding.filter_logits(logits + ban, **self.options)
            return jax.random.categorical(key, filtered, axis=-1)

        self._prefill, self._step, self._choose = prefill, step, choose
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (and the cache)."""
        self.turns: list[list[int]] = []
        self.dropped = 0  # turns left out of the cache by truncation
        self.cache, self.logits, self.length, self.prefills = None, None, 0, 0

    def _speaker(self, k: int) -> int:
        return k % 2  # turn k of the whole conversation; the user opened it

    def context(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, segments) the cache holds: the layout of the kept turns."""
        return dialogue.layout(
            self.turns[self.dropped :],
            cls_id=self.vocab.cls_id,
            sep_id=self.vocab.sep_id,
            first_segment=self.dropped % 2,
        )

    def _feed(self, ids: list[int], segment: int) -> None:
        for t in ids:
            self.logits, self.cache = self._step(
                self._state,
                jnp.asarray([t], jnp.int32),
                self.cache,
                jnp.asarray([segment], jnp.int32),
            )
            self.length += 1

    def _rebuild(self, budget: int) -> None:
        kept, dropped = dialogue.newest_turns(self.turns, budget - 1)
        if len(kept) == 1 and kept[0] != self.turns[-1]:  # the newest turn alone was cut
            self.turns[-1] = kept[0]
        self.dropped = dropped
        tokens, segments = self.context()
        # Right-padded to a power of two (at most the budget): a prefill costs about the
        # history's length, and rebuilds share a few compiled shapes.
        width = min(budget, 1 << (len(tokens) - 1).bit_length())
        padded = np.full((1, width), self.vocab.pad_id, np.int32)
        seg = np.zeros((1, width), np.int32)
        padded[0, : len(tokens)], seg[0, : len(segments)] = tokens, segments
        self.logits, self.cache = self._prefill(
            self._state,
            jnp.asarray(padded),
            jnp.asarray(seg),
            jnp.asarray([len(tokens)], jnp.int32),
        )
        self.length, self.prefills = len(tokens), self.prefills + 1

    def user_turn(self, text_or_ids) -> jax.Array:
        """Add the user's turn; returns the next-token logits [1, V] (the reply's first)."""
        ids = self.vocab.encode(text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
        self.turns.append(list(ids))
        need = len(ids) + 1 + self.max_tokens + 1
        if self.cache is None or self.length + need > self.max_context:
            self._rebuild(self.max_context - self.max_tokens - 1)
        else:
            self._feed([*ids, self.vocab.sep_id], self._speaker(len(self.turns) - 1))
        return self.logits

    def bot_turn(self, on_text=None, forced: list[int] | None = None) -> list[int]:
        """Sample the reply (or take `forced` ids), feed it and its [SEP] into the cache, and
        return its ids; on_text(piece) receives the text as it is generated. A forced reply
        still samples every step (and discards the draw), so it costs what a sampled one does:
        the benchmarks time forced replies of a fixed length."""
        segment, sep = self._speaker(len(self.turns)), self.vocab.sep_id
        reply, shown = [], ""
        for i in range(self.max_tokens):
            if forced is not None and i == len(forced):
                break
            self.key, sub = jax.random.split(self.key)
            token = int(self._choose(self.logits, sub)[0])
            if forced is not None:
                token = forced[i]
            elif token == sep:
                break
            reply.append(token)
            self._feed([token], segment)
            if on_text is not None:
                text = self.vocab.decode(reply)
                on_text(text[len(shown) :])
                shown = text
        self.turns.append(reply)
        self._feed([sep], segment)
        return reply
