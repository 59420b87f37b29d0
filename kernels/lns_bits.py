"""Decode of 8-bit LNS codes by bit construction: the fp16 / bf16 / fp32 bit pattern of `sign(c) * 2^((|c| - Q) / 16)`
is built with integer and fp32 FMA instructions only (no exp2, no int <-> float conversion), for the small-M LNS
kernels (`kernels/lns_small.py`) and, as an option, the tiled one (`kernels/lns_triton.py`).

Why: at M <= 64 the per-code decode, not memory, bounds the LNS matmul on sm_90, and the exp2 decode spends two
quarter-rate instructions per code (MUFU.EX2 and a float conversion): 16 per clock per SM, against 128 for
integer/FMA work. Per code this decode is about a dozen full-rate instructions.

Construction (8-bit codes, f = 4 fractional bits, Q = 127, the default 8-bit format; `bits_decode_supported`):
  * `e_t = |c| - Q + EBIAS * 16` (EBIAS: 15 for fp16, 127 for bf16/fp32). Then `e_t >> 4` is the output's exponent
    field (`floor((|c| - Q) / 16) + EBIAS`, always >= 7: no subnormals) and `j = e_t & 15` the fractional log step.
  * The mantissa of `RNE(2^(j / 16))` (10 bits for fp16 and fp32, 7 for bf16) is a cubic in j with no constant term
    (`mantissa_table` lists the 16 values): `((C3 j + C2) j + C1) j` is within 0.38 (fp16 mantissa) / 0.30 (bf16)
    of the integer for every j (minimax fit over the 16 points), so adding 1.5 * 2^23 rounds it to exactly that
    integer in the low bits of an fp32 - whether the compiler fuses the last multiply-add (GPU) or not (the
    interpreter): fp32 rounding adds < 1e-4 to a margin of > 0.12 (tests/kernels/test_lns_bits.py checks both).
    j itself comes in as a float exactly: the bits `0x4B000000 | j` are the fp32 `2^23 + j`.
  * Output bits `(e_t >> 4) << MANT | mantissa` (one bit-select), the code's sign bit copied, zero code -> +0.
    fp32 output takes the 10-bit (fp16) mantissa: the value is RNE_fp16(2^((|c| - Q) / 16)) held exactly in fp32.
So every code decodes to exactly the value the tiled kernel's exp2 decode rounds to (for fp16/bf16) - the
normalised magnitude in (0, 1], the channel scale applied after the K loop as before.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Minimax cubic (no constant term) through the 16 mantissas of RNE(2^(j/16)), fp32 coefficients, highest power
# first; fitted by linear programming over j = 0..15 and checked in tests/kernels/test_lns_bits.py.
MANT_POLY: dict[int, tuple[float, float, float]] = {
    10: (0.01817803643643856, 0.9281197786331177, 44.42974090576172),  # fp16 mantissa (max error 0.376)
    7: (0.003565062303096056, 0.09090909361839294, 5.654189109802246),  # bf16 mantissa (max error 0.299)
}
_MAGIC = 12582912.0  # 1.5 * 2^23: adding it rounds an fp32 in [0, 2^22) to an integer held in the low mantissa bits


def bits_decode_supported(bits: int, frac_bits: int) -> bool:
    """True for the one format the bit-construction decode serves: 8-bit codes with 4 fractional bits (default)."""
    return bits == 8 and frac_bits == 4


def mantissa_table(mant_bits: int) -> list[int]:
    """The 16 mantissas the cubic must hit: round-to-nearest of (2^(j/16) - 1) * 2^mant_bits (no ties occur)."""
    return [round((2.0 ** (j / 16) - 1.0) * 2**mant_bits) for j in range(16)]


@triton.jit
def _build(
    c, MANT: tl.constexpr, EBIAS: tl.constexpr, POS: tl.constexpr, C3: tl.constexpr, C2: tl.constexpr, C1: tl.constexpr
):
    """int32 bits of the decoded magnitude with the sign bit at 15 (POS < 23) or 31 (POS = 23); see the docstring."""
    mag = tl.abs(c)
    e_t = mag + (EBIAS * 16 - 127)  # exponent field << 4 | j
    u = ((e_t & 15) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0  # = j, exactly
    r = ((C3 * u + C2) * u + C1) * u + 12582912.0  # low MANT bits: the mantissa of RNE(2^(j/16)), exactly
    mant = (r.to(tl.int32, bitcast=True) & ((1 << MANT) - 1)) << (POS - MANT)
    out = ((e_t << (POS - 4)) & ~((1 << POS) - 1)) | mant
    out = tl.where(mag == 0, 0, out)
    sign_bit: tl.constexpr = -2147483648 if POS == 23 else 0x8000  # c is sign-extended: bit 15 is its sign too
    return out | (c & sign_bit)


@triton.jit
def decode_bits(ct, dtype: tl.constexpr):
    """int8 codes (any shape) -> `dtype` (fp16, bf16 or fp32) `sign(c) * RNE(2^((|c| - 127) / 16))`, 0 for c = 0.

    fp16/bf16: the value rounded to nearest-even in that dtype; fp32: the fp16-rounded value, exactly.
    """
    c = ct.to(tl.int32)  # sign-extended
    if dtype == tl.float16:
        out = _build(c, 10, 15, 10, 0.01817803643643856, 0.9281197786331177, 44.42974090576172)
        res = out.to(tl.int16).to(tl.float16, bitcast=True)
    elif dtype == tl.bfloat16:
        out = _build(c, 7, 127, 7, 0.003565062303096056, 0.09090909361839294, 5.654189109802246)
        res = out.to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        out = _build(c, 10, 127, 23, 0.01817803643643856, 0.9281197786331177, 44.42974090576172)
        res = out.to(tl.float32, bitcast=True)
    return res
