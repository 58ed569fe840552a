import collections
import json

import pytest

from research.data import DataError, chinese, qa

LINE = (
    "１２月/t  ３１日/t  ，/w  中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr  "
    "发表/v  讲话/n  。/w  [中央/n  电视台/n]nt  播出/v  了/u  这/r  篇/q  讲话/n  ！/w"
)


def test_parse_and_typed_answer_spans():
    words = qa.parse_tagged_line(LINE)
    assert words[13] == ("中央", "nt]", 0) and words[14] == ("电视台", "nt]", 0)
    assert words[8] == ("江", "nr", -1)
    spans = qa.answer_spans(words)
    got = [("".join(w for w, _, _ in words[a:b]), kind) for a, b, kind in spans]
    assert got == [
        ("１２月３１日", "time"),
        ("中共中央", "organisation"),
        ("江泽民", "person"),
        ("中央电视台", "organisation"),
    ]
    with pytest.raises(DataError, match="line 7: 'oops' is not word/tag"):
        qa.parse_tagged_line("好/a oops", "line 7")


def test_questions_replace_the_answer_in_its_own_sentence():
    examples = {e["answer"]: e for e in qa.line_examples(qa.parse_tagged_line(LINE))}
    passage = "１２月３１日，中共中央总书记、国家主席江泽民发表讲话。中央电视台播出了这篇讲话！"
    assert all(e["passage"] == passage for e in examples.values())
    assert examples["江泽民"]["question"] == "１２月３１日，中共中央总书记、国家主席谁发表讲话？"
    assert (
        examples["１２月３１日"]["question"] == "什么时候，中共中央总书记、国家主席江泽民发表讲话？"
    )
    assert examples["中央电视台"]["question"] == "哪个机构播出了这篇讲话？"
    assert examples["中央电视台"]["type"] == "organisation"


def test_the_peoples_daily_question_set():
    splits = qa.peoples_daily_qa()
    train = splits["train"]
    assert len(train) > 50_000 and 500 < len(splits["test"]) < len(train) // 20
    kinds = collections.Counter(e["type"] for e in train)
    assert set(kinds) == set(qa.INTERROGATIVES) and min(kinds.values()) > 1000
    for e in train[:5000]:
        assert e["answer"] in e["passage"] and e["question"].endswith("？")
        assert qa.INTERROGATIVES[e["type"]] in e["question"]
    held = {e["passage"] for e in splits["test"]}
    assert not held & {e["passage"] for e in train}  # split by passage
    # ... and held out of the MLM pretrained on People's Daily's train split (configs/mlm.py,
    # zh_pretrain): 364 of 386 validation passages were in it.
    pretrain = {t.replace(" ", "") for t in chinese.peoples_daily_splits()["train"]}
    for split in ("validation", "test"):
        assert not {e["passage"] for e in splits[split]} & pretrain, split


def test_answer_offsets_and_single_characters():
    words = qa.parse_tagged_line(LINE + "  他/r  买/v  了/u  一/m  本/q  书/n  。/w")
    examples = qa.line_examples(words)
    for e in examples:
        assert e["passage"][e["answer_start"] :].startswith(e["answer"])
    assert "一" not in {e["answer"] for e in examples}  # one character is no answer
    assert "一" in {e["answer"] for e in qa.line_examples(words, min_chars=1)}


def _squad(contexts_qas):
    paragraphs = [{"context": c, "qas": qas} for c, qas in contexts_qas]
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": paragraphs}]}


def test_squad_json_and_jsonl_readers(tmp_path):
    ok = [
        (
            f"Passage {i} says the answer is blue {i}.",
            [
                {
                    "id": f"q{i}",
                    "question": f"What colour {i}?",
                    "answers": [{"text": f"blue {i}", "answer_start": 28 + len(str(i))}],
                }
            ],
        )
        for i in range(60)
    ]
    ok.append(
        ("Unanswerable.", [{"id": "x", "question": "?", "answers": [], "is_impossible": True}])
    )
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(_squad(ok)))
    splits = qa.qa_sources(f"squad_json:{path}", str(tmp_path))
    assert sum(len(v) for v in splits.values()) == 60 and all(splits.values())
    e = splits["train"][0]
    assert e["passage"][e["answer_start"] :].startswith(e["answer"])
    answer = {"text": "blue", "answer_start": 3}
    bad = _squad([("The sky is blue.", [{"id": "q7", "question": "Colour?", "answers": [answer]}])])
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"question 'q7' \(T\): the answer 'blue' at offset 3 is"):
        qa.qa_sources(f"squad_json:{path}", str(tmp_path))
    no_answers = [{"id": "q8", "question": "Colour?", "answers": []}]  # and not is_impossible
    path.write_text(json.dumps(_squad([("The sky is blue.", no_answers)])))
    with pytest.raises(DataError, match=r"question 'q8' \(T\): no answers"):  # was IndexError
        qa.qa_sources(f"squad_json:{path}", str(tmp_path))
    path.write_text('{"data": [{"no": 1}]}')
    with pytest.raises(DataError, match="not SQuAD format"):
        qa.qa_sources(f"squad_json:{path}", str(tmp_path))
    lines = tmp_path / "webqa.jsonl"
    rows = [
        {"passage": f"第{i}段在北京。", "question": "在哪里？", "answer": "北京"} for i in range(80)
    ]
    lines.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    assert sum(len(v) for v in qa.qa_sources(f"jsonl:{lines}", "").values()) == 80
    for row, match in (
        ({"passage": "", "question": "q", "answer": "a"}, ":2: the passage is empty"),
        (
            {"passage": "abc", "question": "q", "answer": "z"},
            ":2: the answer 'z' is not in its passage",
        ),
        (
            {"passage": "abc", "answer": "a"},
            ":2: a record needs passage, question and answer; missing question",
        ),
    ):
        lines.write_text(json.dumps(rows[0], ensure_ascii=False) + "\n" + json.dumps(row))
        with pytest.raises(DataError, match=match):
            qa.qa_sources(f"jsonl:{lines}", "")
    with pytest.raises(DataError, match="no such file"):
        qa.qa_sources(f"jsonl:{tmp_path / 'missing.jsonl'}", "")
    with pytest.raises(DataError, match="question generation reads peoples_daily, tfds:NAME"):
        qa.qa_sources("csv:x", "")


def test_squad_by_tfds_name_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    def records(split):
        n = 40 if split == "train" else 6
        return [
            {
                "id": f"{split}{i}",
                "title": "t",
                "context": f"In {1900 + i} the fair opened.",
                "question": f"When did fair {i} open?",
                "answers": {"text": [str(1900 + i)], "answer_start": [3]},
            }
            for i in range(n)
        ]

    def as_data_source(self, split, *args, **kwargs):
        return records(split)

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        splits = qa.qa_sources("tfds:squad", str(tmp_path))
    assert len(splits["test"]) == 6 and len(splits["train"]) + len(splits["validation"]) == 40
    want = {
        "passage": "In 1900 the fair opened.",
        "answer": "1900",
        "question": "When did fair 0 open?",
        "answer_start": 3,
    }
    assert splits["test"][0] == want

    def broken(self, split, *args, **kwargs):
        out = records(split)
        out[2]["answers"]["answer_start"] = [10]
        return out

    with (
        tfds.testing.mock_data(as_data_source_fn=broken),
        pytest.raises(
            DataError, match="tfds:squad train record 2: the answer '1902' at offset 10 is not in"
        ),
    ):
        qa.qa_sources("tfds:squad", str(tmp_path))
