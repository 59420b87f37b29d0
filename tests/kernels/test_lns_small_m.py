"""The LNS matmul's in-kernel decode (every code, exactly) and its small-M split-K kernel and dispatch by M, against
the torch reference, in the Triton interpreter (TRITON_INTERPRET=1 from tests/conftest.py). Tolerances: see
test_lns.py (the same for both kernels).
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

import kernels.lns as lns
import kernels.lns_launch as lns_launch
from kernels.lns import (
    DEFAULT_FRAC_BITS,
    lns_encode,
    lns_matmul,
    lns_matmul_ref,
    uses_skinny_kernel,
)
from kernels.lns_launch import SkinnyConfig, lns_matmul_skinny, skinny_config
from kernels.lns_triton import _decode_tile
from tests.kernels.test_lns import assert_close_to_ref

# --- in-kernel decode: exact for every code ------------------------------------------------------------------


@triton.jit
def _decode_all(c_ptr, out_ptr, n, inv_step, Q: tl.constexpr, BLOCK: tl.constexpr, INTERPRET: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)[None, :]  # 2-D, as the kernels' tiles are
    c = tl.load(c_ptr + offs, mask=offs < n, other=0)
    tl.store(out_ptr + offs, _decode_tile(c, inv_step, Q, out_ptr.dtype.element_ty, INTERPRET), mask=offs < n)


def _decode_every_code(bits: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes -Q..Q as int64, the kernels' decode `_decode_tile` of each, in `dtype`), through the interpreter."""
    q = (1 << (bits - 1)) - 1
    codes = torch.arange(-q, q + 1, dtype=torch.int32).to(torch.int8 if bits == 8 else torch.int16)
    out = torch.empty(codes.shape, dtype=dtype)
    _decode_all[(triton.cdiv(codes.numel(), 1024),)](codes, out, codes.numel(), 2.0 ** -DEFAULT_FRAC_BITS[bits],
                                                     Q=q, BLOCK=1024, INTERPRET=True)
    return codes.to(torch.int64), out


def _rne(v: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 v > 0 rounded to nearest-even in fp16/bf16 (normal or subnormal), and v's relative distance to the
    nearest rounding tie (exact arithmetic: scaling by powers of two and rounding to an integer)."""
    mant_bits, min_ulp = (10, 2.0**-24) if dtype == torch.float16 else (7, 2.0**-133)
    _, e = torch.frexp(v)  # v = m * 2^e, m in [0.5, 1)
    ulp = torch.exp2((e - 1 - mant_bits).to(torch.float64)).clamp(min=min_ulp)  # fp16 subnormals: below 2^-14
    scaled = v / ulp
    return torch.round(scaled) * ulp, (scaled - scaled.floor() - 0.5).abs() * ulp / v


@pytest.mark.parametrize("bits", [8, 16])
def test_in_kernel_decode_is_exact_for_every_code(bits):
    """Each dot dtype's decode path: fp32 (tf32 dot; 16-bit codes into fp16/bf16 round its result) and the packed
    fp16 arithmetic of 8-bit codes into fp16/bf16."""
    q, f = (1 << (bits - 1)) - 1, DEFAULT_FRAC_BITS[bits]
    codes, got32 = _decode_every_code(bits, torch.float32)
    mag = codes.abs()
    exact = torch.exp2((mag - q).to(torch.float64) / 2**f)
    nz = codes != 0
    # fp32 decode: within 2^-22 of the exact value (the budget the module docstring gives the GPU's ex2.approx).
    assert ((got32[nz].double().abs() - exact[nz]).abs() / exact[nz]).max().item() <= 2.0**-22
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        got = got32 if dtype == torch.float32 else _decode_every_code(bits, dtype)[1]
        assert got.dtype == dtype
        assert got[~nz].item() == 0.0 and not torch.signbit(got[~nz]).any()  # the zero code: +0 exactly
        assert torch.equal(torch.sign(got), torch.sign(codes).to(dtype))
        assert torch.equal(got[codes < 0], -got.flip(0)[codes.flip(0) > 0])  # -c decodes to exactly -decode(c)
        if dtype == torch.float32:
            continue
        want, tie_dist = _rne(exact[nz], dtype)
        assert torch.equal(got[nz].abs().double(), want), dtype  # bit-exact RNE of the exact value, every code
        if bits == 8 or dtype == torch.bfloat16:
            # ... with a margin that also covers the GPU's exp2 error: the docstring's figures
            assert tie_dist.min().item() >= (5.4e-5 if dtype == torch.float16 and bits == 8 else
                                             4.9e-4 if bits == 8 else 1.1e-6) > 2.0**-22
        else:
            # 16-bit codes into fp16: the docstring's 86 near-tie magnitudes (out of 32767, each sign) are where a
            # GPU's exp2 may round to the neighbouring fp16 value.
            assert int((tie_dist < 2.0**-21).sum()) == 2 * 86


# --- small-M (split-K) kernel and the dispatch by M ----------------------------------------------------------


@pytest.mark.parametrize("M", [1, 3, 17, 64, 65])
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_small_m_matches_reference_on_odd_shapes(dtype, bits, M):
    """Default tiles (128, 128, 32): M <= 64 runs the small-M kernel, M = 65 the tiled one."""
    torch.manual_seed(6)
    N, K = 47, 301
    x = torch.randn(M, K).to(dtype)
    lw = lns_encode(torch.randn(N, K) * 0.05, bits)
    bias = torch.randn(N)
    assert uses_skinny_kernel(M, 128) == (M <= 64)
    y = lns_matmul(x, lw, backend="triton", bias=bias)
    assert y.dtype == dtype and y.shape == (M, N)
    assert_close_to_ref(y, lns_matmul_ref(x, lw, bias), dtype)


@pytest.mark.parametrize("cfg", [SkinnyConfig(16, 16, 16, 1, 80), SkinnyConfig(16, 32, 16, 3, 32),
                                 SkinnyConfig(32, 64, 32, 2, 64), SkinnyConfig(64, 16, 64, 2, 64)],
                         ids=lambda c: "B{}x{}x{}-split{}".format(*c))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_small_m_split_k_configs_match_reference_and_reset_their_counters(dtype, cfg):
    torch.manual_seed(7)
    M, N, K = min(cfg.block_m, 13), 37, 75  # K = 75: the last slice is partial, and so is its last K step
    x = torch.randn(M, K).to(dtype)
    lw = lns_encode(torch.randn(N, K) * 0.05, 8)
    bias = torch.randn(N)
    ref = lns_matmul_ref(x, lw, bias)
    for _ in range(2):  # a second call only works if the first left the split-K counters at 0
        y = lns_matmul_skinny(x, lw.codes, lw.offsets, lw.frac_bits, lw.max_code, bias, cfg)
        assert_close_to_ref(y, ref, dtype)
    assert int(lns_launch._COUNTERS[x.device].abs().sum()) == 0


def test_small_m_rejects_configs_that_do_not_cover_the_problem():
    lw = lns_encode(torch.randn(8, 64), 8)
    x = torch.randn(20, 64)
    for cfg in [SkinnyConfig(16, 16, 16, 1, 64), SkinnyConfig(32, 16, 16, 2, 16), SkinnyConfig(32, 16, 16, 3, 24)]:
        with pytest.raises(ValueError, match="does not cover"):
            lns_matmul_skinny(x, lw.codes, lw.offsets, lw.frac_bits, lw.max_code, None, cfg)
    with pytest.raises(ValueError, match="M = 65"):
        lns_matmul_skinny(torch.randn(65, 64), lw.codes, lw.offsets, lw.frac_bits, lw.max_code, None)


def test_small_m_handles_strided_input_and_zero_rows():
    torch.manual_seed(8)
    x = torch.randn(65, 5, dtype=torch.float16).t()  # [5, 65], K stride 5: not contiguous
    lw = lns_encode(torch.randn(20, 65), 8)
    assert_close_to_ref(lns_matmul(x, lw, backend="triton"), lns_matmul_ref(x, lw), torch.float16)
    assert lns_matmul_skinny(x[:0], lw.codes, lw.offsets, lw.frac_bits, lw.max_code, None).shape == (0, 20)


def test_dispatch_by_m_launches_one_kernel_or_the_other(monkeypatch):
    launches = []

    def spy(name, kernel):
        class Spy:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    launches.append((name, grid, kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["BLOCK_K"],
                                     kwargs.get("SPLIT_K")))
                    return kernel[grid](*args, **kwargs)
                return launch
        return Spy()

    monkeypatch.setattr(lns, "_lns_matmul_kernel", spy("tiled", lns._lns_matmul_kernel))
    monkeypatch.setattr(lns_launch, "_lns_skinny_kernel", spy("skinny", lns_launch._lns_skinny_kernel))
    lw = lns_encode(torch.randn(100, 512), 8)
    for M, bm in [(1, 128), (64, 128), (65, 128), (8, 16), (9, 16)]:
        lns_matmul(torch.randn(M, 512), lw, bm, 64, 32, backend="triton")
    cfg1, cfg64 = skinny_config(1, 100, 512, 4, 1), skinny_config(64, 100, 512, 4, 1)
    assert launches == [
        ("skinny", (2, cfg1.split_k), 16, 64, 128, cfg1.split_k),
        ("skinny", (1, cfg64.split_k), 64, 128, 64, cfg64.split_k),
        ("tiled", (1 * 2,), 128, 64, 32, None),
        ("skinny", (2, cfg1.split_k), 16, 64, 128, cfg1.split_k),
        ("tiled", (1 * 2,), 16, 64, 32, None),  # 9 rows fill more than half of a 16-row tile: the caller's tiles
    ]
    assert cfg1.split_k > 1  # 2 column tiles on the interpreter's stand-in 4 SMs: K is split


@pytest.mark.parametrize("M, want", [(1, (16, 64, 128, 4, 1024)), (16, (16, 64, 128, 4, 1024)),
                                     (64, (64, 128, 64, 8, 512))])
def test_small_m_config_on_an_h100_fills_the_sms(M, want):
    """K = N = 4096 on 132 SMs: 2 programs on most SMs (256 in all), >= 2 K steps each, split-K partials <= 1/2 of
    the 8-bit codes."""
    cfg = skinny_config(M, 4096, 4096, 132, 1)
    assert tuple(cfg) == want
    programs = (4096 // cfg.block_n) * cfg.split_k
    assert programs == 256 and cfg.k_split >= 2 * cfg.block_k and cfg.split_k * cfg.k_split == 4096
    assert cfg.split_k * M * 4096 * 4 <= 4096 * 4096 // 2
    assert skinny_config(1, 4096, 32, 132, 1) == SkinnyConfig(16, 64, 32, 1, 32)  # one K step: no split
    # Too small to fill the SMs: as many programs as 2-step slices allow (16 column tiles x 4 slices).
    assert skinny_config(8, 1024, 1024, 132, 1) == SkinnyConfig(16, 64, 128, 4, 256)
    # 172 column tiles: 3 slices put 516 programs on 132 SMs evenly (4 on most), where 2 would put 2 or 3.
    assert skinny_config(1, 11008, 4096, 132, 1).split_k == 3
