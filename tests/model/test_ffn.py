"""Low-rank FFN: act(x U1 V1) U2 V2, its parameter formula, position-wise, ffn_rank's effect."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.config import Phase1Config
from model.ffn import LowRankFFN, ffn_layer_param_count, ffn_param_count
from tests.model.tiny import cfg, n_params


@pytest.mark.parametrize("rank", [1, 4, 7, 32])
def test_param_count_formula(rank):
    c = cfg(ffn_rank=rank)
    assert n_params(LowRankFFN(c)) == ffn_layer_param_count(c) == rank * (32 + 128) + rank * (128 + 32)
    assert ffn_param_count(c) == 2 * ffn_layer_param_count(c)


def test_ffn_rank_changes_params_as_predicted_and_is_below_dense():
    a, b = cfg(ffn_rank=2), cfg(ffn_rank=8)
    assert n_params(LowRankFFN(b)) - n_params(LowRankFFN(a)) == ffn_layer_param_count(b) - ffn_layer_param_count(a) > 0
    big = Phase1Config(d_model=1024, ffn_rank=64)
    assert ffn_layer_param_count(big) == 10 * 1024 * 64 < 8 * 1024 * 1024


def test_computes_the_written_formula():
    torch.manual_seed(0)
    f = LowRankFFN(cfg())
    x = torch.randn(2, 5, 32)
    expected = F.gelu(x @ f.U1.weight.t() @ f.V1.weight.t()) @ f.U2.weight.t() @ f.V2.weight.t()
    torch.testing.assert_close(f(x), expected, rtol=1e-5, atol=1e-6)
    assert f.V1.out_features == 4 * 32


def test_position_wise():
    torch.manual_seed(0)
    f = LowRankFFN(cfg())
    x = torch.randn(2, 6, 32)
    x2 = x.clone()
    x2[:, 3] += 1.0
    d = (f(x) - f(x2)).abs().amax(dim=(0, 2))
    assert d[3] > 0 and torch.equal(d[torch.arange(6) != 3], torch.zeros(5))


def test_autocast_bf16_and_gradients():
    torch.manual_seed(0)
    f = LowRankFFN(cfg())
    x = torch.randn(2, 6, 32)
    ref = f(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = f(x)
        y.float().pow(2).sum().backward()
    assert y.dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in f.parameters())
    assert all(p.grad.abs().max() > 0 for p in f.parameters())
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.02)
