"""tuner.vram.calibrate, the parts that run without a GPU: calibrating refuses a machine without CUDA (one line),
and the synthetic token data the measurement trains on. The measurement itself runs on a GPU
(bench/estimate_validation.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tuner.vram.calibrate import calibrate_device, synthetic_token_data
from tuner.vram.calibration import CalibrationError


def test_calibrate_device_needs_a_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: calibrate_device is exercised by bench/estimate_validation.py")
    with pytest.raises(CalibrationError, match="needs a CUDA GPU"):
        calibrate_device()


@pytest.mark.parametrize("vocab, dtype", [(97, np.uint16), (65535, np.uint16), (70000, np.uint32)])
def test_synthetic_token_data_is_uniform_ids_in_the_vocab(vocab, dtype):
    data = synthetic_token_data(vocab, n_tokens=5000, seed=1)
    assert data.vocab_size == vocab and data.train.dtype == dtype and data.val.dtype == dtype
    assert len(data.train) == len(data.val) == 5000
    assert 0 <= int(data.train.min()) and int(data.train.max()) < vocab
    assert not np.array_equal(data.train, data.val)  # the split is not one array twice
    assert data.corpus_hash == "synthetic-uniform" and data.from_cache is False


def test_synthetic_token_data_is_reproducible_from_its_seed():
    a, b, c = (synthetic_token_data(97, 100, seed=s) for s in (3, 3, 4))
    assert np.array_equal(a.train, b.train) and not np.array_equal(a.train, c.train)
