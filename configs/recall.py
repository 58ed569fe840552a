"""The recall study: MQAR accuracy against decode-state size, softmax beside the linear, gated
and delta-rule kinds (Zoology's protocol; Based's trade-off plot; docs/linear_vs_softmax.md).

    python -m research.main --config=configs/recall.py --workdir=/tmp/seqlab/recall
    python -m research.main --config=configs/recall.py:zoology --workdir=gs://.../recall
    python -m research.main --config=configs/recall.py:smoke --workdir=/tmp/seqlab/recall_smoke

Writes recall.csv, recall_runs.csv and recall.png into the workdir and prints the table; each
point's run lives in workdir/runs/NAME and is skipped when rerun (its test accuracies cached in
recall.json). `--config.seeds=0,1,2` repeats every point over three seeds (mean ± std).

Presets:
- default: sized for a 2-core CPU (its six kinds took about 40 minutes on a 2-core Intel
  VM; the 12 runs with --config.widths=64,128 took 62 minutes on a faster 2-core AMD EPYC,
  Zen 5): six kinds at width 64, one learning rate each, vocabulary 1,024, trained on
  segments of 64 and 128 tokens (4 to 16 pairs), tested at Zoology's test segments, 64 to
  1,024 tokens with 4 to 256 pairs.
- zoology: Zoology's setting for an accelerator: vocabulary 8,192, training segments 64:4,
  128:8, 256:16, 256:32, 256:64, widths 64 to 256, four learning rates (logspace 1e-4..1e-2).
- smoke: the test's size.
"""

from ml_collections import ConfigDict

from configs import mqar

PRESETS = ("smoke", "zoology")
ZOOLOGY_TRAIN = ("64:4", "128:8", "256:16", "256:32", "256:64")
ZOOLOGY_TEST = ("64:4", "64:8", "64:16", "128:32", "256:64", "512:128", "1024:256")


def get_config(preset: str = "") -> ConfigDict:
    c = ConfigDict()
    c.experiment = "recall"  # research.experiments.EXPERIMENTS
    # softmax, a causal linear feature map (elu, relu, taylor, favor) or a gated / delta kind
    c.attentions = ("softmax", "taylor", "retnet", "gla", "deltanet", "gated_deltanet")
    c.widths = (64,)  # d_model per point
    # The MLP's hidden width at every point; 0: 4 x width. A wider MLP adds parameters without
    # changing the decode state: the control that tells state from model size.
    c.d_ff = 0
    # Every point trains once per seed (its initialisation, data and order); the table gives
    # the mean ± std over them. Seed 0's runs keep their names, so more seeds reuse them.
    c.seeds = (0,)
    c.learning_rates = (3e-3,)  # every kind not named in learning_rates_by_attention
    # The rates measured best on compare_attention's MQAR (softmax 1e-2, gla and gated_deltanet
    # 1e-3); retnet takes its family's (gla), deltanet the default.
    c.learning_rates_by_attention = {
        "softmax": (1e-2,),
        "retnet": (1e-3,),
        "gla": (1e-3,),
        "gated_deltanet": (1e-3,),
    }
    # "LENGTH:PAIRS" MQAR segments (Zoology's multiquery_ar draw): trained on a mixture of these
    # in equal shares (padded to the longest), tested on each of those.
    c.train_segments = ("64:4", "128:8", "128:16")
    c.test_segments = ZOOLOGY_TEST
    c.test_examples = 256  # per test segment
    c.eval_batch_size = 32

    c.mqar = mqar.get_config()
    c.mqar.data.update(vocab_size=1024, train_examples=48_000, test_examples=256)
    c.mqar.model.update(num_layers=2, num_heads=2, chunk_size=64, favor_features=64)
    c.mqar.model.update(short_conv=3)  # as compare_attention: the key at a value sees its key
    c.mqar.update(
        batch_size=32,
        num_train_steps=1500,
        eval_every_steps=1500,
        eval_steps=8,
        checkpoint_every_steps=500,
        log_every_steps=100,
    )
    c.mqar.optimizer.update(warmup_steps=50, weight_decay=0.0)

    if preset == "zoology":
        c.widths = (64, 128, 256)
        c.learning_rates = (1e-4, 4.6e-4, 2.2e-3, 1e-2)
        c.learning_rates_by_attention = {}
        c.train_segments = ZOOLOGY_TRAIN
        c.test_examples = 1000
        c.mqar.data.update(vocab_size=8192, train_examples=100_000)
        c.mqar.update(batch_size=256, num_train_steps=20_000, eval_every_steps=2_000, eval_steps=4)
        c.mqar.update(checkpoint_every_steps=2_000)
    elif preset == "smoke":
        c.attentions = ("softmax", "elu")
        c.widths = (16,)
        c.learning_rates_by_attention = {}
        c.train_segments = ("16:2", "32:4")
        c.test_segments = ("32:4", "64:8")
        c.test_examples = 12
        c.eval_batch_size = 8
        c.mqar.data.update(vocab_size=64, train_examples=256, test_examples=16)
        c.mqar.model.update(chunk_size=16)
        c.mqar.update(
            batch_size=8,
            num_train_steps=4,
            eval_every_steps=4,
            eval_steps=1,
            checkpoint_every_steps=4,
            log_every_steps=2,
        )
    elif preset:
        raise ValueError(
            f"unknown preset {preset!r} for configs/recall.py; allowed: {', '.join(PRESETS)}"
        )
    return c
