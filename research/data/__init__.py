"""Data: local tfds builders (array_record), sentencepiece tokenizers, grain pipelines."""


class DataError(ValueError):
    """A data source or tokenizer that cannot be used as configured; printed on one line."""
