"""Exposure-bias remedies compared on one seq2seq task, several seeds (docs/research_notes.md
section 1; docs/exposure_bias.md).

    python -m research.main --config=configs/exposure_bias.py --workdir=/tmp/seqlab/exposure
    python -m research.main --config=configs/exposure_bias.py:smoke --workdir=/tmp/seqlab/eb_smoke
    # the gradient penalty's epsilon swept on the synthetic task:
    python -m research.main --config=configs/exposure_bias.py:penalty_sweep \
        --workdir=/tmp/seqlab/eb_eps
    # the note's setting: UniLM from seqlab's Chinese MLM on Chinese news titles
    python -m research.main --config=configs/exposure_bias.py:zh --workdir=/tmp/seqlab/eb_zh \
        --config.init=workdir:/tmp/seqlab/mlm    # configs/mlm.py's run; "" pretrains it first
    python -m research.main --config=configs/exposure_bias.py:zh_smoke --workdir=/tmp/seqlab/eb_zs
    python -m research.main --config=configs/exposure_bias.py --workdir=/tmp/seqlab/eb_csl \
        --config.base.data.source=jsonl:/data/csl.jsonl --config.base.data.vocab_size=8000 \
        --config.base.seq2seq.layout=unilm --config.base.seq2seq.src_len=256 \
        --config.base.seq2seq.tgt_len=48 --config.base.num_train_steps=20000

Variants: baseline (teacher forcing), random_replacement, gradient_penalty, fgm,
scheduled_sampling, scst, mrt (research.tasks.seq2seq.REMEDIES); each is a config value of
configs/seq2seq.py, which this sweep copies as `base`. gradient_penalty is the note's
per-position form (`base.seq2seq.penalty_form=position`, the default; `table` is the form
docs/exposure_bias.md's table was measured with). `penalty_epsilons` (non-empty) replaces the
gradient_penalty variant by one variant per epsilon, named gradient_penalty_eps{EPS}.

Why the default task: sorting digit strings (sources of 16 to 40 digits). The sorted output is
fixed by the count of each digit, so the decoder learns to read how many copies of the current
digit it has already written; under teacher forcing that count is always right, but in a
free-running decode one early extra or missing digit shifts every later position, so one mistake
derails the rest of the output: the failure mode exposure bias names. Long outputs (up to 41
tokens with EOS) make such mistakes likely enough to measure. Defaults take about 11 minutes on
a 2-core CPU.

zh: the note's setting at CPU scale. A UniLM (seq2seq.layout=unilm) starts from seqlab's Chinese
MLM (configs/mlm.py: 256 x 4 layers, one token per character; `init`, or "" to pretrain it first
in WORKDIR/pretrain, about 22 minutes more) and learns news text -> title on inews_titles
(research/data/inews.py; web news titles, not CSL's paper titles): baseline, random
replacement, the per-position gradient penalty at the note's epsilon 0.5; beams 1-3, Rouge and
BLEU on characters, 2 seeds. Its budget (steps, batch, eval size) was sized from step times
measured on the 2-core VM; docs/exposure_bias.md gives the estimate, the measured run and its
table (at this budget the model has not yet learned to title: Rouge-L about 1.5).
"""

from ml_collections import ConfigDict

from configs import mlm, seq2seq

PRESETS = ("smoke", "penalty_sweep", "zh", "zh_smoke")


def get_config(preset: str = "") -> ConfigDict:
    c = ConfigDict()
    c.experiment = "exposure_bias"  # research.experiments.EXPERIMENTS
    c.variants = (
        "baseline",
        "random_replacement",
        "gradient_penalty",
        "fgm",
        "scheduled_sampling",
        "scst",
        "mrt",
    )
    c.seeds = (0, 1, 2)  # each seed: parameters, data order and the synthetic dataset
    c.finetune_steps = 100  # SCST / MRT train the last N steps from the baseline's checkpoint
    # Non-empty: one gradient_penalty variant per epsilon (gradient_penalty_eps0.1, ...).
    c.penalty_epsilons = ()
    c.base = seq2seq.get_config()
    c.base.data.update(seq2seq_task="sort", min_len=16, max_len=40)
    c.base.seq2seq.update(src_len=40, tgt_len=41)
    c.base.update(
        num_train_steps=300, eval_every_steps=300, eval_steps=8, checkpoint_every_steps=300
    )
    if preset == "smoke":
        c.seeds = (0,)
        c.finetune_steps = 2
        c.base = seq2seq.get_config("smoke")
        c.base.update(eval_every_steps=6)
    elif preset == "penalty_sweep":  # the default task, the penalty at four strengths
        c.variants = ("baseline", "gradient_penalty")
        c.penalty_epsilons = (0.05, 0.1, 0.2, 0.5)
    elif preset in ("zh", "zh_smoke"):
        _chinese(c, smoke=preset == "zh_smoke")
    elif preset:
        raise ValueError(
            f"unknown preset {preset!r} for configs/exposure_bias.py; allowed: {', '.join(PRESETS)}"
        )
    return c


def _chinese(c: ConfigDict, *, smoke: bool) -> None:
    """UniLM from the Chinese MLM on inews_titles (text -> title), the note's three columns."""
    c.variants = ("baseline", "random_replacement", "gradient_penalty")
    c.seeds = (0, 1)
    c.finetune_steps = 100  # no SCST / MRT here; the baseline also keeps its step-100 checkpoint
    # The pretrained BERT: workdir:PATH (configs/mlm.py's run) | hf:PATH | "" = train `pretrain`
    # (configs/mlm.py) in WORKDIR/pretrain first. It also sets base.seq2seq.init.
    c.init = ""
    c.pretrain = mlm.get_config("smoke" if smoke else "")
    b = c.base = seq2seq.get_config()
    b.data.update(source="inews_titles")  # encoded with the BERT's character vocabulary
    # [CLS] text (86 characters) [SEP] title (39 + [SEP]) = 128 tokens, the MLM's row length;
    # 95% of the titles have at most 36 characters.
    b.seq2seq.update(
        layout="unilm",
        src_len=87,
        tgt_len=40,
        eval_beams=(1, 2, 3),
        penalty_epsilon=0.5,
        penalty_form="position",
    )
    b.model.update(dropout=0.0)  # the architecture is the pretrained model's
    # Sized from measured step times (docs/exposure_bias.md, "Chinese titles"): 200 steps x 16
    # = 3,200 of the 5,298 training pairs per run, 192 validation pairs decoded with beams 1, 2
    # and 3; about 37 minutes on the slower 2-core box given the MLM, 59 with its pretraining.
    b.update(
        batch_size=16,
        num_train_steps=200,
        eval_every_steps=200,
        eval_steps=12,
        checkpoint_every_steps=200,
        log_every_steps=25,
    )
    b.optimizer.update(learning_rate=5e-4, warmup_steps=20, weight_decay=0.01)
    if smoke:
        c.seeds = (0,)
        c.finetune_steps = 1
        b.seq2seq.update(src_len=23, tgt_len=8, eval_beams=(1, 2))
        b.update(
            batch_size=8,
            num_train_steps=3,
            eval_every_steps=3,
            eval_steps=1,
            checkpoint_every_steps=3,
            log_every_steps=1,
        )
        b.optimizer.update(warmup_steps=1)
