"""What the BERT tasks (mlm, classify, pet) share: where a model starts, and its vocabulary.

`init` names a pretrained BERT:
  ""                 random initialisation, with a character vocabulary built from the data
                     (`chinese_vocab`);
  "workdir:PATH"     a seqlab run (an `mlm` run, say): its model.json, vocabulary and newest
                     checkpoint; of a `theseus` run, its k-layer successor;
  "hf:PATH"          a Hugging Face directory (config.json, model.safetensors, tokenizer.json or
                     vocab.txt), read by `research.models.convert.load_bert`.
The architecture and the vocabulary then come from the pretrained model; the task may add heads
(`num_labels`), which start from their initialisation (`research.models.params.transfer`).
"""

import json
import pathlib

from flax import nnx

from research.config import ConfigError
from research.data import chinese, wordpiece
from research.data import vocab as vocab_io
from research.data.config import DataConfig
from research.models import Bert, ModelConfig, convert
from research.models import params as params_io
from research.models.theseus import Theseus

INIT_KINDS = ("workdir", "hf")


def parse_init(init: str, *, key: str) -> tuple[str, pathlib.Path] | None:
    """`init` = "kind:PATH" -> (kind, path); "" -> None; ConfigError naming `key` otherwise."""
    if not init:
        return None
    kind, _, path = init.partition(":")
    if kind not in INIT_KINDS or not path:
        raise ConfigError(f"{key}={init!r}: use '', 'workdir:PATH' or 'hf:PATH'")
    p = pathlib.Path(path).expanduser()
    need = "model.json" if kind == "workdir" else "config.json"
    if not (p / need).is_file():
        raise ConfigError(f"{key}={init!r}: no {need} in {p}")
    return kind, p


def pretrained_config(init: str, *, key: str) -> tuple[ModelConfig, wordpiece.BertVocab] | None:
    """(architecture, vocabulary) of the pretrained model `init` names, without its weights."""
    parsed = parse_init(init, key=key)
    if parsed is None:
        return None
    kind, path = parsed
    if kind == "workdir":
        vocab = vocab_io.load(path)
        if not isinstance(vocab, wordpiece.BertVocab):
            raise ConfigError(f"{key}={init!r}: that run has no WordPiece vocabulary (not BERT)")
        mcfg = ModelConfig(**json.loads((path / "model.json").read_text()))
        k = _theseus_layers(path)
        return (mcfg if k is None else mcfg.replace(num_layers=k)), vocab
    config = json.loads((path / "config.json").read_text())
    return convert.bert_config(config), wordpiece.BertVocab.from_pretrained_dir(path)


def pretrained_model(init: str, *, key: str) -> Bert:
    """The pretrained Bert `init` names, weights loaded (its newest checkpoint for a workdir)."""
    kind, path = parse_init(init, key=key)
    if kind == "hf":
        return convert.load_bert(path)
    mcfg = ModelConfig(**json.loads((path / "model.json").read_text()))
    steps = params_io.checkpoint_steps(path / "checkpoints")
    if not steps:
        raise ConfigError(f"{key}={init!r}: no checkpoints in {path / 'checkpoints'}")
    k = _theseus_layers(path)
    rngs = nnx.Rngs(params=0, dropout=1)
    if k is None:
        model = Bert(mcfg, rngs=rngs)
    else:  # a Theseus run: its successor, as a k-layer Bert
        model = Theseus(mcfg, successor_layers=k, rngs=rngs)
    model = params_io.read_checkpoint(path / "checkpoints", steps[-1], model=model)[1]
    return model if k is None else model.successor_model()


def run_config(path: pathlib.Path) -> dict:
    """The config (JSON dict) saved with run `path`'s newest checkpoint; {} without one."""
    steps = params_io.checkpoint_steps(path / "checkpoints")
    if not steps:
        return {}
    try:
        return params_io.read_checkpoint(path / "checkpoints", steps[-1], config=True)[0] or {}
    except (OSError, ValueError, KeyError):  # a checkpoint written without its config item
        return {}


def _theseus_layers(path: pathlib.Path) -> int | None:
    """A theseus run's successor_layers (its model.json is the predecessor's), else None."""
    raw = run_config(path)
    return raw["theseus"]["successor_layers"] if raw.get("task") == "theseus" else None


def initialize(init: str, model: Bert, *, key: str) -> None:
    """Start `model` from the pretrained weights `init` names (nothing for ""); prints how many
    tensors were copied and the path of every parameter that keeps its initialisation (a new
    head's, e.g. "classifier/kernel")."""
    if not init:
        return
    copied, fresh = params_io.transfer(pretrained_model(init, key=key), model)
    print(
        f"{key}: {len(copied)} tensors from {init}; newly initialised: "
        f"{', '.join(sorted(fresh)) or 'none'}",
        flush=True,
    )


def build_config(
    run, init: str, *, key: str, vocab_size: int, max_length: int, layers: int = 0, **heads
) -> ModelConfig:
    """The model a BERT task trains: the pretrained architecture (dropout from the config), or
    the config's model sized to the data; with the task's `heads` (mlm_head, pooler,
    num_labels). layers > 0 keeps only the first `layers` layers (BERT-of-Theseus' baseline)."""
    pre = pretrained_config(init, key=key)
    if pre is None:
        mcfg = run.model.replace(vocab_size=vocab_size, max_length=max_length)
    else:
        # The architecture is the pretrained model's; how this run executes it is the run's own
        # (transfer matches layers across the scanned and unrolled forms).
        mcfg = pre[0].replace(
            dropout=run.model.dropout, scan_layers=run.model.scan_layers, remat=run.model.remat
        )
        if max_length > mcfg.max_length:
            if mcfg.positions in ("learned", "sinusoidal") or mcfg.attention == "linformer":
                raise ConfigError(
                    f"data.seq_len={max_length}: the pretrained model {init} "
                    f"takes at most {mcfg.max_length} tokens"
                )
            # Rotary positions have no table to outgrow: the model takes the longer rows.
            mcfg = mcfg.replace(max_length=max_length)
    if layers > mcfg.num_layers:
        raise ConfigError(
            f"{key.split('.')[0]}.layers={layers}: the model has only {mcfg.num_layers} layers"
        )
    return mcfg.replace(num_layers=layers or mcfg.num_layers, **heads)


def vocabulary(data: DataConfig, init: str, *, key: str) -> wordpiece.BertVocab:
    """The pretrained model's vocabulary, else a character vocabulary built from the data."""
    pre = pretrained_config(init, key=key)
    return pre[1] if pre is not None else chinese_vocab(data)


def chinese_vocab(data: DataConfig) -> wordpiece.BertVocab:
    """One token per character (bert4keras' Chinese convention), the `data.vocab_size` most
    frequent characters of People's Daily's and the reviews' TRAIN splits (validation and test
    text never shapes it), with [PAD] [UNK] [CLS] [SEP] [MASK] first."""
    data_dir = pathlib.Path(data.data_dir).expanduser()
    daily, reviews = chinese.peoples_daily_sources(data_dir), chinese.review_sources(data_dir)
    path = wordpiece.char_vocab_path(data_dir, "zh_daily_reviews", data.vocab_size)

    def texts():
        for source in (daily[0], reviews[0]):
            for r in source:
                t = r["text"]
                yield t.decode("utf-8") if isinstance(t, bytes) else t

    return wordpiece.train_or_load(texts, path, vocab_size=data.vocab_size)
