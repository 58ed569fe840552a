"""Talk to a trained chat model (configs/chat.py; docs/research_notes.md section 3).

    python -m research.chat --workdir=/tmp/seqlab/chat
    python -m research.chat --workdir=DIR --top_k=5 --top_p=0.9 --temperature=0.8 --max_tokens=32
    printf 'hi there\\nhow are you?\\n' | python -m research.chat --workdir=DIR   # scripted

Each line you type is a turn; the reply is printed as it is generated. The history is kept (the
model's cache too, so a turn costs its own tokens): /reset forgets it, /quit (or end of input,
or Ctrl-C: exit 130) leaves, an empty line is ignored. Special tokens typed as text ([SEP],
[CLS]) are dropped; a line that is not UTF-8 is refused on stderr and skipped. When stdin is
not a terminal the lines are read one by one and each reply is printed on its own line after
"bot: ", so it can be scripted and tested.
A turn mostly made of tokens the vocabulary lacks (another language than the run's data, say)
gets a one-line warning on stderr; it is still answered. Exit 2 for a bad flag or a workdir that
is not a trained chat run (an experiment's directory: its runs are named).
"""

import os
import sys

from absl import app, flags

from research.cli import fail, load_run, parse_flags, seed_flag

_WORKDIR = flags.DEFINE_string("workdir", None, "a chat training run's directory")
_TOP_K = flags.DEFINE_integer("top_k", 5, "keep the k most likely tokens (0 = all)", lower_bound=0)
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus mass", lower_bound=0, upper_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "softmax temperature", lower_bound=0)
_MAX_TOKENS = flags.DEFINE_integer(
    "max_tokens",
    None,
    "longest reply in tokens (default: the run's chat.max_reply_tokens)",
    lower_bound=1,
)
_MAX_CONTEXT = flags.DEFINE_integer(
    "max_context",
    0,
    "history limit in tokens (0 = the run's chat.max_context, else its data.seq_len)",
    lower_bound=0,
)
_SEED = seed_flag("sampling PRNG seed")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")


def main(argv):
    from research.sampling import ChatSession
    from research.tasks.chat import ChatTask, vocabulary_origin

    trained = load_run(argv, _WORKDIR.value, _STEP.value, task=ChatTask.name)
    run = trained.config
    context = _MAX_CONTEXT.value or run.task_config.max_context or run.data.seq_len
    try:
        session = ChatSession(
            trained.model,
            trained.vocab,
            max_context=context,
            max_tokens=_MAX_TOKENS.value or run.task_config.max_reply_tokens,
            top_k=_TOP_K.value,
            top_p=_TOP_P.value,
            temperature=_TEMPERATURE.value,
            seed=_SEED.value,
        )
    except ValueError as e:
        fail(str(e))
    try:
        _converse(session, trained, vocabulary_origin(run))
    except KeyboardInterrupt:  # Ctrl-C leaves, as /quit does
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (| head): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _converse(session, trained, origin: str) -> None:
    from research.tasks.chat import unknown_turn_warning

    vocab = trained.vocab
    # What the user types is text: a special token written in it ([SEP], [CLS]) would break
    # the turn layout, so those ids are dropped.
    specials = {vocab.pad_id, vocab.cls_id, vocab.sep_id, vocab.mask_id}
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chat with {_WORKDIR.value} (step {trained.step}); /reset, /quit", flush=True)
    while True:
        if interactive:
            print("you: ", end="", flush=True)
        raw = sys.stdin.buffer.readline()
        if not raw:  # end of input
            break
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            print(f"error: that line is not UTF-8 text (byte {e.start}); ignored", file=sys.stderr)
            continue
        if text == "/quit":
            break
        if text == "/reset":
            session.reset()
            print("(history cleared)", flush=True)
            continue
        ids = [i for i in vocab.encode(text) if i not in specials] if text else []
        if not ids:  # an empty line, or one the vocabulary holds nothing of
            continue
        warning = unknown_turn_warning(vocab, ids, origin)
        if warning:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        session.user_turn(ids)
        print("bot: ", end="", flush=True)
        session.bot_turn(on_text=lambda piece: print(piece, end="", flush=True))
        print(flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
