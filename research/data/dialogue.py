"""Multi-turn conversations for the chat task (docs/research_notes.md section 3), and their LM
layout.

Sources (`data.source` of configs/chat.py):
  chitchat       the English `chitchat-dataset` 0.9.0 (MIT, BYU PCC lab): 7,168 conversations; a
                 turn is the consecutive messages of one sender, joined by a space.
  chatterbot_zh  the Chinese conversations of `chatterbot-corpus` 1.3.3 (BSD): a small check.
  lccc:PATH      a file in the LCCC format (Wang et al. 2020): a JSON list of conversations,
                 each a list of utterance strings (LCCC-base/large, or any such file).
Conversations are split 90/5/5 by a hash of their id (chitchat) or of their text, so a
conversation is never split between train and test. The two package sources are our tfds
builders (`ChitchatConversations`, `ChatterbotChinese`: array_record in data_dir, built on first
use); an LCCC file is the user's own and is read as it is.

Layout (`chat_example`): [CLS] u1 [SEP] u2 [SEP] ... with segment ids alternating by speaker
(turn k has segment k % 2 in the conversation, [CLS] that of the first turn kept); the LM loss
is on every next-token prediction. A conversation longer than the row is cut into several rows,
each of whole consecutive turns (`conversation_windows`), so the newest turns of a window are
kept and every turn is trained on once an epoch.
"""

import importlib.util
import json
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from research.data import DataError, builders, chinese

SOURCES = ("chitchat", "chatterbot_zh", "lccc:PATH")
SPLIT_PERCENTS = (90, 5, 5)
_CHITCHAT = "pip install chitchat-dataset==0.9.0"
_CHATTERBOT = "pip install chatterbot-corpus==1.3.3"


def package_dir(package: str, missing: str) -> pathlib.Path:
    """The directory of an installed package, found without importing it (DataError with the
    `missing` hint if it is not installed)."""
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package} is missing: {missing}")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def _checked_conversation(conv, where: str) -> list[str]:
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: a conversation must be a non-empty list of strings")
    turns = []
    for j, turn in enumerate(conv):
        if not isinstance(turn, str):
            raise DataError(f"{where}, turn {j}: expected a string, got {type(turn).__name__}")
        turns.append(" ".join(turn.split()))  # LCCC separates characters by spaces; any works
    if not any(turns):
        raise DataError(f"{where}: every turn is empty")
    return turns


def read_lccc(path) -> list[list[str]]:
    """Conversations of an LCCC-format JSON file; DataError naming the file (and the record)
    for a missing file, invalid JSON, an empty list or a malformed conversation."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such conversation file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of conversations, got {type(data).__name__}")
    if not data:
        raise DataError(f"{path}: the file holds no conversation")
    return [_checked_conversation(c, f"{path}: record {i}") for i, c in enumerate(data)]


def chitchat_conversations() -> dict[str, list[str]]:
    """Conversation id -> turns (a turn: one sender's consecutive messages joined by " ")."""
    path = package_dir("chitchat_dataset", _CHITCHAT) / "dataset.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    out = {}
    for cid, conv in data.items():
        turns = [" ".join(" ".join(m["text"].split()) for m in turn) for turn in conv["messages"]]
        # An empty turn (12 in the file) is kept: dropping it would put two turns of one
        # speaker side by side and flip the segment of every later turn.
        out[cid] = _checked_conversation(turns, f"{path}: conversation {cid}")
    return out


def chatterbot_chinese() -> list[list[str]]:
    """The conversations of chatterbot-corpus' data/chinese/*.yml files, in file order."""
    import yaml

    directory = package_dir("chatterbot_corpus", _CHATTERBOT) / "data" / "chinese"
    out = []
    for path in sorted(directory.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for i, conv in enumerate(doc.get("conversations") or []):
            out.append(_checked_conversation([str(t) for t in conv], f"{path}: record {i}"))
    if not out:
        raise DataError(f"{directory}: no conversations found; {_CHATTERBOT}")
    return out


def _keyed(source: str):
    """(split key, turns) of every conversation of `source`."""
    if source == "chitchat":
        return list(chitchat_conversations().items())
    if source == "chatterbot_zh":
        return [(json.dumps(c, ensure_ascii=False), c) for c in chatterbot_chinese()]
    if source.startswith("lccc:"):
        return [(json.dumps(c, ensure_ascii=False), c) for c in read_lccc(source[5:])]
    raise DataError(f"data.source={source!r}: allowed {', '.join(SOURCES)}")


def split_conversations(source: str) -> dict[str, list[list[str]]]:
    """Split name -> conversations (lists of turns) of `source`, read in memory."""
    out = {name: [] for name in chinese.SPLITS}
    for key, conv in _keyed(source):
        out[chinese.split_of(key, SPLIT_PERCENTS)].append(conv)
    return out


class _Conversations(builders._LocalBuilder):
    """{"key": the split key, "turns": [str]} per conversation, split by the key's hash."""

    VERSION = tfds.core.Version("1.0.0")
    SOURCE = ""

    def _info(self):
        return self.dataset_info_from_configs(
            description=f"multi-turn conversations of {self.SOURCE} (research.data.dialogue)",
            features=tfds.features.FeaturesDict(
                {"key": tfds.features.Text(), "turns": tfds.features.Sequence(tfds.features.Text())}
            ),
        )

    def _split_generators(self, dl_manager):
        by_split = {name: [] for name in chinese.SPLITS}
        for key, conv in _keyed(self.SOURCE):
            by_split[chinese.split_of(key, SPLIT_PERCENTS)].append((key, conv))
        return {name: self._generate_examples(items) for name, items in by_split.items()}

    def _generate_examples(self, items):
        # A conversation may occur twice (chatterbot repeats some): the position makes the
        # record key unique, the text's hash still chooses the split.
        for i, (key, turns) in enumerate(items):
            yield f"{i:07d}-{chinese._key(key)[:16]}", {"key": key, "turns": turns}


class ChitchatConversations(_Conversations):
    SOURCE = "chitchat"


class ChatterbotChinese(_Conversations):
    SOURCE = "chatterbot_zh"


_BUILDERS = {"chitchat": ChitchatConversations, "chatterbot_zh": ChatterbotChinese}


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def conversations(source: str, data_dir: str) -> dict[str, list[list[str]]]:
    """Split name -> conversations (lists of turns) of `source`: the package sources from our
    tfds builders in data_dir (built on first use), an LCCC file read directly."""
    if source not in _BUILDERS:
        return split_conversations(source)
    splits = chinese._built_splits(_BUILDERS[source], data_dir)
    return {
        name: [[_text(t) for t in split[i]["turns"]] for i in range(len(split))]
        for name, split in zip(chinese.SPLITS, splits, strict=True)
    }


def layout(turns: list[list[int]], *, cls_id: int, sep_id: int, first_segment: int = 0):
    """[CLS] t_0 [SEP] t_1 [SEP] ... as (tokens, segments) int32 arrays: turn k and its [SEP]
    get segment (first_segment + k) % 2, [CLS] gets first_segment."""
    tokens, segments = [cls_id], [first_segment]
    for k, ids in enumerate(turns):
        seg = (first_segment + k) % 2
        tokens += [*ids, sep_id]
        segments += [seg] * (len(ids) + 1)
    return np.asarray(tokens, np.int32), np.asarray(segments, np.int32)


def newest_turns(turns: list[list[int]], budget: int) -> tuple[list[list[int]], int]:
    """The newest whole turns whose tokens plus one [SEP] each fit `budget`, and how many older
    turns were dropped. If even the newest turn does not fit, its last budget - 1 tokens."""
    kept, used = [], 0
    for ids in reversed(turns):
        if used + len(ids) + 1 > budget:
            break
        kept.insert(0, ids)
        used += len(ids) + 1
    if not kept and turns:
        return [turns[-1][-(budget - 1) :] if budget > 1 else []], len(turns) - 1
    return kept, len(turns) - len(kept)


def conversation_windows(turns: list[list[int]], seq_len: int) -> list[tuple[int, int]]:
    """Non-overlapping (start, end) turn ranges whose rows [CLS] t_start [SEP] ... t_end-1 [SEP]
    fit seq_len + 1 tokens (inputs and targets are the row shifted by one); a turn longer than
    the row alone is a window of its own (cut when laid out)."""
    windows, start, used = [], 0, 1
    for k, ids in enumerate(turns):
        need = len(ids) + 1
        if used + need > seq_len + 1 and k > start:
            windows.append((start, k))
            start, used = k, 1
        used += need
    windows.append((start, len(turns)))
    return windows


def chat_example(
    turns: list[list[int]],
    *,
    first_segment: int,
    seq_len: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> dict:
    """One LM row of whole turns: inputs, targets, segment_ids [seq_len] int32 and weights
    [seq_len] float32 (1 on every real next-token prediction). A row longer than seq_len + 1 is
    cut at its end (only a single overlong turn is)."""
    tokens, segments = layout(turns, cls_id=cls_id, sep_id=sep_id, first_segment=first_segment)
    tokens, segments = tokens[: seq_len + 1], segments[: seq_len + 1]
    n = len(tokens) - 1  # predictions in this row
    out = {k: np.full(seq_len, pad_id, np.int32) for k in ("inputs", "targets")}
    out["segment_ids"] = np.zeros(seq_len, np.int32)
    out["inputs"][:n], out["targets"][:n] = tokens[:-1], tokens[1:]
    out["segment_ids"][:n] = segments[:-1]
    out["weights"] = (np.arange(seq_len) < n).astype(np.float32)
    return out


def encode_conversation(vocab, turns: list[str]) -> list[list[int]]:
    """Each turn's token ids."""
    return [vocab.encode(t) for t in turns]


def conversation_rows(vocab, conversations, seq_len: int) -> list[dict]:
    """Every conversation cut into rows of whole turns (`conversation_windows`)."""
    rows = []
    for conv in conversations:
        ids = encode_conversation(vocab, conv)
        for start, end in conversation_windows(ids, seq_len):
            rows.append(
                chat_example(
                    ids[start:end],
                    first_segment=start % 2,
                    seq_len=seq_len,
                    cls_id=vocab.cls_id,
                    sep_id=vocab.sep_id,
                    pad_id=vocab.pad_id,
                )
            )
    return rows


def eval_contexts(vocab, conversations, *, n: int, seq_len: int, reply_tokens: int):
    """Up to n held-out contexts (one per conversation with >= 2 turns, in order): the turns
    before its last, newest first kept (left truncation) to leave room for a reply; returns
    ([n, P] right-padded prompts, lengths [n], segments [n, P], reply segment [n])."""
    prompts, segs, next_seg = [], [], []
    for conv in conversations:
        if len(prompts) == n:
            break
        if len(conv) < 2:
            continue
        ids = encode_conversation(vocab, conv[:-1])
        kept, dropped = newest_turns(ids, seq_len - reply_tokens - 1)
        first = dropped % 2
        tokens, segments = layout(
            kept, cls_id=vocab.cls_id, sep_id=vocab.sep_id, first_segment=first
        )
        prompts.append(tokens)
        segs.append(segments)
        next_seg.append((first + len(kept)) % 2)
    if not prompts:
        return None
    width = max(len(p) for p in prompts)
    out = np.full((len(prompts), width), vocab.pad_id, np.int32)
    seg = np.zeros((len(prompts), width), np.int32)
    for i, (p, s) in enumerate(zip(prompts, segs, strict=True)):
        out[i, : len(p)], seg[i, : len(s)] = p, s
    return out, np.array([len(p) for p in prompts], np.int32), seg, np.array(next_seg, np.int32)
