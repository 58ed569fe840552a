"""The `seq2seq` section of a config, typed: layout, remedy and their strengths, evaluation."""

import dataclasses

from research.data.seq2seq import LAYOUTS
from research.ops import exposure_bias, rewards
from research.ops.checks import check_positive_field, is_positive_int
from research.tasks.seq2seq.remedies import REMEDIES

PENALTY_FORMS = ("position", "table")  # research.tasks.seq2seq.remedies.Context.delta_shape


@dataclasses.dataclass(frozen=True)
class Seq2seqConfig:
    """Every remedy reduces to plain teacher forcing at strength 0 (tests)."""

    layout: str = "encdec"  # encdec (EncoderDecoder) | unilm (Bert with the UniLM mask)
    # The pretrained BERT a unilm run starts from, with its vocabulary ([CLS] source [SEP]
    # target [SEP]): "" (random) | workdir:PATH (an mlm run) | hf:PATH (research.tasks.bert).
    init: str = ""
    src_len: int = 24  # padded source length
    tgt_len: int = 25  # padded target length, EOS included
    remedy: str = "none"  # one of REMEDIES (research.tasks.seq2seq.remedies)
    label_smoothing: float = 0.0
    # random_replacement: share of sequences perturbed, share of their tokens replaced, and
    # where replacements come from (target: the sequence's own tokens | vocab).
    replace_sample_prob: float = 0.5
    replace_token_prob: float = 0.3
    replace_pool: str = "target"
    # gradient_penalty: CE + eps * sum |dCE/de|^2, e = each input position's token embedding
    # (penalty_form "position", the note's penalty; eps 0.5 as its reference code), or e = a
    # row of the embedding table, occurrences of a token summed first ("table", the old form).
    penalty_epsilon: float = 0.5
    penalty_form: str = "position"
    fgm_epsilon: float = 0.5  # fgm: norm of the adversarial perturbation of the embedding table
    # scheduled_sampling: teacher-forcing probability schedule (inverse_sigmoid | linear |
    # exponential | constant) with its constants, extra passes, sampling instead of argmax.
    ss_schedule: str = "inverse_sigmoid"
    ss_k: float = 300.0
    ss_floor: float = 0.5
    ss_slope: float = 1e-4
    ss_passes: int = 1
    ss_sample: bool = False
    seq_weight: float = 0.5  # scst / mrt: (1 - w) CE + w sequence loss
    reward: str = "rougeL"  # scst / mrt reward: one of research.ops.rewards.REWARDS
    sample_temperature: float = 1.0  # scst / mrt sampling temperature
    mrt_samples: int = 4  # mrt: samples per source
    mrt_alpha: float = 0.05  # mrt: sharpness of the sample distribution
    eval_beams: tuple[int, ...] = (1, 2, 3)  # beam sizes decoded at evaluation (1 = greedy)

    def __post_init__(self):
        choices = {
            "layout": LAYOUTS,
            "remedy": tuple(REMEDIES),
            "reward": rewards.REWARDS,
            "penalty_form": PENALTY_FORMS,
            "replace_pool": exposure_bias.POOLS,
            "ss_schedule": exposure_bias.SCHEDULES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: allowed {', '.join(allowed)}")
        for name in ("src_len", "tgt_len", "ss_passes", "mrt_samples"):
            check_positive_field(name, getattr(self, name))
        if not 0 <= self.seq_weight <= 1:
            raise ValueError(f"seq_weight={self.seq_weight}: must be in [0, 1]")
        # The ops check these too, but only while the step is traced: here they fail first.
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing={self.label_smoothing!r}: must be in [0, 1)")
        for name in ("replace_sample_prob", "replace_token_prob", "ss_floor"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be in [0, 1]")
        for name in ("sample_temperature", "mrt_alpha", "ss_slope"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be > 0")
        for name in ("penalty_epsilon", "fgm_epsilon"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 0")
        k = self.ss_k
        k_ok = {"constant": 0 <= k <= 1, "exponential": 0 < k < 1, "inverse_sigmoid": k >= 1}
        if not k_ok.get(self.ss_schedule, True):
            raise ValueError(
                f"ss_k={k!r} does not fit ss_schedule={self.ss_schedule!r}: constant takes a "
                "probability, exponential (0, 1), inverse_sigmoid >= 1"
            )
        if not all(is_positive_int(b) for b in self.eval_beams):
            raise ValueError(f"eval_beams={self.eval_beams!r}: must be positive ints (beam sizes)")
