"""Seq2seq with one exposure-bias remedy (docs/research_notes.md section 1; docs/exposure_bias.md),
EncoderDecoder or UniLM BERT.

    python -m research.main --config=configs/seq2seq.py --workdir=/tmp/seqlab/s2s
    python -m research.main --config=configs/seq2seq.py:smoke --workdir=/tmp/seqlab/s2s_smoke
    python -m research.main --config=configs/seq2seq.py --workdir=/tmp/seqlab/s2s_gp \
        --config.seq2seq.remedy=gradient_penalty --config.seq2seq.layout=unilm
    python -m research.main --config=configs/seq2seq.py --workdir=/tmp/seqlab/csl \
        --config.data.source=jsonl:/data/csl.jsonl --config.data.vocab_size=8000 \
        --config.seq2seq.src_len=256 --config.seq2seq.tgt_len=48
    # UniLM from seqlab's Chinese MLM (or hf:PATH), with its character vocabulary:
    python -m research.main --config=configs/seq2seq.py --workdir=/tmp/seqlab/s2s_zh \
        --config.seq2seq.layout=unilm --config.seq2seq.init=workdir:/tmp/seqlab/mlm \
        --config.data.source=inews_titles --config.seq2seq.src_len=87 --config.seq2seq.tgt_len=40

Eval reports teacher-forced loss/accuracy and, from decodes with beam 1/2/3, Rouge-L/1/2 F1,
corpus BLEU and the note's mean sentence BLEU, x100, on characters for CJK text and words
otherwise (research.tasks.seq2seq.metrics.text_scores), plus the share of exact matches.
The gradient penalty is the note's per-position form by default
(`--config.seq2seq.penalty_form=table` for the older, per-token-summed one).
With seq2seq.init the architecture, weights and vocabulary are the pretrained BERT's (rows
[CLS] source [SEP] target [SEP]); the model section then sets only dropout, dtype, scan, remat
and the softmax kernel.
"""

from ml_collections import ConfigDict

from configs import common
from research.config import section_defaults
from research.tasks.seq2seq import Seq2seqConfig


def get_config(preset: str = "") -> ConfigDict:
    c = common.base_config()
    c.task = "seq2seq"
    c.data.update(
        source="seq2seq_synthetic",
        seq2seq_task="sort",
        min_len=8,
        max_len=24,
        train_examples=20_000,
        test_examples=512,
        seq_len=64,
        vocab_size=8000,
    )
    # research.tasks.seq2seq.Seq2seqConfig documents every key: layout, lengths, the remedy and
    # its strengths, eval_beams.
    c.seq2seq = section_defaults(Seq2seqConfig)
    c.model.update(
        d_model=64, num_heads=4, num_layers=2, d_ff=256, positions="rotary", attention="softmax"
    )
    c.update(
        batch_size=32,
        num_train_steps=600,
        eval_every_steps=600,
        eval_steps=8,
        checkpoint_every_steps=600,
        log_every_steps=50,
    )
    c.optimizer.update(learning_rate=3e-3, warmup_steps=50, weight_decay=0.0)
    if preset == "smoke":
        c.data.update(min_len=3, max_len=6, train_examples=256, test_examples=32)
        c.seq2seq.update(src_len=6, tgt_len=7, eval_beams=(1, 2))
        c.model.update(d_model=32, d_ff=64, num_heads=2)
        c.update(
            batch_size=8,
            num_train_steps=6,
            eval_every_steps=3,
            eval_steps=2,
            checkpoint_every_steps=3,
            log_every_steps=1,
        )
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/seq2seq.py; allowed: smoke")
    return c
