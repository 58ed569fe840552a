"""DialoGPT-style chat (docs/research_notes.md section 3; docs/chat.md): a causal LM over whole
multi-turn conversations, [CLS] u1 [SEP] u2 [SEP] ... with speaker segments, the loss on every
turn.

    python -m research.main --config=configs/chat.py --workdir=/tmp/seqlab/chat
    python -m research.chat --workdir=/tmp/seqlab/chat          # talk to it (/reset, /quit)
    python -m research.main --config=configs/chat.py:smoke --workdir=/tmp/seqlab/chat_smoke
    # LCCC (or any JSON list of conversations, each a list of utterances), characters as tokens
    python -m research.main --config=configs/chat.py --workdir=/tmp/seqlab/lccc \
        --config.data.source=lccc:/data/LCCC-base_train.json --config.chat.vocab=char
    # from a pretrained BERT run causally (its vocabulary and architecture; positions <= 512)
    python -m research.main --config=configs/chat.py --workdir=/tmp/seqlab/chat_minilm \
        --config.chat.init=hf:/path/to/all-MiniLM-L6-v2
    # linear attention: the chat keeps an O(1) recurrent state between turns
    python -m research.main --config=configs/chat.py --workdir=/tmp/seqlab/chat_linear \
        --config.model.attention=linear --config.model.feature_map=elu

Data: `chitchat` (English, the chitchat-dataset package, 7,168 conversations), `chatterbot_zh`
(the small Chinese set of chatterbot-corpus) or `lccc:PATH`; split 90/5/5 by conversation;
`data.train_examples` caps the train conversations (the first N). Both presets train on English
chitchat with a WordPiece vocabulary trained on their train conversations: the default on all
6,480, `smoke` (a tiny model, 6 steps, seconds) on the first 200 with 600 pieces.
Evaluation: token loss and perplexity on held-out conversations, and replies sampled (top-k 5,
at most 32 tokens, as the note) for 64 held-out contexts: distinct-1/2 and mean length.
"""

from ml_collections import ConfigDict

from configs import common
from research.config import section_defaults
from research.tasks.chat import ChatConfig


def get_config(preset: str = "") -> ConfigDict:
    c = common.base_config()
    c.task = "chat"
    c.data.update(source="chitchat", seq_len=128, vocab_size=8000)
    c.chat = section_defaults(ChatConfig)  # init, vocab, top_k, max_reply_tokens, ...
    # Used only without init; with init the architecture is the pretrained BERT's.
    c.model.update(
        d_model=256,
        num_heads=4,
        num_layers=4,
        d_ff=1024,
        positions="rotary",
        norm="pre",
        num_segments=2,
    )
    c.update(
        batch_size=16,
        num_train_steps=800,
        eval_every_steps=400,
        eval_steps=40,
        checkpoint_every_steps=400,
        log_every_steps=25,
    )
    # The note: AdamW, weight decay 0.01 except norms and biases (research.train.optim).
    c.optimizer.update(learning_rate=1e-3, warmup_steps=80, weight_decay=0.01)
    if preset == "smoke":
        # The first 200 train conversations: encoding all of them would take longer than the
        # 6 steps.
        c.data.update(source="chitchat", seq_len=32, vocab_size=600, train_examples=200)
        c.model.update(d_model=32, num_heads=2, num_layers=2, d_ff=64)
        c.chat.update(eval_contexts=4, max_reply_tokens=8)
        c.update(
            batch_size=8,
            num_train_steps=6,
            eval_every_steps=3,
            eval_steps=2,
            checkpoint_every_steps=3,
            log_every_steps=1,
        )
        c.optimizer.update(learning_rate=1e-3, warmup_steps=2)
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/chat.py; allowed: smoke")
    return c
