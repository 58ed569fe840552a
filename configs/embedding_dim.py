"""How many dimensions a word embedding needs: the note's n > 8.33 ln N against a skip-gram-like
model trained on real text (docs/research_notes.md section 7; docs/embedding_dim.md).

    python -m research.main --config=configs/embedding_dim.py --workdir=/tmp/seqlab/embedding_dim
    python -m research.main --config=configs/embedding_dim.py:smoke --workdir=/tmp/seqlab/emb_smoke
    python -m research.main --config=configs/embedding_dim.py --workdir=/tmp/seqlab/emb3 \
        --config.seeds=0,1,2 --config.num_pairs=8000000

For every corpus, vocabulary size N (the top-N words; 0 = all words of the train split) and
dimension n it trains one model and records its held-out NLL per (center, context) pair; the
needed n at N is the smallest n within `tolerance` nats of the best. Writes embedding_dim.csv
(one row per corpus and N), embedding_dim_points.csv (every point) and embedding_dim.png.
Rerunning the same command skips finished points (points/*.json). Measured: docs/embedding_dim.md.
"""

from ml_collections import ConfigDict


def get_config(preset: str = "") -> ConfigDict:
    c = ConfigDict()
    c.experiment = "embedding_dim"  # research.experiments.EXPERIMENTS
    c.corpora = ("peoples_daily", "chitchat")  # research.data.words.CORPORA
    c.vocab_sizes = (1000, 4000, 16000, 0)  # top-N words; 0 = the whole train vocabulary
    c.dims = (4, 8, 16, 32, 48, 64, 96, 128, 192, 256)  # finer where 8.33 ln N lies (58-91)
    c.seeds = (0,)  # one seed keeps the default near 20 minutes on a 2-core CPU
    c.window = 2  # contexts within 2 words on either side
    c.num_pairs = 2_000_000  # (center, context) pairs drawn per point (~0.5 epoch of the news)
    c.batch_size = 4096
    c.learning_rate = 1e-2  # lazy Adam
    c.full_softmax_max = 2048  # N up to this trains on the full softmax
    c.negatives = 512  # larger N: sampled softmax with this many negatives per batch
    c.eval_pairs = 8192  # held-out pairs scored (validation + test splits, fixed sample)
    c.tolerance = 0.02  # nats per pair: "needed n" is within this of the best n
    c.max_train_sentences = 0  # 0 = all; smoke uses a slice of the corpus
    if preset == "smoke":
        c.corpora = ("peoples_daily",)
        c.vocab_sizes = (300, 3000)
        c.dims = (2, 8)
        c.num_pairs = 4096
        c.batch_size = 512
        c.eval_pairs = 1024
        c.max_train_sentences = 2000
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/embedding_dim.py; allowed: smoke")
    return c
