"""The `qagen` section: generation lengths, answer sampling and the question's beam."""

import dataclasses

from research.ops.checks import check_positive_field


@dataclasses.dataclass(frozen=True)
class QagenConfig:
    """The `qagen` section."""

    init: str = ""  # "" (random) | workdir:PATH (an mlm run) | hf:PATH (research.tasks.bert)
    answer_len: int = 8  # longest answer in tokens (longer examples are dropped)
    question_len: int = 64  # longest question in tokens (longer examples are dropped)
    num_answers: int = 4  # k answers sampled per passage
    top_p: float = 0.95  # answer sampling: nucleus mass (the note)
    top_k: int = 0  # answer sampling: keep the k most likely tokens (0 = off; the note's v1: 5)
    temperature: float = 1.0
    beam_size: int = 3  # the question's beam search
    in_passage: bool = True  # keep only sampled answers that are a span of the passage
    eval_examples: int = 128  # held-out (passage, answer) pairs: the question's BLEU-4/ROUGE-L
    eval_passages: int = 64  # held-out passages: the sampled answers' EM / F1

    def __post_init__(self):
        for name in ("answer_len", "question_len", "num_answers", "beam_size"):
            check_positive_field(name, getattr(self, name))
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r}: must be in (0, 1]")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r}: must be an int >= 0 (0 = off)")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature!r}: must be > 0")
        if not isinstance(self.in_passage, bool):
            raise ValueError(f"in_passage={self.in_passage!r}: must be true or false")
        for name in ("eval_examples", "eval_passages"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r}: must be an int >= 0")
