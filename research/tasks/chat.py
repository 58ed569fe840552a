"""DialoGPT-style chat (docs/research_notes.md section 3): a causal LM over whole multi-turn
conversations.

Rows are [CLS] u1 [SEP] u2 [SEP] ... with segment ids alternating by speaker
(`research.data.dialogue`), and the LM loss is on every token of every turn. The model is a
`DecoderLM` with two segment embeddings, trained from scratch or started from a BERT checkpoint
run with the causal mask (`chat.init`: workdir:PATH of an mlm run, or hf:PATH of a Hugging Face
BERT such as all-MiniLM-L6-v2); its output layer is the token embedding matrix (tied), and what
the checkpoint lacks keeps its initialisation and is listed. Evaluation adds, besides the token
loss and perplexity of held-out conversations, replies sampled for held-out contexts (top-k, as
the note): distinct-1 / distinct-2 (distinct n-grams over all n-grams of the replies) and their
mean length in tokens. `data.train_examples` caps the train conversations (the first N; the
smoke preset's 200), the vocabulary trained from scratch included.
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research import sampling
from research.config import ConfigError, RunConfig
from research.data import DataError, dialogue, wordpiece
from research.data.shards import array_iterator
from research.models import DecoderLM, ModelConfig
from research.models import params as params_io
from research.ops.checks import check_positive_field
from research.sampling.sampler import logit_ban, special_ids
from research.tasks import bert
from research.tasks.base import Task, TaskData, abstract_rows
from research.tasks.lm import lm_loss


@dataclasses.dataclass(frozen=True)
class ChatConfig:
    """The `chat` section."""

    init: str = ""  # "" (random) | workdir:PATH (an mlm run) | hf:PATH (a Hugging Face BERT)
    vocab: str = "auto"  # from scratch: wordpiece | char | auto (wordpiece for chitchat)
    top_k: int = 5  # evaluation replies: top-k sampling, as the note
    max_reply_tokens: int = 32  # the note's limit
    eval_contexts: int = 64  # held-out contexts to sample a reply for (distinct-n, length)
    max_context: int = 0  # the interactive chat's history limit in tokens; 0 = data.seq_len

    def __post_init__(self):
        if self.vocab not in ("auto", "wordpiece", "char"):
            raise ValueError(f"vocab={self.vocab!r}: allowed auto, wordpiece, char")
        for name in ("top_k", "max_reply_tokens"):
            check_positive_field(name, getattr(self, name))
        for name in ("eval_contexts", "max_context"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r}: must be an int >= 0")


def distinct_n(replies: list[list[int]], n: int) -> float:
    """Distinct n-grams / all n-grams over every reply (Li et al. 2016); 0 without n-grams."""
    grams = [tuple(r[i : i + n]) for r in replies for i in range(len(r) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def chat_vocab(run: RunConfig, train_conversations, *, capped: bool = False):
    """The run's vocabulary: chat.init's, else trained on `train_conversations` (once per
    data_dir; `capped`: they are the first data.train_examples, named in the file)."""
    s, d = run.task_config, run.data
    if s.init:
        return bert.vocabulary(d, s.init, key="chat.init")
    texts = lambda: (t for conv in train_conversations for t in conv)  # noqa: E731
    directory = pathlib.Path(d.data_dir).expanduser() / "tokenizers"
    name = d.source.replace("/", "_").replace(":", "_")
    if capped:
        name += f"-n{d.train_examples}"
    if wordpiece.is_local(d.source):
        name += f"-{wordpiece.texts_digest(texts())}"
    if vocab_kind(run) == "wordpiece":
        return wordpiece.train_english_or_load(
            texts, directory / f"chat-{name}-wp{d.vocab_size}.json", d.vocab_size
        )
    path = wordpiece.char_vocab_path(d.data_dir, f"chat-{name}", d.vocab_size)
    return wordpiece.train_or_load(texts, path, vocab_size=d.vocab_size)


def vocab_kind(run: RunConfig) -> str:
    """wordpiece or char: chat.vocab, where auto is wordpiece for chitchat (English)."""
    if run.task_config.vocab != "auto":
        return run.task_config.vocab
    return "wordpiece" if run.data.source == "chitchat" else "char"


def vocabulary_origin(run: RunConfig) -> str:
    """Where the run's vocabulary comes from, to end "the model's vocabulary, which ..."."""
    s, source = run.task_config, run.data.source
    if s.init:
        return f"comes from chat.init={s.init}"
    text = {
        "chitchat": "English conversations (data.source=chitchat)",
        "chatterbot_zh": "Chinese conversations (data.source=chatterbot_zh)",
    }.get(source, f"the conversations of {source[5:]} (data.source={source})")
    return f"was trained on {text}"


def unknown_turn_warning(vocab, ids: list[int], origin: str) -> str | None:
    """One line when most of a turn's token ids (more than half) are [UNK], else None."""
    unknown = sum(1 for t in ids if t == vocab.unk_id)
    if not ids or 2 * unknown <= len(ids):
        return None
    return (
        f"most of this turn ({unknown} of {len(ids)} tokens) is unknown to the model's "
        f"vocabulary, which {origin}"
    )


def reply_ids(tokens, stop_id: int) -> list[list[int]]:
    """Each row up to (not including) its first stop token."""
    out = []
    for row in np.asarray(tokens).tolist():
        out.append(row[: row.index(stop_id)] if stop_id in row else row)
    return out


class ChatTask(Task):
    name = "chat"
    generate_hint = "talk to it with research.chat"
    section = "chat"
    section_type = ChatConfig

    def validate(self, run: RunConfig) -> None:
        super().validate(run)
        bert.parse_init(run.task_config.init, key="chat.init")
        if run.data.source not in ("chitchat", "chatterbot_zh") and not run.data.source.startswith(
            "lccc:"
        ):
            raise ConfigError(
                f"data.source={run.data.source!r}: the chat task reads "
                f"{', '.join(dialogue.SOURCES)}"
            )
        s, seq_len = run.task_config, run.data.seq_len
        if s.max_reply_tokens + 4 > seq_len:
            raise ConfigError(
                f"chat.max_reply_tokens={s.max_reply_tokens}: a held-out context "
                f"and the reply must fit data.seq_len={seq_len} (at most "
                f"{seq_len - 4})"
            )
        if s.max_context and s.max_context < s.max_reply_tokens + 4:
            raise ConfigError(
                f"chat.max_context={s.max_context}: must be 0 or at least "
                f"max_reply_tokens + 4 = {s.max_reply_tokens + 4}"
            )

    def build_data(self, run: RunConfig) -> TaskData:
        t, d = run.train, run.data
        try:
            splits = dialogue.conversations(d.source, d.data_dir)
        except DataError as e:
            raise ConfigError(str(e)) from None
        train = splits["train"][: d.train_examples]
        if len(train) < len(splits["train"]):
            print(
                f"chat train: the first {len(train):,} of {len(splits['train']):,} "
                "conversations (data.train_examples)",
                flush=True,
            )
        vocab = chat_vocab(run, train, capped=len(train) < len(splits["train"]))
        rows = {
            "train": dialogue.conversation_rows(vocab, train, d.seq_len),
            "validation": dialogue.conversation_rows(vocab, splits["validation"], d.seq_len),
        }
        for name, r in rows.items():
            if len(r) < t.batch_size:
                raise DataError(
                    f"data.source={d.source!r}: the {name} split has {len(r)} "
                    f"rows, fewer than batch_size={t.batch_size}"
                )

        def make(is_train: bool):
            return array_iterator(
                rows["train" if is_train else "validation"],
                batch_size=t.batch_size,
                seed=t.seed,
                train=is_train,
                shards=d.shards,
            )

        held_out = splits["validation"]  # the contexts `evaluate` samples replies for
        return TaskData(vocab.vocab_size(), d.seq_len, make, vocab, eval_examples=held_out)

    def model_config(self, run: RunConfig, *, vocab_size: int, max_length: int) -> ModelConfig:
        init = run.task_config.init
        mcfg = bert.build_config(
            run, init, key="chat.init", vocab_size=vocab_size, max_length=max_length
        )
        heads = dict(
            num_segments=max(mcfg.num_segments, 2), tie_embeddings=True, pooler=False, num_labels=0
        )
        return mcfg.replace(**heads)

    def model_class(self, run: RunConfig) -> type:
        return DecoderLM

    def initialize(self, run: RunConfig, model) -> None:
        init = run.task_config.init
        if not init:
            return
        pre = bert.pretrained_model(init, key="chat.init")
        with bert._init_errors(init, "chat.init"):
            copied, fresh = params_io.transfer(pre, model)
        print(
            f"chat.init: {len(copied)} tensors from {init} (run causally); newly "
            f"initialised: {', '.join(sorted(fresh)) or 'none'}; {bert.not_used(pre, copied)}",
            flush=True,
        )

    def abstract_batch(self, run: RunConfig, batch_size: int) -> dict:
        """Dialogue rows: inputs, targets, segment_ids (the speaker) [B, seq_len] int32 and
        weights [B, seq_len] float32 (`research.data.dialogue.conversation_rows`)."""
        row = (run.data.seq_len,)
        return abstract_rows(
            batch_size,
            inputs=(row, jnp.int32),
            targets=(row, jnp.int32),
            segment_ids=(row, jnp.int32),
            weights=(row, jnp.float32),
        )

    def loss_fn(self, run: RunConfig, data: TaskData):
        return lm_loss

    def evaluate(self, run: RunConfig, data: TaskData, eval_model, state, batches) -> dict:
        s = run.task_config
        if not s.eval_contexts:
            return {}
        vocab = data.vocab
        ctx = dialogue.eval_contexts(
            vocab,
            data.eval_examples,
            n=s.eval_contexts,
            seq_len=run.data.seq_len,
            reply_tokens=s.max_reply_tokens,
        )
        if ctx is None:
            return {}
        prompts, lengths, segments, reply_seg = ctx

        model = eval_model(state.params, state.consts)
        # specials but [SEP] never drawn (they counted in distinct-n, unseen in the text)
        ban = logit_ban(model.cfg.vocab_size, special_ids(vocab))

        @nnx.jit
        def sample(model, key):
            return sampling.decode(
                model,
                jnp.asarray(prompts),
                lengths=jnp.asarray(lengths),
                max_new_tokens=s.max_reply_tokens,
                method="sample",
                key=key,
                segment=jnp.asarray(reply_seg),
                segment_ids=jnp.asarray(segments),
                top_k=s.top_k,
                top_p=1.0,
                temperature=1.0,
                stop_tokens=(vocab.sep_id,),
                pad_id=vocab.pad_id,
                logit_bias=ban,
            )

        tokens = sample(model, jax.random.key(run.train.seed))
        replies = reply_ids(jax.device_get(tokens), vocab.sep_id)
        return {
            "distinct_1": distinct_n(replies, 1),
            "distinct_2": distinct_n(replies, 2),
            "reply_length": float(np.mean([len(r) for r in replies])),
        }
