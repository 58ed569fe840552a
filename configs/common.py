"""Keys every experiment config shares; each is documented where it is declared."""

from ml_collections import ConfigDict


def base_config() -> ConfigDict:
    c = ConfigDict()
    c.task = "lm"  # loss in research.train.tasks
    c.seed = 0  # parameters, dropout and data order
    c.batch_size = 16  # global batch (all processes), in sequences
    c.accum_steps = 1  # gradient accumulation microbatches per step (divides the batch)
    c.num_train_steps = 1000
    c.log_every_steps = 50  # train metrics to metrics.jsonl / TensorBoard
    c.eval_every_steps = 500
    c.eval_steps = 20  # eval batches per evaluation
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3  # newest N kept
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: the rest of the devices
    c.optimizer = ConfigDict(dict(
        learning_rate=1e-3,  # peak, after linear warmup
        warmup_steps=100,
        schedule="cosine",  # cosine | linear | constant decay after warmup
        weight_decay=0.1,  # AdamW, matrices only (not norms, not biases)
        grad_clip=1.0,  # global-norm clipping; 0 = off
        adam_b1=0.9, adam_b2=0.95, adam_eps=1e-8,
    ))  # fmt: skip
    # research.models.ModelConfig fields; vocab_size and max_length come from the data.
    c.model = ConfigDict(dict(
        d_model=128, num_heads=4, num_kv_heads=0, num_layers=2, d_ff=512, positions="rotary",
        attention="softmax", softmax_implementation="xla", feature_map="elu", linear_form="chunked",
        chunk_size=64, favor_features=64, activation="gelu", norm="pre", dropout=0.0,
        short_conv=0,  # causal depthwise conv width on the keys' input (0 = none)
        dtype="float32",  # compute dtype; "bfloat16" keeps fp32 parameters
    ))  # fmt: skip
    c.data = ConfigDict(dict(
        source="",
        data_dir="~/.cache/seqlab/data",  # built datasets and tokenizers live here
        seq_len=256,
        vocab_size=8192,
        small=False,
        shards=0,  # logical data shards (0 = one per process); fixes the batches' content
        num_kv_pairs=16,  # mqar only: key-value pairs per sequence
        train_examples=100_000,  # mqar only
        test_examples=1_000,  # mqar only
    ))  # fmt: skip
    return c
