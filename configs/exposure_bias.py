"""Exposure-bias remedies compared on one seq2seq task, 3 seeds (docs/research_notes.md section 1).

    python -m research.main --config=configs/exposure_bias.py --workdir=/tmp/seqlab/exposure
    python -m research.main --config=configs/exposure_bias.py:smoke --workdir=/tmp/seqlab/eb_smoke
    python -m research.main --config=configs/exposure_bias.py --workdir=/tmp/seqlab/eb_csl \
        --config.base.data.source=jsonl:/data/csl.jsonl --config.base.data.vocab_size=8000 \
        --config.base.seq2seq.layout=unilm --config.base.seq2seq.src_len=256 \
        --config.base.seq2seq.tgt_len=48 --config.base.num_train_steps=20000

Variants: baseline (teacher forcing), random_replacement, gradient_penalty, fgm,
scheduled_sampling, scst, mrt (research.tasks.seq2seq.REMEDIES); each is a config value of
configs/seq2seq.py, which this sweep copies as `base`. gradient_penalty is the note's
per-position form (`base.seq2seq.penalty_form=position`, the default; `table` is the form
docs/exposure_bias.md's table was measured with).

Why this task: sorting digit strings (sources of 16 to 40 digits). The sorted output is fixed
by the count of each digit, so the decoder learns to read how many copies of the current digit
it has already written; under teacher forcing that count is always right, but in a free-running
decode one early extra or missing digit shifts every later position, so one mistake derails the
rest of the output: the failure mode exposure bias names. Long outputs (up to 41 tokens with
EOS) make such mistakes likely enough to measure. Defaults take about 11 minutes on a 2-core CPU.
"""

from ml_collections import ConfigDict

from configs import seq2seq


def get_config(preset: str = "") -> ConfigDict:
    c = ConfigDict()
    c.experiment = "exposure_bias"  # research.experiments.EXPERIMENTS
    c.variants = ("baseline", "random_replacement", "gradient_penalty", "fgm", "scheduled_sampling",
                  "scst", "mrt")  # fmt: skip
    c.seeds = (0, 1, 2)  # each seed: parameters, data order and the synthetic dataset
    c.finetune_steps = 100  # SCST / MRT train the last N steps from the baseline's checkpoint
    c.base = seq2seq.get_config()
    c.base.data.update(seq2seq_task="sort", min_len=16, max_len=40)
    c.base.seq2seq.update(src_len=40, tgt_len=41)
    c.base.update(num_train_steps=300, eval_every_steps=300, eval_steps=8,
                  checkpoint_every_steps=300)  # fmt: skip
    if preset == "smoke":
        c.seeds = (0,)
        c.finetune_steps = 2
        c.base = seq2seq.get_config("smoke")
        c.base.update(eval_every_steps=6)
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/exposure_bias.py; allowed: smoke")
    return c
