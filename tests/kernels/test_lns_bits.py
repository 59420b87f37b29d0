"""The bit-construction decode of 8-bit LNS codes (kernels/lns_bits.py): its polynomial hits every mantissa however
the compiler groups the multiply-adds, and the in-kernel decode is bit-exact for every code (Triton interpreter,
TRITON_INTERPRET=1 from tests/conftest.py). The matmul variants that use it are tested in test_lns_small.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from kernels.lns_bits import _MAGIC, MANT_POLY, bits_decode_supported, decode_bits, mantissa_table
from kernels.lns_small import decode_byte_exp2
from kernels.lns_triton import _decode_codes


@pytest.mark.parametrize("mant_bits", [10, 7], ids=["fp16", "bf16"])
def test_cubic_rounds_to_every_mantissa_fused_or_not(mant_bits):
    """GPU code fuses `p * u + magic` into one FMA (single rounding); the interpreter multiplies, rounds, adds."""
    c3, c2, c1 = (np.float32(c) for c in MANT_POLY[mant_bits])
    u = np.arange(16, dtype=np.float32)
    want = np.array(mantissa_table(mant_bits))
    exact = ((float(c3) * u + float(c2)) * u + float(c1)) * u
    assert np.abs(exact - want).max() < 0.38  # the margin to the rounding boundary is > 0.12
    mask = (1 << mant_bits) - 1
    unfused = ((c3 * u + c2) * u + c1) * u + np.float32(_MAGIC)  # every op rounded to fp32
    # fused: each FMA rounded once (float64 holds the products and sums of these fp32 values exactly enough)
    p = np.float32(np.float64(c3) * u + np.float64(c2))
    p = np.float32(np.float64(p) * u + np.float64(c1))
    fused = np.float32(np.float64(p) * u + _MAGIC)
    for r in (unfused, fused):
        assert r.dtype == np.float32
        assert ((r.view(np.int32) & mask) == want).all()


def test_mantissa_table_has_no_ties_and_the_format_check():
    for mant_bits in (10, 7):
        scaled = [(2.0 ** (j / 16) - 1.0) * 2**mant_bits for j in range(16)]
        assert min(abs(s - int(s) - 0.5) for s in scaled) > 0.08
    assert bits_decode_supported(8, 4)
    assert not bits_decode_supported(8, 3) and not bits_decode_supported(16, 11)


@triton.jit
def _decode_all(c_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)[None, :]  # 2-D, as the kernels' tiles are
    c = tl.load(c_ptr + offs, mask=offs < n, other=0)
    tl.store(out_ptr + offs, decode_bits(c, out_ptr.dtype.element_ty), mask=offs < n)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_every_code_decodes_bit_exactly(dtype):
    codes = torch.arange(-127, 128, dtype=torch.int32).to(torch.int8)
    out = torch.full(codes.shape, float("nan"), dtype=dtype)
    _decode_all[(1,)](codes, out, codes.numel(), BLOCK=256)
    exact = torch.sign(codes.double()) * torch.exp2((codes.abs().double() - 127) / 16)
    # fp16/bf16: one round-to-nearest-even of the exact value; fp32: the fp16 rounding, held exactly
    want = exact.to(torch.float16 if dtype == torch.float32 else dtype).to(dtype)
    want[codes == 0] = 0.0
    assert torch.equal(out, want)
    assert not torch.signbit(out[codes == 0]).any()  # the zero code is +0
    assert torch.equal(torch.sign(out), torch.sign(codes).to(dtype))


@triton.jit
def _decode_pair(c_ptr, a_ptr, b_ptr, n, inv_step, Q: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)[None, :]
    c = tl.load(c_ptr + offs, mask=offs < n, other=0)
    tl.store(a_ptr + offs, decode_byte_exp2(c, inv_step, Q), mask=offs < n)
    tl.store(b_ptr + offs, _decode_codes(c, inv_step, Q), mask=offs < n)


@pytest.mark.parametrize("frac_bits", [0, 3, 4, 6])
def test_byte_exp2_decode_equals_the_exp2_decode_for_every_code(frac_bits):
    """gemv's fp32 decode from the raw byte: the same exp2 argument, so bit-identical to `_decode_codes`."""
    codes = torch.arange(-127, 128, dtype=torch.int32).to(torch.int8)
    got, want = torch.empty(255), torch.empty(255)
    _decode_pair[(1,)](codes, got, want, 255, 2.0**-frac_bits, Q=127, BLOCK=256)
    assert torch.equal(got, want) and got[codes == 0].item() == 0.0 and not torch.signbit(got[codes == 0]).any()
    assert torch.equal(torch.sign(got), torch.sign(codes).float())
