"""model/train_checks.py: what train_and_evaluate refuses before building anything (each a one-line error)."""

from __future__ import annotations

import pytest

from model.config import ConfigError, Phase1Config
from model.data import DataError, DataSource, prepare_data
from model.train_checks import check_inputs
from tests.model.test_train import TINY, VOCAB

# Its module-scoped fixture runs once per pytest-xdist process: keep the module's tests on one (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("train_checks")


@pytest.fixture(scope="module")
def tiny_config():
    return Phase1Config(**TINY)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):  # real tokens from the stdlib corpus
    return prepare_data(DataSource("stdlib", max_bytes=300_000), VOCAB, tmp_path_factory.mktemp("cache"))


def test_budgets_must_be_positive_integers(tiny_config, tiny_data):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="train_tokens"):
            check_inputs(tiny_config, tiny_data, bad, 64)
        with pytest.raises(ValueError, match="eval_tokens"):
            check_inputs(tiny_config, tiny_data, 64, bad)
    check_inputs(tiny_config, tiny_data, 64, 64)  # a valid call raises nothing


def test_a_vocabulary_mismatch_names_the_fix(tiny_config, tiny_data):
    other = tiny_config.replace(vocab_size=tiny_data.vocab_size + 1)
    with pytest.raises(ConfigError, match=f"prepare the data with vocab_size={tiny_data.vocab_size + 1}"):
        check_inputs(other, tiny_data, 64, 64)


def test_a_split_shorter_than_one_window_is_a_data_error(tiny_config, tiny_data):
    longer = tiny_config.replace(n_seq=tiny_data.n_val_tokens + 5)
    with pytest.raises(DataError, match="n_seq"):
        check_inputs(longer, tiny_data, 64, 64)
