"""One smoke MLM for the BERT-family tests (classify, PET, Theseus, seq2seq from a BERT): built
once per session on People's Daily and the reviews, read-only afterwards (load_trained)."""

import numpy as np
import pytest

from configs import mlm as mlm_config
from research.train import loop
from research.train.config import parse


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("zh_data"))


@pytest.fixture(scope="session")
def mlm_workdir(tmp_path_factory, data_dir):
    c = mlm_config.get_config("smoke")  # 2 layers
    c.data.data_dir = data_dir
    workdir = tmp_path_factory.mktemp("mlm")
    summary = loop.train_and_evaluate(parse(c), str(workdir))
    assert np.isfinite(summary.final_train_loss)
    return workdir
