"""Triton kernel of the LNS matmul `y [M, N] = x [M, K] @ decode(codes [N, K])^T`; the format, the launcher and the
torch reference are in `kernels/lns.py`.

`_lns_matmul_kernel` (tiled) runs every M: a 1-D grid of [BLOCK_M, BLOCK_N] output tiles, each looping over all of K
(`_lns_tile_step`: load an x tile and a code tile, decode, `tl.dot`). A split-K kernel for M <= 64 was measured
slower than this one on an H100 and removed (docs/lns_kernel.md).

Decode (`_decode_tile`): the normalised magnitude `2^((|c| - Q) / 2^f)` is in (0, 1]; the per-channel scale
`2^(o[n] / 2^f)` is applied once in the epilogue. The per-element decode, not memory, bounds the small-M matmul on
sm_90, so it avoids quarter-rate int -> float conversions and per-element compares. Static SASS counts of one K
step per thread (8-bit codes, fp16 x, Triton 3.6 compiling offline for sm_90; not timings): tiled 128/128/32, 16
elements: 333 with the previous exp2 decode -> 206.
  * 8-bit codes, fp16/bf16 dot (`_decode_codes_8bit`): the exp2 argument `(|c| - Q) * 2^-f` is built in fp16,
    which LLVM packs two elements per instruction; every step is exact (see there). exp2 in fp32, one RNE cast.
  * 16-bit codes or the fp32 (tf32) dot (`_decode_codes`): fp32 throughout. The bit pattern `0x4B000000 | m` is
    the float `2^23 + m`, and `(2^23 + m) * 2^-f - (2^23 + Q) * 2^-f` is exactly `(m - Q) * 2^-f`.
  Both send the zero code's argument far below -150 with a float min (exp2 underflows to exact 0) and copy the
  sign bit onto the result.
Exactness: the exp2 (fp32; `ex2.approx` on GPU, error < 2^-22 relative) is rounded to nearest-even fp16/bf16. For
every 8-bit code the exact value lies at least 5.4e-5 (relative) from an fp16 rounding tie and 4.9e-4 from a bf16
one, so the decoded tile is bit-identical to RNE(2^((m - Q) / 16)) on both backends (tests/kernels/
test_lns_decode.py checks every code). For 16-bit codes into fp16, 86 of the 32767 magnitudes lie within 2^-21 of
a tie, where the GPU's ex2.approx may give the neighbouring fp16 value (1 ulp); bf16 is exact for all 16-bit
codes. (16-bit codes span 16 octaves below 1, so their bottom 2 octaves are fp16 subnormals: rounded to multiples
of 2^-24, as the tiled kernel always did.)
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.lns_bits import decode_bits


@triton.jit
def _to_dtype(v, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    """Round fp32 `v` to `dtype` to nearest-even, as compiled code does.

    Triton 3.6's interpreter truncates fp32 -> bf16 casts (it ignores the rounding mode), which would make
    interpreter results less accurate than the GPU's; there we round the fp32 bits to nearest-even first, so
    the truncating cast is exact. Compiled code takes the plain cast (RTNE by default).
    """
    if INTERPRET and dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        v = bits.to(tl.float32, bitcast=True)
    return v.to(dtype)


@triton.jit
def _decode_codes(ct, inv_step, Q: tl.constexpr):
    """Integer codes (any shape, int8/int16/int32) -> fp32 `sign(c) * 2^((|c| - Q) * inv_step)`, exact 0 for c = 0.

    inv_step = 2^-f (fp32). See the module docstring for why the argument is exact and the result bit-exact.
    """
    c = ct.to(tl.int32)
    mag = tl.abs(c)
    biased = (mag | 0x4B000000).to(tl.float32, bitcast=True)  # = 2^23 + |c|, exactly (|c| < 2^23)
    arg = biased * inv_step - (8388608.0 + Q) * inv_step  # = (|c| - Q) * 2^-f, exactly; <= 0
    # Zero code: (|c| - 1) * 2^20 (exact) is >= 0 for every nonzero code, so the min keeps `arg` there, and -2^20
    # for c = 0, where exp2 then underflows to exact 0. A float min: LLVM keeps it one FMNMX, where an integer
    # `c == 0` test became a byte compare, a second byte extraction and a select per element (SASS on sm_90).
    arg = tl.minimum(arg, biased * 1048576.0 - 8388609.0 * 1048576.0)
    v = tl.exp2(arg)
    # Sign: copy c's sign bit (c is sign-extended int32) onto the non-negative value.
    return (v.to(tl.int32, bitcast=True) | (c & -2147483648)).to(tl.float32, bitcast=True)


@triton.jit
def _decode_codes_8bit(ct, inv_step, Q: tl.constexpr, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    """int8 codes -> `dtype` (fp16/bf16) `sign(c) * 2^((|c| - Q) * inv_step)`, rounded to nearest-even; exact 0 for
    c = 0. The same values as `_decode_codes` followed by the cast, with half the integer/float work per element.

    Why: on sm_90 the per-element decode, not the memory, bounds the small-M matmul. fp16 arithmetic on pairs of
    elements is packed two per instruction (LLVM emits add/fma/min/abs.f16x2 and 32-bit logic ops on 16-bit pairs),
    and every step below is exact in fp16 for 8-bit codes: with u the code's raw byte, 0x6400 | u is the fp16
    1024 + u (u < 1024), so t = (0x6400 | u) - 1152 = u - 128, and |t| = 128 - |c| for either sign (u = c for
    c >= 0, 256 + c below) - no sign flip of the byte needed. (128 - Q) * 2^-f - |t| * 2^-f with |c|, Q <= 127
    and f <= 6 has at most 7 significant bits and is >= 2^-6 in magnitude. Only the exp2 runs in fp32, one element
    at a time.
    """
    u = ct.to(tl.uint8, bitcast=True).to(tl.uint16)  # the code's byte, zero-extended
    t = (u | 0x6400).to(tl.float16, bitcast=True) - 1152.0  # = u - 128, exactly
    a = tl.abs(t)  # = 128 - |c|
    # 2^-f and (128 - Q) * 2^-f as fp16 (exact); tl.full also takes the interpreter's plain-float scalar
    step = tl.full((1, 1), inv_step, tl.float32).to(tl.float16)
    q_step = tl.full((1, 1), (128 - Q) * inv_step, tl.float32).to(tl.float16)
    arg = q_step - a * step  # = (|c| - Q) * 2^-f, exactly; <= 0
    # Zero code (|t| = 128): 384 * (127.5 - |t|) is -192 there, where exp2 underflows to exact 0, and >= 192 for
    # every other code (the min keeps arg). Exact in fp16 fused or not: |t| * 384 <= 49152, 127.5 * 384 = 48960.
    arg = tl.minimum(arg, 48960.0 - a * 384.0)
    v = _to_dtype(tl.exp2(arg.to(tl.float32)), dtype, INTERPRET)
    # Sign: c < 0 iff u >= 128 iff t >= 0, so bit 15 (of fp16 and bf16) is the complement of t's (+0 for c = 0).
    sign = ~t.to(tl.int16, bitcast=True) & -32768
    return (v.to(tl.int16, bitcast=True) | sign).to(dtype, bitcast=True)


@triton.jit
def _decode_tile(
    ct, inv_step, Q: tl.constexpr, dtype: tl.constexpr, INTERPRET: tl.constexpr, BITS: tl.constexpr = False
):
    """Integer codes -> the dot operand in `dtype` (fp32 for the tf32 dot, else fp16/bf16), normalised.

    BITS: the bit-construction decode of kernels/lns_bits.py (8-bit codes with f = 4 only; the launcher checks).
    """
    if BITS:
        return decode_bits(ct, dtype)
    elif dtype == tl.float32:
        return _decode_codes(ct, inv_step, Q)
    elif Q <= 127:
        return _decode_codes_8bit(ct, inv_step, Q, dtype, INTERPRET)
    else:
        return _to_dtype(_decode_codes(ct, inv_step, Q), dtype, INTERPRET)


@triton.jit
def _lns_tile_step(
    acc,
    x_ptrs,
    c_ptrs,
    rm,
    rn,
    rk,
    M,
    N,
    k_left,
    inv_step,
    Q: tl.constexpr,
    TF32: tl.constexpr,
    INTERPRET: tl.constexpr,
    BITS: tl.constexpr = False,
    EVEN: tl.constexpr = False,
):
    """One K step: load an x tile [BM, BK] and a code tile [BK, BN], decode the codes, acc += x @ w^T.

    EVEN: the caller guarantees a full K step and a full column tile (only x's rows are masked): no per-element
    compares and selects for the code tile (measured in SASS: they were a fifth of a small-M step's instructions).
    """
    if EVEN:
        xt = tl.load(x_ptrs, mask=rm[:, None] < M, other=0.0)
        ct = tl.load(c_ptrs)
    else:
        xt = tl.load(x_ptrs, mask=(rm[:, None] < M) & (rk[None, :] < k_left), other=0.0)
        # Masked codes load as 0, the zero code: padding decodes to exact 0.
        ct = tl.load(c_ptrs, mask=(rk[:, None] < k_left) & (rn[None, :] < N), other=0)
    # Normalised: the channel scale is applied once, after the K loop. fp16/bf16 x: the decoded tile is rounded to
    # x's dtype; fp32 x: it stays fp32 for the tf32 dot.
    wt = _decode_tile(ct, inv_step, Q, xt.dtype, INTERPRET, BITS)
    if TF32:
        acc += tl.dot(xt, wt, input_precision="tf32")
    else:
        if INTERPRET and xt.dtype == tl.bfloat16:
            # Triton 3.6's interpreter multiplies bf16 tiles as their raw uint16 bits. Widening both
            # bf16 tiles to fp32 is exact, and so is each bf16 x bf16 product in fp32: the same sums the
            # tensor cores form with fp32 accumulation. Compiled code never takes this branch.
            acc += tl.dot(xt.to(tl.float32), wt.to(tl.float32))
        else:
            acc += tl.dot(xt, wt)
    return acc


@triton.jit
def _lns_k_loop(
    acc,
    x_ptrs,
    c_ptrs,
    rm,
    rn,
    rk,
    M,
    N,
    K,
    stride_xk,
    stride_ck,
    inv_step,
    Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TF32: tl.constexpr,
    INTERPRET: tl.constexpr,
    BITS: tl.constexpr = False,
):
    """acc += x[rm, :] @ w[rn, :]^T over all K, BLOCK_K columns per step; the pointers start at column 0."""
    if INTERPRET:
        # Triton 3.6's interpreter cannot take a runtime scalar as a `range` bound under NumPy 2.4
        # (int() of a 1-element array); a while loop runs the same steps. Compiled code keeps the `for`
        # loop, which Triton software-pipelines (num_stages) and a while loop would not be.
        k0 = 0
        while k0 < K:
            acc = _lns_tile_step(acc, x_ptrs, c_ptrs, rm, rn, rk, M, N, K - k0, inv_step, Q, TF32, INTERPRET, BITS)
            x_ptrs += BLOCK_K * stride_xk
            c_ptrs += BLOCK_K * stride_ck
            k0 += BLOCK_K
    else:
        for k0 in range(0, K, BLOCK_K):
            acc = _lns_tile_step(acc, x_ptrs, c_ptrs, rm, rn, rk, M, N, K - k0, inv_step, Q, TF32, INTERPRET, BITS)
            x_ptrs += BLOCK_K * stride_xk
            c_ptrs += BLOCK_K * stride_ck
    return acc


@triton.jit
def _lns_store_output(
    acc,
    o_ptr,
    b_ptr,
    y_ptr,
    rm,
    rn,
    M,
    N,
    stride_ym,
    stride_yn,
    inv_step,
    HAS_BIAS: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """Epilogue: y[rm, rn] = acc * 2^(o[n] / 2^f) (+ bias[n]), cast to y's dtype; acc is fp32 [BM, BN]."""
    o = tl.load(o_ptr + rn, mask=rn < N, other=0).to(tl.float32)
    acc = acc * tl.exp2(o * inv_step)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + rm[:, None] * stride_ym + rn[None, :] * stride_yn
    tl.store(y_ptrs, _to_dtype(acc, y_ptr.dtype.element_ty, INTERPRET), mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _lns_matmul_kernel(
    # pointers
    x_ptr,
    c_ptr,
    o_ptr,
    b_ptr,
    y_ptr,
    # sizes
    M,
    N,
    K,
    # strides (elements)
    stride_xm,
    stride_xk,
    stride_cn,
    stride_ck,
    stride_ym,
    stride_yn,
    # format
    inv_step,  # 2^-f as fp32
    Q: tl.constexpr,  # largest magnitude code
    HAS_BIAS: tl.constexpr,
    # meta-parameters
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    TF32: tl.constexpr,
    INTERPRET: tl.constexpr,
    BITS: tl.constexpr = False,  # bit-construction decode (kernels/lns_bits.py) instead of exp2
):
    """Tiled kernel: program `pid` computes one [BLOCK_M, BLOCK_N] tile of y over all of K."""
    # Grouped tile order: GROUP_M row-tiles share each column of code tiles while it is in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % size_m
    pid_n = (pid % (GROUP_M * num_n)) // size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rm[:, None] * stride_xm + rk[None, :] * stride_xk  # [BM, BK]
    c_ptrs = c_ptr + rn[None, :] * stride_cn + rk[:, None] * stride_ck  # [BK, BN]: w^T tile
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _lns_k_loop(
        acc, x_ptrs, c_ptrs, rm, rn, rk, M, N, K, stride_xk, stride_ck, inv_step, Q, BLOCK_K, TF32, INTERPRET, BITS
    )
    _lns_store_output(acc, o_ptr, b_ptr, y_ptr, rm, rn, M, N, stride_ym, stride_yn, inv_step, HAS_BIAS, INTERPRET)


# triton.jit picked the interpreter or the compiler when the kernel was defined (TRITON_INTERPRET=1 at import);
# ask the kernel object rather than the environment, which may have changed since.
INTERPRETED = type(_lns_matmul_kernel).__name__ == "InterpretedFunction"
