"""One smoke MLM for the BERT-family tests (classify, PET, Theseus, seq2seq from a BERT): built
once per session (for all xdist workers, tests/once.py) on People's Daily and the reviews, in its
own data directory, read-only afterwards (load_trained). Each worker has its own `data_dir`."""

import numpy as np
import pytest

from configs import mlm as mlm_config
from research.train import loop
from research.train.config import parse
from tests.once import once


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("zh_data"))


@pytest.fixture(scope="session")
def mlm_workdir(tmp_path_factory):
    def build(path):
        c = mlm_config.get_config("smoke")  # 2 layers
        c.data.data_dir = str(path / "data")
        summary = loop.train_and_evaluate(parse(c), str(path / "mlm"))
        assert np.isfinite(summary.final_train_loss)

    return once(tmp_path_factory, "zh-smoke-mlm", build)[0] / "mlm"
