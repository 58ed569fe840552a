"""Multi-query associative recall (Zoology; docs/research_notes.md section 4) with any attention.

    python -m research.main --config=configs/mqar.py --workdir=/tmp/seqlab/mqar
    python -m research.main --config=configs/mqar.py:smoke --workdir=/tmp/seqlab/mqar_smoke
    python -m research.main --config=configs/mqar.py --workdir=/tmp/seqlab/mqar_taylor \
        --config.model.attention=linear --config.model.feature_map=taylor --config.model.d_model=128

Eval accuracy is recall at the query positions (the only positions with weight).
"""

from ml_collections import ConfigDict

from configs import common


def get_config(preset: str = "") -> ConfigDict:
    c = common.base_config()
    c.task = "mqar"
    c.data.update(
        source="mqar",
        seq_len=256,
        vocab_size=8192,
        num_kv_pairs=16,
        train_examples=100_000,
        test_examples=1_000,
    )
    c.model.update(
        d_model=64, num_heads=2, num_layers=2, d_ff=256, positions="rotary", attention="softmax"
    )
    c.update(
        batch_size=64,
        num_train_steps=3000,
        eval_every_steps=500,
        eval_steps=10,
        checkpoint_every_steps=1000,
        log_every_steps=100,
    )
    c.optimizer.update(learning_rate=3e-3, warmup_steps=100, weight_decay=0.1)
    if preset == "smoke":
        c.data.update(
            seq_len=32, vocab_size=64, num_kv_pairs=4, train_examples=512, test_examples=64
        )
        c.model.update(d_model=32, d_ff=64)
        c.update(
            batch_size=16,
            num_train_steps=8,
            eval_every_steps=4,
            eval_steps=2,
            checkpoint_every_steps=4,
            log_every_steps=1,
        )
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/mqar.py; allowed: smoke")
    return c
