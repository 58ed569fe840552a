"""Training tasks behind one interface (`research.tasks.base.Task`); the loop knows none by name.

lm        next-token LM on text (DecoderLM)
mqar      multi-query associative recall (DecoderLM)
seq2seq   EncoderDecoder or UniLM Bert, with one exposure-bias remedy
mlm       masked-LM pretraining of a Bert (whole-word masking)
classify  a Bert classifier on [CLS], from a pretrained MLM
pet       PET: classification as a cloze task scored by the MLM (zero/few-shot, semi-supervised)
theseus   BERT-of-Theseus: k successor layers replace a frozen classifier's modules
chat      DialoGPT-style LM over whole multi-turn conversations (DecoderLM with speaker segments)
qagen     question generation: [CLS] passage [SEP] answer [SEP] question [SEP] (UniLM Bert)
"""

from research.tasks.base import Task, TaskData
from research.tasks.chat import ChatTask
from research.tasks.classify import ClassifyTask
from research.tasks.lm import LmTask, lm_loss
from research.tasks.mlm import MlmTask
from research.tasks.mqar import MqarTask
from research.tasks.pet import PetTask
from research.tasks.qagen import QagenTask
from research.tasks.seq2seq import Seq2seqTask
from research.tasks.theseus import TheseusTask

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        LmTask(),
        MqarTask(),
        Seq2seqTask(),
        MlmTask(),
        ClassifyTask(),
        PetTask(),
        TheseusTask(),
        ChatTask(),
        QagenTask(),
    )
}


def get(name: str) -> Task:
    """The registered task called `name` (ValueError naming the allowed ones otherwise)."""
    if name not in TASKS:
        raise ValueError(f"task={name!r}: allowed {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Task", "TaskData", "get", "lm_loss"]
