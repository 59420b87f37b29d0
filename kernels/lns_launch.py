"""Launch helpers of the LNS Triton matmul: pipeline/warp choice, the device's shared memory and SM count, the
int32 indexing guard, and the small-M ("skinny") path's tile/split-K choice and launcher. The tiled launcher and the
public `lns_matmul` are in `kernels/lns.py`, the kernels in `kernels/lns_triton.py`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton

from kernels.lns_triton import INTERPRETED, _lns_skinny_kernel

# The skinny kernel keeps every row of x in one row tile: it serves M <= SKINNY_MAX_M.
SKINNY_MAX_M = 64
# The CPU interpreter has no SMs; a small count makes the tests' small N still take the split-K path.
_INTERPRETER_SMS = 4


class SkinnyConfig(NamedTuple):
    """Tiles and K split of one small-M launch. k_split: K columns per slice (a multiple of block_k)."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int
    k_split: int


def launch_config(block_m: int, block_n: int, block_k: int, x_bytes: int, code_bytes: int,
                  smem_bytes: int) -> tuple[int, int]:
    """(num_warps, num_stages) for a tile: more warps for big accumulators, as many pipeline stages (<= 4) as fit.

    Shared memory: each stage buffers an x tile and a code tile; one decoded tile feeds the MMA. The estimate is
    a little above what Triton 3.6 allocates for sm_90 (53 KiB vs 52 KiB at 128/128/32 fp16 x 4 stages, 128 KiB vs
    112 KiB at 256/256/64 x 2), and we keep 10% of the device's `smem_bytes` free.
    """
    num_warps = 8 if block_m * block_n >= 128 * 128 else 4
    per_stage = block_m * block_k * x_bytes + block_k * block_n * code_bytes
    decoded = block_k * block_n * x_bytes
    budget = int(0.9 * smem_bytes) - decoded
    num_stages = max(1, min(4, budget // per_stage))
    return num_warps, num_stages


@functools.cache
def max_shared_bytes(device_index: int | None) -> int:
    """Shared memory one program may use on this device (opt-in maximum); 160 KiB for the CPU interpreter."""
    if device_index is None:
        return 160 * 1024
    return int(triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"])


@functools.cache
def sm_count(device_index: int | None) -> int:
    """Streaming multiprocessors of the device (132 on an H100 SXM); a stand-in count for the interpreter."""
    if device_index is None:
        return _INTERPRETER_SMS
    return int(torch.cuda.get_device_properties(device_index).multi_processor_count)


def check_int32_extents(**extents: int) -> None:
    """Raise ValueError if an operand spans 2^31 elements or more: offsets inside the kernels are int32."""
    for name, extent in extents.items():
        if extent >= 2**31:
            raise ValueError(f"{name}: spans {extent} elements, over the kernel's int32 indexing (2^31); "
                             "split the batch into smaller calls")


def _next_pow2(v: int) -> int:
    return 1 << max(v - 1, 0).bit_length()


def skinny_config(M: int, N: int, K: int, n_sms: int, code_bytes: int) -> SkinnyConfig:
    """Tiles and K split for a small-M matmul (1 <= M <= SKINNY_MAX_M).

    block_m: the next power of two >= M, at least 16 (tl.dot's minimum): the one row tile. block_n/block_k: 64/128
    while block_m <= 32, 128/64 above: wider column tiles cut how often x is re-read from L2 (once per column tile),
    which matters once x has 64 rows. split_k: among the splits whose fp32 partials (split_k * M * N * 4 bytes,
    written and read back through L2) stay within half of the code bytes streamed and whose slices have at least
    2 K steps, the one that (1) gives the SMs 2 programs (one 4-warp program per SM leaves each scheduler a single
    warp to issue from), or as many programs as the problem allows, (2) spreads them evenly (programs / (SMs *
    most programs on one SM) >= 0.9: with all programs resident at once, the SM holding the most sets the time;
    320 programs on 132 SMs would be 3 on some and 2 on most), (3) with the fewest slices.
    """
    block_m = max(16, _next_pow2(M))
    block_n, block_k = (64, 128) if block_m <= 32 else (128, 64)
    block_n = min(block_n, max(16, _next_pow2(N)))
    block_k = min(block_k, max(16, _next_pow2(K)))
    n_tiles = triton.cdiv(N, block_n)
    by_partials = max(1, (N * K * code_bytes) // (2 * M * N * 4))
    by_steps = max(1, triton.cdiv(K, 2 * block_k))
    best: tuple[tuple[int, bool, int], SkinnyConfig] | None = None
    for want in range(1, min(by_partials, by_steps) + 1):
        k_split = triton.cdiv(triton.cdiv(K, want), block_k) * block_k
        split = triton.cdiv(K, k_split)
        programs = n_tiles * split
        most_per_sm = triton.cdiv(programs, n_sms)
        balanced = programs >= 0.9 * n_sms * most_per_sm
        key = (min(most_per_sm, 2), balanced, programs if most_per_sm < 2 else -split)
        if best is None or key > best[0]:
            best = (key, SkinnyConfig(block_m, block_n, block_k, split, k_split))
    assert best is not None
    return best[1]


# Split-K tile counters, one int32 per column tile, per device; the kernel leaves them at 0 after every call.
# Concurrent calls on different streams of one device would share them: the skinny path assumes one stream.
_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _counters(device: torch.device, n: int) -> torch.Tensor:
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
        _COUNTERS[device] = buf
    return buf


def lns_matmul_skinny(x: torch.Tensor, codes: torch.Tensor, offsets: torch.Tensor, frac_bits: int, max_code: int,
                      bias: torch.Tensor | None, cfg: SkinnyConfig | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ decode(codes [N, K])^T (+ bias) with the small-M kernel; M <= SKINNY_MAX_M.

    Inputs are validated by `lns_matmul`. cfg: tiles and split (default: `skinny_config` for this device).
    """
    M, K = x.shape
    N = codes.shape[0]
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if M == 0:
        return y
    if M > SKINNY_MAX_M:
        raise ValueError(f"x: M = {M} rows, over the small-M kernel's {SKINNY_MAX_M}")
    dev_index = x.device.index if x.is_cuda else None
    if cfg is None:
        cfg = skinny_config(M, N, K, sm_count(dev_index), codes.element_size())
    if cfg.block_m < M or cfg.k_split % cfg.block_k or cfg.split_k != triton.cdiv(K, cfg.k_split):
        raise ValueError(f"cfg: {cfg} does not cover M = {M}, K = {K}")
    check_int32_extents(**{"x": x.stride(0) * (M - 1) + x.stride(1) * (K - 1), "y [M, N]": M * N,
                           "split-K partials": cfg.split_k * M * N,
                           "weight": codes.stride(0) * (N - 1) + codes.stride(1) * (K - 1)})
    n_tiles = triton.cdiv(N, cfg.block_n)
    # Partials are fully written before they are read; an unused 1-element buffer when there is no split.
    part = torch.empty((cfg.split_k, M, N) if cfg.split_k > 1 else (1,), device=x.device, dtype=torch.float32)
    cnt = _counters(x.device, n_tiles)
    num_warps, num_stages = launch_config(cfg.block_m, cfg.block_n, cfg.block_k, x.element_size(),
                                          codes.element_size(), max_shared_bytes(dev_index))
    _lns_skinny_kernel[(n_tiles, cfg.split_k)](
        x, codes, offsets, bias if bias is not None else offsets, y, part, cnt,
        M, N, K, cfg.k_split,
        x.stride(0), x.stride(1), codes.stride(0), codes.stride(1), y.stride(0), y.stride(1),
        2.0 ** -frac_bits, Q=max_code, HAS_BIAS=bias is not None,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k,
        TF32=x.dtype == torch.float32, INTERPRET=INTERPRETED,
        num_warps=num_warps, num_stages=num_stages,
    )
    return y
