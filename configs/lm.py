"""GPT-style LM on the Python standard library's own source code (present on every machine).

    python -m research.main --config=configs/lm.py --workdir=/tmp/seqlab/lm
    python -m research.main --config=configs/lm.py:smoke --workdir=/tmp/seqlab/lm_smoke
    python -m research.main --config=configs/lm.py --workdir=/tmp/seqlab/lm_linear \
        --config.model.attention=linear --config.model.feature_map=taylor
    ./launch/multiprocess_cpu.sh 2 --config=configs/lm.py:smoke --workdir=/tmp/seqlab/lm_mp

Other data: --config.data.source=tfds:tiny_shakespeare (catalog, needs internet once, and
TensorFlow for its builder: pip install -e '.[tf]') or --config.data.source=text:/path/to/
corpus.txt (documents separated by blank lines).

Pod presets for TPU (Pallas flash attention, scanned layers; plan them first, figures in
docs/pod_planning.md; on GPUs add --config.model.softmax_implementation=cudnn):

    python -m research.plan --config=configs/lm.py:1b --topology=v5e:16x16
    python -m research.plan --config=configs/lm.py:7b --topology=v5e:16x16
    python -m research.plan --config=configs/lm.py:1b_gdn --topology=v5e:16x16  # Gated DeltaNet
    REPO=... TPU_NAME=... ZONE=... ./launch/tpu_pod.sh --config=configs/lm.py:1b \
        --workdir=gs://BUCKET/lm1b --config.data.source=tfds:NAME \
        --config.data.data_dir=/mnt/shared/data  # a folder every host sees
"""

from ml_collections import ConfigDict

from configs import common


def get_config(preset: str = "") -> ConfigDict:
    c = common.base_config()
    c.task = "lm"
    c.data.source = "stdlib_code"  # stdlib_code | tfds:NAME | text:PATH | jsonl:PATH
    c.data.seq_len = 256
    c.data.vocab_size = 8192  # sentencepiece pieces, trained on the train split on first use
    c.data.small = False  # stdlib_code: first 60 files only (seconds to build)
    c.model.update(
        d_model=256, num_heads=4, num_layers=4, d_ff=1024, positions="rotary", attention="softmax"
    )
    c.update(
        batch_size=16,
        num_train_steps=5000,
        eval_every_steps=500,
        eval_steps=20,
        checkpoint_every_steps=500,
        log_every_steps=50,
    )
    c.optimizer.update(learning_rate=1e-3, warmup_steps=200)
    if preset == "smoke":
        c.data.update(seq_len=32, vocab_size=384, small=True)
        c.model.update(d_model=32, num_heads=2, num_layers=2, d_ff=64)
        c.update(
            batch_size=8,
            num_train_steps=12,
            eval_every_steps=6,
            eval_steps=2,
            checkpoint_every_steps=4,
            log_every_steps=1,
        )
        c.optimizer.update(learning_rate=3e-3, warmup_steps=2)
    elif preset in ("1b", "1b_gdn"):  # 1.3B (d2048 x 24, GPT-3 XL's shape) for v5e-256
        c.data.update(seq_len=2048, vocab_size=32000)
        c.model.update(
            d_model=2048,
            num_heads=16,
            num_layers=24,
            d_ff=8192,
            dtype="bfloat16",
            remat="full",
            softmax_implementation="tpu_flash",
            scan_layers=True,
        )
        if preset == "1b_gdn":  # the same shape with Gated DeltaNet layers (Qwen3-Next's kind);
            # no positional encoding, as fla's GatedDeltaNet: the recurrence orders the tokens
            c.model.update(
                attention="gated_deltanet", positions="none", softmax_implementation="xla"
            )
            # Packed rows keep their documents apart: the state restarts at each document
            # (MaxText's and Levanter's Gated DeltaNet reset nothing)
            c.data.document_boundaries = True
        c.mesh.update(data=16, fsdp=16)
        c.data.shards = 64  # a multiple of v5e-256's 64 hosts: each reads only its records
        c.batch_size = 3072  # 12 x 2048 tokens per chip, MaxText's per-device batch for ~1B
    elif preset == "7b":  # LLaMA-2-7B's shape for v5e-256 (MaxText configs/tpu/v5e/llama2_7b.sh)
        c.data.update(seq_len=2048, vocab_size=32000)
        c.model.update(
            d_model=4096,
            num_heads=32,
            num_layers=32,
            d_ff=11008,
            activation="swiglu",
            use_bias=False,
            dtype="bfloat16",
            remat="save_qkv_proj",
            softmax_implementation="tpu_flash",
            scan_layers=True,
        )
        c.mesh.update(data=1, fsdp=256)
        c.data.shards = 64
        c.batch_size = 1024  # 4 x 2048 tokens per chip
    elif preset:
        raise ValueError(
            f"unknown preset {preset!r} for configs/lm.py; allowed: smoke, 1b, 1b_gdn, 7b"
        )
    return c
