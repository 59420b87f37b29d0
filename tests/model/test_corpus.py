"""model.corpus: the "python" source (standard library, then site-packages) and the unigram floor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.corpus import DataError, DataSource, read_documents
from model.data import prepare_data, unigram_val_loss


def test_python_source_reads_the_stdlib_first_then_packages():
    stdlib = read_documents(DataSource("stdlib", max_bytes=200_000))
    python = read_documents(DataSource("python", max_bytes=200_000))
    # the same standard-library text, in the same order, under a prefix
    assert [name for name, _ in python.docs] == [f"0-stdlib/{name}" for name, _ in stdlib.docs]
    assert [text for _, text in python.docs] == [text for _, text in stdlib.docs]
    big = read_documents(DataSource("python", max_bytes=60 * 2**20))  # past the ~30 MiB standard library
    assert big.n_bytes > 40 * 2**20
    assert any(name.startswith("1-site/") for name, _ in big.docs)
    assert "site-packages" in DataSource("python").describe()


def test_unknown_kind_names_the_choices():
    with pytest.raises(DataError, match="'stdlib', 'python', 'files', 'hf'"):
        DataSource("pypi")


def test_unigram_loss_is_the_smoothed_count_model(tmp_path):
    data = prepare_data(DataSource("stdlib", max_bytes=200_000), 300, tmp_path)
    counts = np.bincount(np.asarray(data.train), minlength=300) + 1.0
    p = counts / counts.sum()
    targets = np.asarray(data.val[1:1 + 4 * 50])
    expected = -np.log(p[targets]).mean()
    assert unigram_val_loss(data, 50, 200) == pytest.approx(expected, rel=1e-9)
    assert unigram_val_loss(data, 50, 200) < math.log(300)  # frequencies carry information
