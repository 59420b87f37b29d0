"""Small-M LNS matmul with the operands swapped: `y^T [N, M] = w [N, K] @ x^T [K, M]`, variant "swap" of
`lns_matmul` (launched from kernels/lns_small.py, which also holds the split-K reduction it shares).

Why: at M <= 64 the row tile of `x @ w^T` is 16-64 rows, the smallest MMA shape, and the decoded code tile is the
B operand, which on sm_90 goes through shared memory. Swapped, the decoded codes are the A operand with 64 (or
more) rows of N: on sm_90 Triton can issue wgmma (m64nMk16) with A straight from registers, where the codes were
decoded, and x^T (16-64 columns) is the small B operand. The codes tile [BLOCK_N, BLOCK_K] is K-contiguous, the
layout the codes are stored in. Sums, decode and epilogue are the same as the other variants' (fp32 accumulation,
channel scale after the K loop), so the tolerances of tests/kernels/test_lns.py apply unchanged.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.lns_triton import _decode_tile, _to_dtype

SWAP_BLOCK_N = 64
SWAP_BLOCK_K = 128


@triton.jit
def _swap_step(acc, x_ptrs, c_ptrs, rm, rn, rk, M, N, k_left, inv_step, Q: tl.constexpr, TF32: tl.constexpr,
               INTERPRET: tl.constexpr, BITS: tl.constexpr, EVEN: tl.constexpr):  # fmt: skip
    """One K step: codes [BN, BK] -> decoded A, x^T [BK, BM] as B, acc [BN, BM] += A @ B."""
    if EVEN:  # whole K step and column tile (the launcher checks): only x's columns (rows of x) are masked
        ct = tl.load(c_ptrs)
        xt = tl.load(x_ptrs, mask=rm[None, :] < M, other=0.0)
    else:
        ct = tl.load(c_ptrs, mask=(rn[:, None] < N) & (rk[None, :] < k_left), other=0)  # 0: the zero code
        xt = tl.load(x_ptrs, mask=(rk[:, None] < k_left) & (rm[None, :] < M), other=0.0)
    wt = _decode_tile(ct, inv_step, Q, xt.dtype, INTERPRET, BITS)
    if TF32:
        acc += tl.dot(wt, xt, input_precision="tf32")
    elif INTERPRET and xt.dtype == tl.bfloat16:
        acc += tl.dot(wt.to(tl.float32), xt.to(tl.float32))  # interpreter bf16 dot: see lns_triton._lns_tile_step
    else:
        acc += tl.dot(wt, xt)
    return acc


@triton.jit
def _lns_swap_kernel(
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
    """Program (tile, slice): acc [BLOCK_N, BLOCK_M] = w[rn, K slice] @ x[rm, K slice]^T. SPLIT: the fp32 partial
    goes to ws [slices, M, N] (summed by lns_small._lns_splitk_reduce_kernel); else scale, bias, cast, store y."""
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
    c_ptrs = c_ptr + rn[:, None] * stride_cn + (k_start + rk)[None, :] * stride_ck  # [BN, BK]
    x_ptrs = x_ptr + rm[None, :] * stride_xm + (k_start + rk)[:, None] * stride_xk  # [BK, BM]: x^T
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    if INTERPRET:  # the interpreter cannot take runtime `range` bounds (see kernels/lns_triton.py `_lns_k_loop`)
        k0 = k_start
        while k0 < k_end:
            acc = _swap_step(
                acc, x_ptrs, c_ptrs, rm, rn, rk, M, N, k_end - k0, inv_step, Q, TF32, INTERPRET, BITS, EVEN
            )
            x_ptrs += BLOCK_K * stride_xk
            c_ptrs += BLOCK_K * stride_ck
            k0 += BLOCK_K
    else:
        for k0 in range(k_start, k_end, BLOCK_K):
            acc = _swap_step(
                acc, x_ptrs, c_ptrs, rm, rn, rk, M, N, k_end - k0, inv_step, Q, TF32, INTERPRET, BITS, EVEN
            )
            x_ptrs += BLOCK_K * stride_xk
            c_ptrs += BLOCK_K * stride_ck
    ok = (rn[:, None] < N) & (rm[None, :] < M)
    if SPLIT:
        tl.store(ws_ptr + pid_k * M * N + rm[None, :] * N + rn[:, None], acc, mask=ok)
    else:
        acc = acc * tl.exp2(tl.load(o_ptr + rn, mask=rn < N, other=0).to(tl.float32) * inv_step)[:, None]
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[:, None]
        y_ptrs = y_ptr + rm[None, :] * stride_ym + rn[:, None] * stride_yn
        tl.store(y_ptrs, _to_dtype(acc, y_ptr.dtype.element_ty, INTERPRET), mask=ok)
