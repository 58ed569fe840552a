"""What the tasks that start from a BERT share: where a model starts, and its vocabulary.

`BertTask` is their base (mlm, classify, pet, theseus); the functions below serve any task with
an `init` option (seq2seq, qagen and chat too). `init` names a pretrained BERT:
  ""                 random initialisation; a `BertTask` then takes the character
                     vocabulary of People's Daily's and the reviews' train text
                     (`chinese_vocab`) whatever data.source is (a run on other text starts
                     from a pretrained model's vocabulary instead); seq2seq, qagen and chat
                     build their own (their modules say how);
  "workdir:PATH"     a seqlab run (an `mlm` run, say): its model.json, vocabulary and newest
                     checkpoint; what a run of a `BertTask` hands on is that task's to say
                     (`BertTask.exported_layers`, `BertTask.exported_model`: a `theseus` run
                     hands on its k-layer successor);
  "hf:PATH"          a Hugging Face directory (config.json, model.safetensors, tokenizer.json or
                     vocab.txt), read by `research.models.convert.load_bert`.
The architecture and the vocabulary then come from the pretrained model; the task may add heads
(`num_labels`), which start from their initialisation (`research.models.params.transfer`).
"""

import contextlib
import json
import pathlib
from collections.abc import Callable, Iterable

import numpy as np
from flax import nnx

from research.config import ConfigError, RunConfig
from research.data import chinese, wordpiece
from research.data import vocab as vocab_io
from research.data.config import DataConfig
from research.models import Bert, ModelConfig, convert
from research.models import params as params_io
from research.models.config import runnable_here
from research.tasks.base import Task

INIT_KINDS = ("workdir", "hf")


def parse_init(init: str, *, key: str) -> tuple[str, pathlib.Path] | None:
    """`init` = "kind:PATH" -> (kind, path); "" -> None; ConfigError naming `key` otherwise."""
    if not init:
        return None
    kind, _, path = init.partition(":")
    if kind not in INIT_KINDS or not path:
        raise ConfigError(f"{key}={init!r}: use '', 'workdir:PATH' or 'hf:PATH'")
    p = pathlib.Path(path).expanduser()
    needs = ("model.json",) if kind == "workdir" else ("config.json", "model.safetensors")
    for need in needs:
        if not (p / need).is_file():
            raise ConfigError(f"{key}={init!r}: no {need} in {p}")
    return kind, p


@contextlib.contextmanager
def _init_errors(init: str, key: str):
    """A checkpoint that cannot become this model (missing or unexpected tensors, shapes, an
    unsupported config value or key, an unreadable file) is a one-line ConfigError naming it."""
    try:
        yield
    except (ValueError, KeyError, OSError) as e:  # JSONDecodeError is a ValueError
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{key}={init!r}: {type(e).__name__}: {e}") from None


def pretrained_config(init: str, *, key: str) -> tuple[ModelConfig, wordpiece.BertVocab] | None:
    """(architecture, vocabulary) of the pretrained model `init` names, without its weights."""
    with _init_errors(init, key):
        return _pretrained_config(init, key=key)


def _pretrained_config(init: str, *, key: str):
    parsed = parse_init(init, key=key)
    if parsed is None:
        return None
    kind, path = parsed
    if kind == "workdir":
        vocab = vocab_io.load(path)
        if not isinstance(vocab, wordpiece.BertVocab):
            raise ConfigError(f"{key}={init!r}: that run has no WordPiece vocabulary (not BERT)")
        mcfg = ModelConfig(**json.loads((path / "model.json").read_text()))
        task, saved = _exporter(path)
        k = task.exported_layers(saved)
        return (mcfg if k is None else mcfg.replace(num_layers=k)), vocab
    config = json.loads((path / "config.json").read_text())
    mcfg, vocab = convert.bert_config(config), wordpiece.BertVocab.from_pretrained_dir(path)
    if vocab.vocab_size() > mcfg.vocab_size:  # ids the embedding table has no row for
        raise ConfigError(
            f"{key}={init!r}: its vocabulary has {vocab.vocab_size()} tokens, its model only "
            f"{mcfg.vocab_size} embeddings (config.json vocab_size); use the model's own vocabulary"
        )
    return mcfg, vocab


def pretrained_model(init: str, *, key: str) -> Bert:
    """The pretrained Bert `init` names, weights loaded (its newest checkpoint for a workdir).
    A pretraining checkpoint's next-sentence head (cls.seq_relationship) is left out."""
    with _init_errors(init, key):
        return _pretrained_model(init, key=key)


def _pretrained_model(init: str, *, key: str) -> Bert:
    kind, path = parse_init(init, key=key)
    if kind == "hf":
        return convert.load_bert(path, ignore_prefixes=("cls.seq_relationship",))
    mcfg = runnable_here(ModelConfig(**json.loads((path / "model.json").read_text())))
    steps = params_io.checkpoint_steps(path / "checkpoints")
    if not steps:
        raise ConfigError(f"{key}={init!r}: no checkpoints in {path / 'checkpoints'}")
    task, saved = _exporter(path)
    model, export = task.exported_model(saved, mcfg, rngs=nnx.Rngs(params=0, dropout=1))
    model = params_io.read_checkpoint(path / "checkpoints", steps[-1], model=model)[1]
    return model if export is None else export(model)


def run_config(path: pathlib.Path) -> dict:
    """The config (JSON dict) saved with run `path`'s newest checkpoint; {} without one."""
    steps = params_io.checkpoint_steps(path / "checkpoints")
    if not steps:
        return {}
    try:
        return params_io.read_checkpoint(path / "checkpoints", steps[-1], config=True)[0] or {}
    except (OSError, ValueError, KeyError):  # a checkpoint written without its config item
        return {}


def _exporter(path: pathlib.Path) -> tuple["type[BertTask]", dict]:
    """(the BertTask class that trained run `path`, BertTask itself for any other task, and the
    run's saved config)."""
    saved = run_config(path)
    return _BERT_TASKS.get(saved.get("task"), BertTask), saved


def initialize(init: str, model: Bert, *, key: str) -> None:
    """Start `model` from the pretrained weights `init` names (nothing for ""); prints how many
    tensors were copied, the path of every parameter that keeps its initialisation (a new
    head's, e.g. "classifier/kernel") and those of the pretrained tensors left out (an MLM
    head's, e.g. "mlm_bias")."""
    if not init:
        return
    pre = pretrained_model(init, key=key)
    with _init_errors(init, key):
        copied, fresh = params_io.transfer(pre, model)
    print(
        f"{key}: {len(copied)} tensors from {init}; newly initialised: "
        f"{', '.join(sorted(fresh)) or 'none'}; {not_used(pre, copied)}",
        flush=True,
    )


def not_used(pre, copied: list[str], shown: int = 8) -> str:
    """'not used: ...': the pretrained tensors the new model has no place for (a head)."""
    unused = params_io.unused_paths(pre, copied)
    if not unused:
        return "not used: none"
    more = f" and {len(unused) - shown} more" if len(unused) > shown else ""
    return f"not used: {', '.join(unused[:shown])}{more}"


def build_config(
    run, init: str, *, key: str, vocab_size: int, max_length: int, layers: int = 0, **heads
) -> ModelConfig:
    """The model a BERT task trains: the pretrained architecture (dropout, compute dtype, layer
    form, remat and softmax kernel from the config), or
    the config's model sized to the data; with the task's `heads` (mlm_head, pooler,
    num_labels). layers > 0 keeps only the first `layers` layers (BERT-of-Theseus' baseline)."""
    pre = pretrained_config(init, key=key)
    if pre is None:
        mcfg = run.model.replace(vocab_size=vocab_size, max_length=max_length)
    else:
        # The architecture is the pretrained model's; how this run executes it is the run's own
        # (transfer matches layers across the scanned and unrolled forms).
        mcfg = pre[0].replace(
            dropout=run.model.dropout,
            scan_layers=run.model.scan_layers,
            remat=run.model.remat,
            softmax_implementation=run.model.softmax_implementation,
            dtype=run.model.dtype,  # the compute dtype (the config checks cuDNN against it)
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
    """The pretrained model's vocabulary, else `chinese_vocab` (People's Daily's and the reviews'
    train characters)."""
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


def accuracy(predict: Callable[[dict], np.ndarray], batches: Iterable[dict]) -> float:
    """Share of the real rows (weights > 0) whose predicted label is the label.

    Args:
      predict: batch -> predicted labels [B] (e.g. the argmax class of a jitted forward pass).
      batches: evaluation batches with "labels" [B] and "weights" [B] (0 = a padding row), every
        example once.

    Returns:
      hits / examples (0.0 for no examples).
    """
    hits = n = 0
    for batch in batches:
        pred = np.asarray(predict(batch))
        keep = batch["weights"] > 0
        hits += int(np.sum((pred == batch["labels"])[keep]))
        n += int(np.sum(keep))
    return hits / max(n, 1)


# BertTask subclasses by task name: a workdir's saved "task" finds what the run hands on.
_BERT_TASKS: dict[str, "type[BertTask]"] = {}


class BertTask(Task):
    """Base of the tasks whose model is a `Bert` that starts from the BERT `init` names.

    The task's section (`section_type`) has an `init` field (parse_init's forms); its vocabulary
    is that model's (or `chinese_vocab`'s characters), its architecture that
    model's with the task's `heads`, and its weights start from that model's. Subclasses set
    `name`, `section`, `section_type`, override `heads`, and define `build_data` and `loss_fn`.
    """

    causal = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            _BERT_TASKS[cls.name] = cls

    @property
    def init_key(self) -> str:
        """The config key of the task's `init` (for messages), e.g. "mlm.init"."""
        return f"{self.section}.init"

    def heads(self, run: RunConfig) -> dict:
        """The task's heads and depth for `build_config` (mlm_head, pooler, num_labels, layers).

        Args:
          run: the run's config.

        Returns:
          Keyword arguments of `build_config`; default: the MLM head.
        """
        del run
        return {"mlm_head": True}

    def validate(self, run: RunConfig) -> None:
        parse_init(run.task_config.init, key=self.init_key)

    def vocabulary(self, run: RunConfig) -> wordpiece.BertVocab:
        """The pretrained model's vocabulary, else `chinese_vocab` (the Chinese corpora's train
        characters).

        Args:
          run: the run's config (its task section's `init`, its data section).

        Returns:
          The run's WordPiece vocabulary.
        """
        return vocabulary(run.data, run.task_config.init, key=self.init_key)

    def model_config(self, run: RunConfig, *, vocab_size: int, max_length: int) -> ModelConfig:
        return build_config(
            run,
            run.task_config.init,
            key=self.init_key,
            vocab_size=vocab_size,
            max_length=max_length,
            **self.heads(run),
        )

    def model_class(self, run: RunConfig) -> type:
        return Bert

    def initialize(self, run: RunConfig, model) -> None:
        initialize(run.task_config.init, model, key=self.init_key)

    @classmethod
    def exported_layers(cls, saved: dict) -> int | None:
        """How many layers a later run's init=workdir:PATH takes from a run of this task.

        Args:
          saved: the run's saved config (`run_config`).

        Returns:
          None: the whole model its model.json describes (the default); k: a k-layer BERT.
        """
        del saved
        return None

    @classmethod
    def exported_model(
        cls, saved: dict, mcfg: ModelConfig, *, rngs: nnx.Rngs
    ) -> tuple[nnx.Module, Callable[[nnx.Module], Bert] | None]:
        """The model a run of this task checkpoints, and how it becomes the BERT it hands on.

        Args:
          saved: the run's saved config (`run_config`).
          mcfg: the run's model.json.
          rngs: for the (overwritten) initialisation.

        Returns:
          (the model to read the checkpoint into, model -> Bert, or None for the model itself).
        """
        del saved
        return Bert(mcfg, rngs=rngs), None
