"""model.diagnostics.representation_effective_rank on matrices whose singular values are known."""

from __future__ import annotations

import math

import pytest
import torch

from model.diagnostics import representation_effective_rank as erank


def test_rank_one_is_one():
    u, v = torch.randn(300, 1), torch.randn(1, 40)
    assert erank(u @ v) == pytest.approx(1.0, abs=1e-4)  # tall: Gram path (float32 rounding: ~2e-6)
    assert erank((u @ v).T) == pytest.approx(1.0, abs=1e-4)  # wide: SVD path


@pytest.mark.parametrize("n", [1, 7, 64])
def test_identity_is_n(n):
    assert erank(torch.eye(n)) == pytest.approx(n, rel=1e-9)


def test_orthogonal_times_scale_is_full_rank():
    q, _ = torch.linalg.qr(torch.randn(200, 30, dtype=torch.float64))
    assert erank(5.0 * q) == pytest.approx(30.0, rel=1e-9)


def test_known_spectrum():
    # singular values (3, 1): p = (0.75, 0.25), rank = exp(-(0.75 ln 0.75 + 0.25 ln 0.25))
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    q1, _ = torch.linalg.qr(torch.randn(50, 2, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(2, 2, dtype=torch.float64))
    h = q1 @ torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)) @ q2
    assert erank(h) == pytest.approx(expected, rel=1e-9)
    assert erank(torch.diag(torch.tensor([2.0, 2.0, 0.0, 0.0]))) == pytest.approx(2.0, rel=1e-9)


def test_low_precision_input_and_edge_cases():
    h = torch.randn(128, 16)
    assert erank(h.to(torch.bfloat16)) == pytest.approx(erank(h), rel=0.02)
    assert 1.0 < erank(h) <= 16.0
    assert erank(torch.zeros(10, 4)) == 0.0
    assert math.isnan(erank(torch.full((3, 3), float("nan"))))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        erank(torch.randn(2, 3, 4))
