"""Linear vs softmax attention: MQAR recall and stdlib-code LM across widths
(docs/research_notes.md section 4; docs/linear_vs_softmax.md).

    ./launch/run.sh   # this config, default preset, workdir /tmp/seqlab/compare_attention
    python -m research.main --config=configs/compare_attention.py --workdir=/tmp/seqlab/compare
    python -m research.main --config=configs/compare_attention.py:large --workdir=gs://.../cmp
    python -m research.main --config=configs/compare_attention.py \
        --config.attentions=softmax,taylor --config.widths=64,128 --workdir=/tmp/seqlab/cmp2
    python -m research.main --config=configs/compare_attention.py:full --workdir=/tmp/cmp_full
    python -m research.main --config=configs/compare_attention.py:smoke --workdir=/tmp/cmp_smoke

Writes compare.csv and compare.png into the workdir and prints the table; each point's training
run lives in workdir/runs/NAME (metrics.jsonl, checkpoints) and is skipped when rerun.
The default (softmax, taylor, GLA and Gated DeltaNet at width 64, each at its own learning rate)
is sized for a 2-core CPU; `full` runs all nine attentions at widths 32 and 64 and three learning
rates; `large` is the Zoology-sized sweep (sequence 256, 64 key-value pairs, widths 64-512, four
learning rates) for accelerators.
Times measured per machine: docs/linear_vs_softmax.md.
"""

from ml_collections import ConfigDict

from configs import lm, mqar


def get_config(preset: str = "") -> ConfigDict:
    c = ConfigDict()
    c.experiment = "compare_attention"  # research.experiments.EXPERIMENTS
    # softmax, a causal linear feature map (elu, relu, taylor, favor) or a gated / delta kind
    # (gla, retnet, deltanet, gated_deltanet). The default asks the question with a 2020 map and
    # the forms the field uses now; `full` runs every one.
    c.attentions = ("softmax", "taylor", "gla", "gated_deltanet")
    # d_model per point (d_ff = 4 x width unless equal_params); heads fixed below. One width
    # keeps the first run within about 12 minutes on a 2-core CPU; 64 is where softmax reliably
    # solves MQAR here.
    c.widths = (64,)
    # MQAR tries each rate and the table reports the best (Zoology sweeps per model).
    c.learning_rates = (1e-2,)
    # Rates for the kinds named here instead of learning_rates. The default gives each kind the
    # rate that scored highest for it in the measured sweeps (linear_vs_softmax.md: softmax 1e-2,
    # taylor 3e-3, gla and gated_deltanet 1e-3; one seed each, and gated_deltanet's 1e-3 beat 3e-3
    # by 0.917 to 0.909 where its seeds spread 0.19-0.92), so one run per kind asks the question;
    # `full` clears it and sweeps every kind over three rates.
    c.learning_rates_by_attention = {"taylor": (3e-3,), "gla": (1e-3,), "gated_deltanet": (1e-3,)}
    # True: each kind's MLP (d_ff) is widened until its parameter count matches the largest
    # kind's at that width (the widened kinds' runs named `..._ffN`), so the kinds are compared
    # at equal parameters; False: d_ff = 4 x width for every kind (equal width; the table's
    # params column differs).
    c.equal_params = False
    c.tasks = ("mqar", "lm")  # lm: once per (attention, width) at c.lm.optimizer.learning_rate
    # Decode latency per token of the LM's model (batch 1) after each context length: softmax
    # reads a KV cache that grows with it, the recurrent kinds update a fixed state.
    c.decode_contexts = (1024, 8192)
    c.decode_tokens = 64  # greedy tokens timed after the prefilled context
    c.data_dir = ""  # if set, overrides mqar.data.data_dir and lm.data.data_dir

    # MQAR (Zoology): keys/values from a small vocabulary; eval accuracy = recall at queries.
    c.mqar = mqar.get_config()
    c.mqar.data.update(
        seq_len=64, vocab_size=64, num_kv_pairs=8, train_examples=20_000, test_examples=512
    )
    c.mqar.model.update(num_layers=2, num_heads=2, chunk_size=32, favor_features=64)
    c.mqar.update(
        batch_size=32,
        num_train_steps=1000,
        eval_every_steps=1000,
        eval_steps=16,
        checkpoint_every_steps=1000,
        log_every_steps=100,
    )
    c.mqar.optimizer.update(warmup_steps=50, weight_decay=0.0)

    # LM on this interpreter's standard library (first 60 files: built in seconds, no download).
    c.lm = lm.get_config()
    c.lm.data.update(seq_len=128, vocab_size=512, small=True)
    c.lm.model.update(num_layers=2, num_heads=2, chunk_size=32, favor_features=64)
    c.lm.update(
        batch_size=16,
        num_train_steps=150,
        eval_every_steps=150,
        eval_steps=8,
        checkpoint_every_steps=150,
        log_every_steps=50,
    )
    c.lm.optimizer.update(learning_rate=3e-3, warmup_steps=20)

    if preset == "large":
        c.widths = (64, 128, 256, 512)
        c.learning_rates = (1e-4, 4.6e-4, 2.2e-3, 1e-2)
        c.learning_rates_by_attention = {}
        c.mqar.data.update(
            seq_len=256,
            vocab_size=8192,
            num_kv_pairs=64,
            train_examples=100_000,
            test_examples=3_000,
        )
        c.mqar.update(
            batch_size=256,
            num_train_steps=20_000,
            eval_every_steps=2_000,
            eval_steps=12,
            checkpoint_every_steps=2_000,
        )
        c.mqar.model.update(num_heads=4, chunk_size=64)
        c.lm.data.update(seq_len=1024, vocab_size=8192, small=False)
        c.lm.model.update(num_heads=4, chunk_size=64)
        c.lm.update(
            batch_size=64,
            num_train_steps=10_000,
            eval_every_steps=2_000,
            eval_steps=20,
            checkpoint_every_steps=2_000,
        )
        c.lm.optimizer.update(learning_rate=1e-3, warmup_steps=500)
    elif preset == "full":  # every attention, widths 32 and 64, three learning rates
        c.attentions = (
            "softmax",
            "elu",
            "relu",
            "taylor",
            "favor",
            "gla",
            "retnet",
            "deltanet",
            "gated_deltanet",
        )
        c.widths = (32, 64)
        c.learning_rates = (1e-3, 3e-3, 1e-2)
        c.learning_rates_by_attention = {}
    elif preset == "smoke":
        c.attentions = ("softmax", "elu")
        c.widths = (32,)
        c.learning_rates_by_attention = {}
        c.learning_rates = (1e-2,)
        c.decode_tokens = 4
        c.decode_contexts = (64,)
        c.mqar = mqar.get_config("smoke")
        c.lm = lm.get_config("smoke")
    elif preset:
        raise ValueError(
            f"unknown preset {preset!r} for configs/compare_attention.py; allowed: full, "
            "large, smoke"
        )
    # Every model, softmax and linear alike, projects its keys from a width-3 causal convolution
    # of its input (H3's shift, Based's short convolution): the key at a value token then carries
    # the key token before it, so binding a value to its key needs no previous-token head. Without
    # it no model, softmax included, learned MQAR within the CPU budget (README).
    c.mqar.model.short_conv = 3
    c.lm.model.short_conv = 3
    return c
