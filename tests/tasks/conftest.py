"""The BERT-family tests (classify, PET, Theseus, seq2seq from a BERT) start from the session's
smoke MLM (`mlm_workdir`, tests/conftest.py). Each worker has its own `data_dir`."""

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("zh_data"))
