import json

import numpy as np
import pytest

from research.data import DataError, chinese, dialogue

CLS, SEP, PAD = 2, 3, 0


def test_layout_segments_alternate_and_sep_closes_each_turn():
    tokens, segments = dialogue.layout([[10, 11], [12], [13, 14, 15]], cls_id=CLS, sep_id=SEP)
    assert tokens.tolist() == [CLS, 10, 11, SEP, 12, SEP, 13, 14, 15, SEP]
    assert segments.tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    _, segments = dialogue.layout([[10], [12]], cls_id=CLS, sep_id=SEP, first_segment=1)
    assert segments.tolist() == [1, 1, 1, 0, 0]


def test_newest_turns_keeps_whole_newest_turns():
    turns = [[1] * 5, [2] * 3, [3] * 2]
    assert dialogue.newest_turns(turns, 7) == ([[2] * 3, [3] * 2], 1)  # 4 + 3 tokens
    assert dialogue.newest_turns(turns, 6) == ([[3] * 2], 2)  # [2]*3 + SEP no longer fits
    assert dialogue.newest_turns(turns, 100) == (turns, 0)
    assert dialogue.newest_turns(turns, 2) == ([[3]], 2)  # the newest turn's tail alone


def test_windows_cover_every_turn_once_and_fit():
    rng = np.random.default_rng(0)
    turns = [list(range(int(n))) for n in rng.integers(1, 30, 40)]
    windows = dialogue.conversation_windows(turns, seq_len=64)
    assert windows[0][0] == 0 and windows[-1][1] == len(turns)
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:], strict=False))
    for start, end in windows:
        size = 1 + sum(len(t) + 1 for t in turns[start:end])
        assert size <= 65 or end - start == 1


def test_chat_example_loss_on_every_token_of_every_turn():
    turns = [[10, 11], [12], [13]]
    ex = dialogue.chat_example(
        turns, first_segment=1, seq_len=10, cls_id=CLS, sep_id=SEP, pad_id=PAD
    )
    row = [CLS, 10, 11, SEP, 12, SEP, 13, SEP]
    assert ex["inputs"][:7].tolist() == row[:-1] and ex["targets"][:7].tolist() == row[1:]
    assert ex["weights"].tolist() == [1.0] * 7 + [0.0] * 3
    assert ex["segment_ids"][:7].tolist() == [1, 1, 1, 1, 0, 0, 1]
    assert (ex["inputs"][7:] == PAD).all()


def test_lccc_reader_and_errors(tmp_path):
    good = tmp_path / "lccc.json"
    good.write_text(
        json.dumps([["你 好", "你好 啊"], ["在 吗", "在", "好 的"]], ensure_ascii=False)
    )
    assert dialogue.read_lccc(good) == [["你 好", "你好 啊"], ["在 吗", "在", "好 的"]]
    cases = {
        "empty.json": "[]",
        "bad.json": "{not json",
        "obj.json": '{"a": 1}',
        "rec.json": '[["a", "b"], ["c", 3]]',
        "blank.json": '[["a"], []]',
    }
    expected = {
        "empty.json": "holds no conversation",
        "bad.json": "not a JSON file",
        "obj.json": "expected a JSON list",
        "rec.json": "record 1, turn 1",
        "blank.json": "record 1: a conversation must be",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=expected[name]) as e:
            dialogue.read_lccc(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="no such conversation file"):
        dialogue.read_lccc(tmp_path / "missing.json")


def test_chitchat_split_by_conversation():
    convs = dialogue.chitchat_conversations()
    assert len(convs) == 7168
    splits = dialogue.split_conversations("chitchat")
    assert sum(len(v) for v in splits.values()) == 7168
    cid, turns = next(iter(convs.items()))
    assert turns in splits[chinese.split_of(cid, dialogue.SPLIT_PERCENTS)]
    assert all(t for conv in splits["train"][:100] for t in conv)  # no empty turn


def test_chatterbot_chinese():
    convs = dialogue.chatterbot_chinese()
    assert len(convs) > 50 and ["你好", "嗨"] in convs


def test_package_sources_are_tfds_builders_with_the_same_splits(tmp_path):
    built = dialogue.conversations("chatterbot_zh", str(tmp_path))
    memory = dialogue.split_conversations("chatterbot_zh")
    for name in memory:  # the same conversations in each split (tfds stores them shuffled)
        assert sorted(built[name]) == sorted(memory[name])
    files = sorted(tmp_path.rglob("*.array_record*"))
    assert files and {f.name.split(".")[0].split("-")[1] for f in files} >= {"train", "test"}
    stamps = [f.stat().st_mtime_ns for f in files]
    assert dialogue.conversations("chatterbot_zh", str(tmp_path)) == built  # reused, not rebuilt
    assert [f.stat().st_mtime_ns for f in files] == stamps
