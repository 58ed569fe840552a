"""The former home of the row formats, now one module each (`research.data.shards`, `lm`,
`seq2seq`, `mlm`, `classification`, `cloze`). `array_iterator` stays importable here for the
two tasks that still read it from this module (tasks/chat.py and tasks/qagen.py)."""

from research.data.shards import array_iterator

__all__ = ["array_iterator"]
