"""GELU's tanh and sigmoid approximations in practice (docs/research_notes.md section 2;
docs/gelu.md): the forms, their fitted constants and errors (gelu_forms.png), and configs/lm.py's
model trained with each form for 3 seeds (gelu.csv, gelu.png).

    python -m research.main --config=configs/gelu.py --workdir=/tmp/seqlab/gelu
    python -m research.main --config=configs/gelu.py:smoke --workdir=/tmp/seqlab/gelu_smoke
    python -m research.main --config=configs/gelu.py --workdir=/tmp/seqlab/gelu_big \
        --config.lm.num_train_steps=5000 --config.lm.data.vocab_size=8192 \
        --config.lm.data.small=False

The LM is configs/lm.py's 4-layer model on the standard library's source, made smaller to fit
nine runs in about 20 minutes of a 2-core CPU (width 128 instead of 256, sequence 128, 300
steps, the first 60 files; the full width ran at 0.8 s a step here): the question is whether
the form changes the loss, not how low the loss gets.
"""

from ml_collections import ConfigDict

from configs import lm


def get_config(preset: str = "") -> ConfigDict:
    if preset not in ("", "smoke"):
        raise ValueError(f"unknown preset {preset!r} for configs/gelu.py; allowed: smoke")
    c = ConfigDict()
    c.experiment = "gelu"  # research.experiments.EXPERIMENTS
    c.activations = ("gelu", "gelu_tanh", "gelu_sigmoid")  # exact, tanh form, sigmoid form
    c.seeds = (0, 1, 2)
    c.lm = lm.get_config(preset)
    if preset == "smoke":
        c.seeds = (0,)
    elif not preset:
        c.lm.data.update(seq_len=128, vocab_size=1024, small=True)
        c.lm.model.update(d_model=128, d_ff=512)
        c.lm.update(
            num_train_steps=300,
            eval_every_steps=300,
            checkpoint_every_steps=300,
            eval_steps=20,
            log_every_steps=50,
        )
        c.lm.optimizer.update(warmup_steps=30)
    return c
