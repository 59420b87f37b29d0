"""Small-M LNS matmul kernels (M = 1..64, decode-like batches) and their launchers; selected through
`lns_matmul(..., variant=...)` in kernels/lns.py, which validates the inputs first.

Why separate kernels: the tiled kernel with its default 128 x 128 tiles runs only cdiv(N, 128) programs at M <= 128
(32 for N = 4096: a quarter of an H100's 132 SMs) and each decodes its codes with exp2. These variants spread the
codes over every SM and decode them by bit construction (kernels/lns_bits.py) when the format allows it:
  * "skinny": tensor cores, one row tile covering M (BLOCK_M = 16/32/64), narrow column tiles (BLOCK_N = 32) so
    that N = 4096 gives 128 programs, each streaming all of K.
  * "skinny_splitk": the same with BLOCK_N = 64 and K split into slices until there are >= 2 programs per SM; fp32
    partial tiles go to a workspace and a second kernel sums them in slice order (deterministic), then applies the
    channel scale and bias.
  * "gemv": no tensor cores: one program per (row, 8 output channels), codes decoded straight to fp32 and summed
    with FMAs (fp32 accumulate), for M = 1..few; each row decodes the codes again, so it is for M <= 4.
Every variant computes the same sums as the tiled kernel (decoded magnitudes exactly as rounded there; fp32
accumulation; channel scale after the K loop), so the tolerances of tests/kernels/test_lns.py apply unchanged.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.lns_bits import decode_bits
from kernels.lns_launch import check_int32_extents
from kernels.lns_swap import SWAP_BLOCK_K, SWAP_BLOCK_N, _lns_swap_kernel
from kernels.lns_triton import _decode_codes, _lns_store_output, _lns_tile_step, _to_dtype
from kernels.lns_variants import SMALL_M_VARIANTS

SKINNY_BLOCK_N = 32
SPLITK_BLOCK_N = 64
SKINNY_BLOCK_K = 128
GEMV_BLOCK_N = 8
GEMV_BLOCK_K = 512
TARGET_PROGRAMS = 264  # split-K: at least 2 programs per SM of an H100 (132 SMs)


def skinny_block_m(m: int) -> int:
    """The row tile of the skinny kernels: the power of two >= M, in 16..64 (tl.dot needs >= 16)."""
    return min(64, max(16, 1 << max(0, m - 1).bit_length()))


def split_k_slices(m: int, n: int, k: int, block_n: int, block_k: int) -> tuple[int, int]:
    """(slices, K per slice): the fewest power-of-two slices giving TARGET_PROGRAMS programs (capped at one K step
    a slice), each slice a whole number of K steps. A power of two divides K = 4096's K steps, so every slice is
    full there and the kernel runs without masks (EVEN)."""
    tiles = triton.cdiv(m, skinny_block_m(m)) * triton.cdiv(n, block_n)
    k_steps = triton.cdiv(k, block_k)
    slices = 1
    while tiles * slices < TARGET_PROGRAMS and slices < k_steps:
        slices *= 2
    per = triton.cdiv(k_steps, slices) * block_k
    return triton.cdiv(k, per), per


def small_m_tiles(
    variant: str, m: int, n: int, k: int, block_n: int | None = None, block_k: int | None = None
) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, K slices) a small-M variant launches with (gemv: BLOCK_M = 1 row a program)."""
    base = variant.removesuffix("_bits")
    if base == "gemv":
        return 1, GEMV_BLOCK_N, GEMV_BLOCK_K, 1
    bk = block_k or SKINNY_BLOCK_K
    if base == "skinny":
        return skinny_block_m(m), block_n or SKINNY_BLOCK_N, bk, 1
    if base == "skinny_splitk":
        bn = block_n or SPLITK_BLOCK_N
        return skinny_block_m(m), bn, bk, split_k_slices(m, n, k, bn, bk)[0]
    if base == "swap":  # kernels/lns_swap.py; split-K as skinny_splitk
        bn, bk = block_n or SWAP_BLOCK_N, block_k or SWAP_BLOCK_K
        return skinny_block_m(m), bn, bk, split_k_slices(m, n, k, bn, bk)[0]
    raise ValueError(f"variant: {variant!r} is not a small-M variant (allowed: {', '.join(SMALL_M_VARIANTS)})")


@triton.jit
def _lns_skinny_kernel(
    x_ptr,
    c_ptr,
    o_ptr,
    b_ptr,
    y_ptr,
    ws_ptr,
    M,
    N,
    K,
    K_SLICE,
    stride_xm,
    stride_xk,
    stride_cn,
    stride_ck,
    stride_ym,
    stride_yn,
    inv_step,
    Q: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT: tl.constexpr,
    BITS: tl.constexpr,
    TF32: tl.constexpr,
    INTERPRET: tl.constexpr,
    EVEN: tl.constexpr,
):
    """Program (tile, slice): acc = x[rm, K slice] @ w[rn, K slice]^T. SPLIT: write the fp32 partial tile to
    ws [slices, M, N]; else the epilogue (scale, bias, cast) stores y directly."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    pid_k = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    k_start = pid_k * K_SLICE
    k_end = tl.minimum(K, k_start + K_SLICE)
    x_ptrs = x_ptr + rm[:, None] * stride_xm + (k_start + rk)[None, :] * stride_xk
    c_ptrs = c_ptr + rn[None, :] * stride_cn + (k_start + rk)[:, None] * stride_ck
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if INTERPRET:  # the interpreter cannot take runtime `range` bounds (see kernels/lns_triton.py `_lns_k_loop`)
        k0 = k_start
        while k0 < k_end:
            acc = _lns_tile_step(
                acc, x_ptrs, c_ptrs, rm, rn, rk, M, N, k_end - k0, inv_step, Q, TF32, INTERPRET, BITS, EVEN
            )
            x_ptrs += BLOCK_K * stride_xk
            c_ptrs += BLOCK_K * stride_ck
            k0 += BLOCK_K
    else:
        for k0 in range(k_start, k_end, BLOCK_K):
            acc = _lns_tile_step(
                acc, x_ptrs, c_ptrs, rm, rn, rk, M, N, k_end - k0, inv_step, Q, TF32, INTERPRET, BITS, EVEN
            )
            x_ptrs += BLOCK_K * stride_xk
            c_ptrs += BLOCK_K * stride_ck
    if SPLIT:
        ws_ptrs = ws_ptr + pid_k * M * N + rm[:, None] * N + rn[None, :]
        tl.store(ws_ptrs, acc, mask=(rm[:, None] < M) & (rn[None, :] < N))
    else:
        _lns_store_output(acc, o_ptr, b_ptr, y_ptr, rm, rn, M, N, stride_ym, stride_yn, inv_step, HAS_BIAS, INTERPRET)


@triton.jit
def _lns_splitk_reduce_kernel(
    ws_ptr,
    o_ptr,
    b_ptr,
    y_ptr,
    M,
    N,
    SLICES,
    stride_ym,
    stride_yn,
    inv_step,
    HAS_BIAS: tl.constexpr,
    BLOCK: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """y[m, n] = (sum over slices s = 0, 1, ... of ws[s, m, n]) * 2^(o[n] / 2^f) (+ bias[n]): fixed order."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < M * N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    s = 0
    while s < SLICES:
        acc += tl.load(ws_ptr + s * M * N + idx, mask=ok, other=0.0)
        s += 1
    rn = idx % N
    rm = idx // N
    acc = acc * tl.exp2(tl.load(o_ptr + rn, mask=ok, other=0).to(tl.float32) * inv_step)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rm * stride_ym + rn * stride_yn, _to_dtype(acc, y_ptr.dtype.element_ty, INTERPRET), mask=ok)


@triton.jit
def _lns_gemv_kernel(
    x_ptr,
    c_ptr,
    o_ptr,
    b_ptr,
    y_ptr,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_cn,
    stride_ck,
    stride_ym,
    stride_yn,
    inv_step,
    Q: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BITS: tl.constexpr,
    INTERPRET: tl.constexpr,
    EVEN: tl.constexpr,
):
    """Program (row m, column block): y[m, rn] = sum_k x[m, k] * w[rn, k] on the FMA units, fp32 throughout.

    The codes tile [BLOCK_N, BLOCK_K] is contiguous along K (16-byte loads); the fp32 products accumulate element
    -wise in a [BLOCK_N, BLOCK_K] register tile, summed over K once after the loop.
    """
    m = tl.program_id(0)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + m * stride_xm + rk * stride_xk
    c_ptrs = c_ptr + rn[:, None] * stride_cn + rk[None, :] * stride_ck
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    if INTERPRET:  # the interpreter cannot take runtime `range` bounds (see kernels/lns_triton.py `_lns_k_loop`)
        k0 = 0
        while k0 < K:
            acc = _gemv_step(acc, x_ptrs, c_ptrs, rn, rk, N, K - k0, inv_step, Q, BITS, EVEN)
            x_ptrs += BLOCK_K * stride_xk
            c_ptrs += BLOCK_K * stride_ck
            k0 += BLOCK_K
    else:
        for k0 in range(0, K, BLOCK_K):
            acc = _gemv_step(acc, x_ptrs, c_ptrs, rn, rk, N, K - k0, inv_step, Q, BITS, EVEN)
            x_ptrs += BLOCK_K * stride_xk
            c_ptrs += BLOCK_K * stride_ck
    y = tl.sum(acc, axis=1)
    y = y * tl.exp2(tl.load(o_ptr + rn, mask=rn < N, other=0).to(tl.float32) * inv_step)
    if HAS_BIAS:
        y += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
    tl.store(y_ptr + m * stride_ym + rn * stride_yn, _to_dtype(y, y_ptr.dtype.element_ty, INTERPRET), mask=rn < N)


@triton.jit
def _gemv_step(
    acc, x_ptrs, c_ptrs, rn, rk, N, k_left, inv_step, Q: tl.constexpr, BITS: tl.constexpr, EVEN: tl.constexpr
):
    if EVEN:  # full K step and column block (the launcher checks): no masks
        xv = tl.load(x_ptrs).to(tl.float32)
        ct = tl.load(c_ptrs)
    else:
        xv = tl.load(x_ptrs, mask=rk < k_left, other=0.0).to(tl.float32)
        ct = tl.load(c_ptrs, mask=(rn[:, None] < N) & (rk[None, :] < k_left), other=0)  # 0: the zero code
    if BITS:
        w = decode_bits(ct, tl.float32)
    elif Q <= 127:
        w = decode_byte_exp2(ct, inv_step, Q)
    else:
        w = _decode_codes(ct, inv_step, Q)
    return acc + w * xv[None, :]


@triton.jit
def decode_byte_exp2(ct, inv_step, Q: tl.constexpr):
    """int8 codes -> fp32 `sign(c) * 2^((|c| - Q) * inv_step)`, 0 for c = 0: the same values as `_decode_codes`
    (kernels/lns_triton.py; the same exact exp2 argument) from the code's raw byte u, with fewer instructions.

    `0x4B000000 | u` is the fp32 `2^23 + u`, so t = u - 128 exactly, and |t| = 128 - |c| for either sign (u = c
    for c >= 0, 256 + c below); the exp2 argument `(|c| - Q) * 2^-f = (128 - Q) * 2^-f - |t| * 2^-f` is one FMA
    (|t| is a free operand modifier on sm_90). Zero code (|t| = 128): the min with `(127.5 - |t|) * 2^20` sends the
    argument to -2^19 (exp2 -> exact 0) and leaves every other code's (that bound is >= 2^19). Sign: c < 0 iff
    u >= 128 iff t >= 0, so the result takes the complement of t's sign bit (+0 for the zero code).
    """
    u = ct.to(tl.uint8, bitcast=True).to(tl.int32)
    t = (u | 0x4B000000).to(tl.float32, bitcast=True) - 8388736.0  # 2^23 + 128
    a = tl.abs(t)
    arg = tl.minimum((128 - Q) * inv_step - a * inv_step, 133693440.0 - a * 1048576.0)  # 127.5 * 2^20
    v = tl.exp2(arg)
    return (v.to(tl.int32, bitcast=True) | (~t.to(tl.int32, bitcast=True) & -2147483648)).to(tl.float32, bitcast=True)


# --- launchers (inputs already validated by kernels/lns.py `lns_matmul`) -----------------------------------------


def lns_matmul_small(variant: str, x, weight, bias, interpret: bool, block_n=None, block_k=None):
    """`y [M, N]` of one small-M variant (SMALL_M_VARIANTS); x [M, K] fp32/fp16/bf16, weight an LNSWeight [N, K].

    Tiles: BLOCK_M follows M (`skinny_block_m`); block_n/block_k (powers of two >= 16) when given, else the
    variant's defaults (gemv: always its own). "_bits" variants decode by bit construction where the format allows
    it (exp2 otherwise). Any M works; the variants are built for M <= 64 (gemv: M <= 16).
    """
    import torch

    from kernels.lns_bits import bits_decode_supported

    M, K = x.shape
    N = weight.codes.shape[0]
    # Offsets inside the kernels are int32: refuse what would overflow them instead of reading wrong memory.
    check_int32_extents(
        **{
            "x": x.stride(0) * max(M - 1, 0) + x.stride(1) * (K - 1),
            "split-K workspace [slices, M, N]": M * N * max(1, K // 128),
            "weight": weight.codes.stride(0) * (N - 1) + weight.codes.stride(1) * (K - 1),
        }
    )
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if M == 0:
        return y
    base = variant.removesuffix("_bits")
    bits = variant.endswith("_bits") and bits_decode_supported(weight.bits, weight.frac_bits)
    inv_step = 2.0**-weight.frac_bits
    b = bias if bias is not None else weight.offsets
    common = dict(Q=weight.max_code, HAS_BIAS=bias is not None, BITS=bits, INTERPRET=interpret)
    if base == "gemv":
        grid = (M, triton.cdiv(N, GEMV_BLOCK_N))
        _lns_gemv_kernel[grid](
            x, weight.codes, weight.offsets, b, y, N, K, x.stride(0), x.stride(1), weight.codes.stride(0),
            weight.codes.stride(1), y.stride(0), y.stride(1), inv_step,
            BLOCK_N=GEMV_BLOCK_N, BLOCK_K=GEMV_BLOCK_K, EVEN=K % GEMV_BLOCK_K == 0 and N % GEMV_BLOCK_N == 0,
            num_warps=4, **common,
        )  # fmt: skip
        return y
    block_m, block_n, block_k, _ = small_m_tiles(variant, M, N, K, block_n, block_k)
    if base == "skinny":
        slices, per = 1, triton.cdiv(K, block_k) * block_k
    else:
        slices, per = split_k_slices(M, N, K, block_n, block_k)
    split = slices > 1
    ws = torch.empty((slices, M, N), device=x.device, dtype=torch.float32) if split else y
    tiles = triton.cdiv(M, block_m) * triton.cdiv(N, block_n)
    kernel = _lns_swap_kernel if base == "swap" else _lns_skinny_kernel
    kernel[(tiles, slices)](
        x, weight.codes, weight.offsets, b, y, ws, M, N, K, per, x.stride(0), x.stride(1), weight.codes.stride(0),
        weight.codes.stride(1), y.stride(0), y.stride(1), inv_step,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT=split, TF32=x.dtype == torch.float32,
        EVEN=K % per == 0 and N % block_n == 0,
        num_warps=4, num_stages=4 if not interpret else 1, **common,
    )  # fmt: skip
    if split:
        block = 1024
        _lns_splitk_reduce_kernel[(triton.cdiv(M * N, block),)](
            ws, weight.offsets, b, y, M, N, slices, y.stride(0), y.stride(1), inv_step,
            HAS_BIAS=bias is not None, BLOCK=block, INTERPRET=interpret, num_warps=4,
        )  # fmt: skip
    return y
