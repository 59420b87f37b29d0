"""LNSLinear and convert_to_lns: accuracy against the fp32 nn.Linear, storage, in-place conversion, and that the
config's bits and block sizes reach the kernel (the Triton kernel runs in the interpreter on CPU).

Stated tolerance vs the fp32 nn.Linear (normwise relative error of the output): the format's per-weight bound,
2.19e-2 (8-bit) and 1.69e-4 (16-bit) (see tests/kernels/test_lns.py). Each output is a sum of products whose
relative errors are independent and at most that bound, so the normwise error of a random layer sits well
under it (measured about 1.3e-2 and 1e-4).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kernels.lns as lns
from kernels.lns import relative_error_bound
from model.config import Phase1Config
from model.lns_linear import LNSLinear, convert_to_lns


def cfg(**kw) -> Phase1Config:
    return Phase1Config(lns_enabled=True, **kw)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize("bits", [8, 16])
def test_output_is_within_the_format_bound_of_the_fp32_linear(bits):
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    layer = LNSLinear.from_linear(linear, cfg(lns_bits=bits))
    x = torch.randn(3, 7, 96)  # [..., K] input: flattened and restored
    with torch.no_grad():
        ref = linear(x)
        y = layer(x)
    assert y.shape == (3, 7, 40) and y.dtype == torch.float32
    assert rel_err(y, ref) <= relative_error_bound(bits)
    assert rel_err(y, ref) > 0  # it is a lossy format: a zero here would mean the weights were not encoded


def test_triton_path_matches_the_fp32_linear_in_fp16():
    torch.manual_seed(1)
    linear = nn.Linear(65, 33)
    layer = LNSLinear.from_linear(linear, cfg(lns_bits=16, lns_block_size_m=16, lns_block_size_n=16,
                                              lns_block_size_k=32))
    layer.backend = "triton"
    x = torch.randn(2, 9, 65)
    with torch.no_grad():
        y = layer(x.half())
        ref = linear(x)
    assert y.dtype == torch.float16
    assert rel_err(y, ref) < 2e-3  # fp16 decode + fp16 output (unit roundoff 2^-11) on top of the 16-bit code


def test_storage_bytes_against_fp32_and_bf16_weights():
    linear = nn.Linear(256, 128, bias=True)
    fp32_bytes, bf16_bytes = 256 * 128 * 4, 256 * 128 * 2
    l8 = LNSLinear.from_linear(linear, cfg(lns_bits=8))
    l16 = LNSLinear.from_linear(linear, cfg(lns_bits=16))
    assert l8.storage_bytes() == 256 * 128 * 1 + 128 * 4  # codes + int32 offsets
    assert l16.storage_bytes() == 256 * 128 * 2 + 128 * 4
    assert l8.storage_bytes() / fp32_bytes == pytest.approx(0.25, abs=0.01)  # 1/4 + 1/K
    assert l8.storage_bytes() < 0.51 * bf16_bytes
    assert l16.storage_bytes() < 0.51 * fp32_bytes  # 16-bit codes are the size of bf16 (+ offsets), not smaller
    assert l8.codes.dtype == torch.int8 and l16.codes.dtype == torch.int16
    assert list(l8.parameters()) == []  # inference only: nothing to train


def test_convert_to_lns_replaces_every_linear_in_place_and_counts_them():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(),
        nn.Sequential(nn.Linear(32, 32, bias=False), nn.LayerNorm(32), nn.Sequential(nn.Linear(32, 8))),
    )
    x = torch.randn(5, 16)
    with torch.no_grad():
        ref = model(x)
    config = cfg(lns_bits=16, lns_block_size_m=32, lns_block_size_n=64, lns_block_size_k=16)
    assert convert_to_lns(model, config) == 3
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    layers = [m for m in model.modules() if isinstance(m, LNSLinear)]
    assert len(layers) == 3 and layers[1].bias is None
    assert all(m.bits == 16 and (m.block_m, m.block_n, m.block_k) == (32, 64, 16) for m in layers)
    assert isinstance(model[1], nn.ReLU) and isinstance(model[2][1], nn.LayerNorm)  # the rest untouched
    with torch.no_grad():
        assert rel_err(model(x), ref) < 1e-3
    assert convert_to_lns(model, config) == 0  # nothing left to convert


def test_convert_rejects_a_bare_linear_and_a_non_config():
    with pytest.raises(ValueError, match="from_linear"):
        convert_to_lns(nn.Linear(4, 4), cfg())
    with pytest.raises(ValueError, match="Phase1Config"):
        convert_to_lns(nn.Sequential(nn.Linear(4, 4)), {"lns_bits": 8})


def test_config_block_sizes_reach_the_kernel_launch(monkeypatch):
    launches = []
    kernel = lns._lns_matmul_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((grid, kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["BLOCK_K"], kwargs["Q"]))
                return kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(lns, "_lns_matmul_kernel", Spy())
    torch.manual_seed(3)
    x = torch.randn(80, 48)  # M > 64: lns_matmul's auto variant runs the tiled kernel with the config's tiles
    outs = []
    for blocks, bits in [((16, 16, 16), 8), ((64, 32, 32), 16)]:
        model = nn.Sequential(nn.Linear(48, 40))
        convert_to_lns(model, cfg(lns_bits=bits, lns_block_size_m=blocks[0], lns_block_size_n=blocks[1],
                                  lns_block_size_k=blocks[2]))
        model[0].backend = "triton"
        with torch.no_grad():
            outs.append(model(x))
    # grid = ceil(80 / BM) * ceil(40 / BN) programs; Q = 2^(bits-1) - 1 from lns_bits.
    assert launches == [((5 * 3,), 16, 16, 16, 127), ((2 * 2,), 64, 32, 32, 32767)]
    assert all(o.shape == (80, 40) for o in outs)


def test_inference_only_forward_needs_no_grad():
    layer = LNSLinear.from_linear(nn.Linear(8, 4), cfg())
    x = torch.randn(2, 8, requires_grad=True)
    with pytest.raises(ValueError, match="inference-only"):
        layer(x)
    with torch.inference_mode():
        assert layer(x).shape == (2, 4)


def test_autocast_and_half_behave_like_nn_linear():
    torch.manual_seed(4)
    linear = nn.Linear(32, 16)
    layer = LNSLinear.from_linear(linear, cfg(lns_bits=16))
    x = torch.randn(4, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, ref = layer(x), linear(x)
    assert y.dtype == ref.dtype == torch.bfloat16
    assert rel_err(y, ref) < 1e-2
    offsets = layer.offsets.clone()
    layer.half()  # integer buffers keep the format; only the bias follows the dtype
    assert layer.codes.dtype == torch.int16 and torch.equal(layer.offsets, offsets)
    assert layer.bias.dtype == torch.float16


def test_state_dict_round_trip_and_bad_input():
    torch.manual_seed(5)
    src = LNSLinear.from_linear(nn.Linear(24, 12), cfg())
    dst = LNSLinear(24, 12, bits=8)
    dst.load_state_dict(src.state_dict())
    x = torch.randn(3, 24)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))
        with pytest.raises(ValueError, match="in_features 24"):
            dst(torch.randn(3, 23))
    with pytest.raises(ValueError, match="block_k: 48"):
        LNSLinear(24, 12, block_k=48)
