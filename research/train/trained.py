"""Getting a trained run back: `load_trained(workdir)` -> the model, its vocabulary, its config.

A workdir is self-contained: besides `checkpoints/` (Orbax: state, data iterator, config JSON)
the loop writes `model.json` (the exact `ModelConfig`, sizes included) and the vocabulary
(`research.data.vocab`), so a copied workdir rebuilds and decodes without the data.
"""

import dataclasses
import json
import pathlib
from typing import NamedTuple

from flax import nnx
from ml_collections import ConfigDict

from research import tasks
from research.config import ConfigError, RunConfig
from research.data import vocab as vocab_io
from research.models import ModelConfig, stack
from research.models import params as params_io
from research.models.config import runnable_here
from research.train.config import parse


class Trained(NamedTuple):
    model: nnx.Module  # in eval mode (dropout off), parameters restored
    vocab: vocab_io.Vocab | None  # research.data.vocab.load: None for MQAR
    config: RunConfig
    step: int


def save_run_files(workdir, mcfg: ModelConfig, vocab) -> None:
    """model.json and the vocabulary, written by process 0 when a run starts."""
    path = pathlib.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "model.json.tmp"
    tmp.write_text(json.dumps(dataclasses.asdict(mcfg), indent=1))
    tmp.replace(path / "model.json")
    vocab_io.save(path, vocab)


def check_vocabulary(workdir, vocab) -> None:
    """ConfigError if a resumed run's saved vocabulary differs from the data's (another data_dir
    whose tokenizer was trained on other text, say): its token ids would mean other tokens,
    silently. Compared by meaning (each id's text and the special ids), not bytes: a
    sentencepiece model names the directory it was trained in."""
    path = pathlib.Path(workdir)
    if not (path / "vocab.json").is_file():
        return

    def meaning(v):
        if v is None:
            return None
        special = [v.pad_id, v.bos_id, v.eos_id, v.cls_id, v.sep_id]
        return special + [v.decode([i]) for i in range(v.vocab_size())]

    if meaning(vocab_io.load(path)) != meaning(vocab):
        raise ConfigError(
            f"{workdir}: the data's vocabulary differs from the one this run was trained with "
            f"({path / 'vocab.json'} and its files); resume with the data_dir and data "
            "settings it was trained with, or use another --workdir"
        )


def load_trained(workdir, *, step: int | None = None, scan_layers: bool | None = False) -> Trained:
    """The model of run `workdir` at checkpoint `step` (default: the newest), parameters only
    (restored with Orbax onto this process's default device; the optimizer state is not read).
    `scan_layers`: False (default) gives a run trained with `model.scan_layers` back with its
    layers unrolled (the same parameters and outputs; the model's cfg says so): a scanned stack
    copies each layer's whole KV cache in and out at every decode step (2.1x the unrolled time
    per token at 8k tokens of context on CPU; MaxText decodes unscanned too). True stacks an
    unrolled run's layers; None keeps the run's layout. Raises ConfigError naming what is
    missing."""
    path = pathlib.Path(workdir).expanduser().absolute()  # Orbax reads absolute paths only
    if not (path / "model.json").is_file():
        raise ConfigError(f"{workdir}: no model.json; not a workdir of a seqlab training run")
    steps = params_io.checkpoint_steps(path / "checkpoints")
    if not steps:
        raise ConfigError(f"{workdir}: no checkpoints in {path / 'checkpoints'}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ConfigError(f"step={step}: {workdir} has checkpoints at steps {steps}")
    raw, _ = params_io.read_checkpoint(path / "checkpoints", step, config=True)
    run = parse(ConfigDict(raw), check_devices=False)
    mcfg = runnable_here(ModelConfig(**json.loads((path / "model.json").read_text())))
    model = tasks.get(run.task).build_model(run, mcfg, rngs=nnx.Rngs(params=0, dropout=1))
    _, model = params_io.read_checkpoint(path / "checkpoints", step, model=model)
    if scan_layers is not None and scan_layers != model.cfg.scan_layers:
        stack.convert(model, scan=scan_layers)
    model.eval()
    return Trained(model, vocab_io.load(path), run, step)
