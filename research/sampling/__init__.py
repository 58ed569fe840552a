"""Sampling from trained models: one sampler and the runtimes built on it.

`sampler`: `decode` (traceable) and `generate` (one jit) run greedy / top-k / top-p sampling /
beam search (`research.ops.decoding`) on a `DecoderLM`, a `Bert` (prompt segment ids, the UniLM
mask) or an `EncoderDecoder`. `chat_session.ChatSession` keeps a chat model's cache from turn to
turn; `qagen` is two-stage question generation (answers sampled, questions beam-searched). Tasks
and the entry points import them from here; this floor imports models, data and ops only.
"""

from research.sampling.chat_session import ChatSession
from research.sampling.qagen import Generator
from research.sampling.sampler import METHODS, TextPrompt, check_options, decode, generate

__all__ = [
    "METHODS",
    "ChatSession",
    "Generator",
    "TextPrompt",
    "check_options",
    "decode",
    "generate",
]
