import collections

import pytest

from research.data import DataError, qa

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
