"""Typed configs: the ConfigDict skeleton comes from the dataclasses, parse() checks at the
boundary, list values are lists however they are written."""

import dataclasses

import pytest
from ml_collections import ConfigDict

from configs import compare_attention, lm, seq2seq
from research.config import (
    MODEL_SIZE_FIELDS,
    ConfigError,
    MeshConfig,
    OptimizerConfig,
    TrainConfig,
    as_list,
    defaults,
    seed_list,
)
from research.data.config import DataConfig
from research.models import ModelConfig
from research.tasks.seq2seq import Seq2seqConfig
from research.train.config import parse


def _declared(cls, exclude=()):
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name not in exclude}


def test_the_skeleton_holds_every_declared_default_once():
    c = defaults()
    top = {k: c[k] for k in _declared(TrainConfig)}
    assert top == _declared(TrainConfig)
    assert c.optimizer.to_dict() == _declared(OptimizerConfig)
    assert c.mesh.to_dict() == _declared(MeshConfig)
    assert c.data.to_dict() == _declared(DataConfig)
    assert c.model.to_dict() == _declared(ModelConfig, MODEL_SIZE_FIELDS)
    # A None default (num_kv_heads) is a typed placeholder: an int override is accepted.
    c.model.num_kv_heads = 2
    assert parse(c).model.kv_heads == 2


def test_parse_gives_typed_frozen_sections():
    run = parse(seq2seq.get_config("smoke"))
    assert isinstance(run.task_config, Seq2seqConfig) and run.task_config.eval_beams == (1, 2)
    assert isinstance(run.data, DataConfig) and run.model.vocab_size == run.data.vocab_size
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.train.batch_size = 3


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("optimizer", "lr", 0.1, "optimizer: unknown keys ['lr']; allowed: adam_b1"),
        ("data", "seq_len", 1, "data.seq_len=1: must be >= 2"),
        ("data", "vocab_size", 0, "data.vocab_size=0: must be a positive int"),
        ("model", "vocab_size", 7, "model: ['vocab_size'] come from the data"),
        ("seq2seq", "eval_beams", (1, 0), "seq2seq.eval_beams=(1, 0): must be positive ints"),
        ("seq2seq", "remedy", "dropout", "seq2seq.remedy='dropout': allowed none, random_"),
        # Checked by the ops only while the step is traced: here before anything compiles.
        ("seq2seq", "label_smoothing", 1.5, "seq2seq.label_smoothing=1.5: must be in [0, 1)"),
        ("seq2seq", "replace_token_prob", 2.0, "seq2seq.replace_token_prob=2.0: must be in [0,"),
        ("seq2seq", "replace_pool", "bogus", "seq2seq.replace_pool='bogus': allowed target, voc"),
        ("seq2seq", "ss_schedule", "bogus", "seq2seq.ss_schedule='bogus': allowed constant, li"),
        ("seq2seq", "sample_temperature", 0.0, "seq2seq.sample_temperature=0.0: must be > 0"),
        ("seq2seq", "ss_k", 0.5, "seq2seq.ss_k=0.5 does not fit ss_schedule='inverse_sigmoid'"),
        ("optimizer", "adam_b1", 1.5, "optimizer.adam_b1=1.5: must be in [0, 1)"),
        ("optimizer", "adam_eps", -1.0, "optimizer.adam_eps=-1.0: must be > 0"),
    ],
)
def test_bad_values_are_one_line_config_errors(section, key, value, message):
    c = seq2seq.get_config("smoke")
    c.unlock()
    c[section][key] = value
    with pytest.raises(ConfigError) as e:
        parse(c)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("seed", [-1, 2**31])
def test_a_seed_outside_the_generators_range_is_one_line(seed):
    """grain and NumPy take seeds in [0, 2**32 - 1], and data streams add small salts to the
    run's seed: outside [0, 2**31 - 1], one line before any data (and for a study's seeds)."""
    c = seq2seq.get_config("smoke")
    c.seed = seed
    with pytest.raises(ConfigError, match=r"^seed=.*: must be an int in \[0, 2\*\*31 - 1\]$"):
        parse(c)
    with pytest.raises(ConfigError, match=r"^seeds=\(0, .*\): must be distinct ints in \[0, 2"):
        seed_list((0, seed))


def test_a_sweep_value_given_twice_is_refused_before_anything_trains(tmp_path):
    """A repeated rate, width or form read the same run again and counted it as another seed
    ("0.900 ± 0.000" from one run)."""
    assert as_list("1e-3,0.001", float, name="lr") == (0.001, 0.001)  # a plain list may repeat
    with pytest.raises(ConfigError, match=r"^lr='1e-3,0.001': 0.001 is given twice; values"):
        as_list("1e-3,0.001", float, name="lr", distinct=True)
    from configs import gelu as gelu_config
    from research.experiments import gelu

    c = gelu_config.get_config("smoke")
    c.activations = ("gelu", "gelu")
    with pytest.raises(ConfigError, match=r"^activations=\('gelu', 'gelu'\): 'gelu' is given"):
        gelu.run(c, str(tmp_path))
    assert not list(tmp_path.iterdir())


def test_a_data_dir_under_a_file_is_one_line(tmp_path):
    """It failed deep in a dataset builder (NotADirectoryError) after the config was taken."""
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    c = seq2seq.get_config("smoke")
    c.data.data_dir = str(afile / "data")
    with pytest.raises(ConfigError, match=f"^data.data_dir=.*: {afile} is a file, not a folder$"):
        parse(c)


def test_unknown_top_level_key_and_task_are_named():
    c = lm.get_config("smoke")
    c.unlock()
    c.seq2seq = ConfigDict({"layout": "encdec"})  # another task's section
    with pytest.raises(ConfigError, match=r"unknown keys \['seq2seq'\] for task='lm'"):
        parse(c)
    c = lm.get_config("smoke")
    c.task = "no_such_task"
    with pytest.raises(ConfigError, match="task='no_such_task': allowed lm, mqar, seq2seq"):
        parse(c)


def test_lists_are_lists_whichever_way_they_are_written():
    assert as_list((16, 32), int) == (16, 32)
    assert as_list("16, 32", int) == (16, 32)
    # ml_collections passes `--config.attentions=softmax,elu` to a tuple field as one element.
    assert as_list(("softmax,elu",)) == ("softmax", "elu")
    with pytest.raises(ConfigError, match="widths='16,x': expected a list of int"):
        as_list("16,x", int, name="widths")
    with pytest.raises(ConfigError, match="widths is empty"):
        as_list((), int, name="widths")
    c = compare_attention.get_config()
    assert c.widths == (64,) and c.learning_rates == (1e-2,)


@pytest.mark.parametrize("config", ["mqar", "chat", "classify", "mlm", "seq2seq"])
def test_document_boundaries_outside_the_lm_is_refused(config):
    """Only the lm task packs documents: elsewhere the switch was accepted and ignored."""
    import importlib

    c = importlib.import_module(f"configs.{config}").get_config("smoke")
    c.data.document_boundaries = True
    with pytest.raises(ConfigError, match=r"^data.document_boundaries=True: the \w+ task does not"):
        parse(c)
    c = lm.get_config("smoke")
    c.data.document_boundaries = True
    assert parse(c).data.document_boundaries
