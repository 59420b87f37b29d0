"""The LNS matmul's in-kernel decode (`_decode_tile`), checked for every code against the exact value, in the Triton
interpreter (TRITON_INTERPRET=1 from tests/conftest.py). The matmul itself is tested in test_lns.py.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from kernels.lns import DEFAULT_FRAC_BITS
from kernels.lns_triton import _decode_tile


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
