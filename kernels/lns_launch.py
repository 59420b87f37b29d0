"""Launch helpers of the LNS Triton matmul: pipeline/warp choice, the device's shared memory and the int32 indexing
guard. The launcher and the public `lns_matmul` are in `kernels/lns.py`, the kernel in `kernels/lns_triton.py`.
"""

from __future__ import annotations

import functools

import triton


def launch_config(
    block_m: int, block_n: int, block_k: int, x_bytes: int, code_bytes: int, smem_bytes: int
) -> tuple[int, int]:
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


def check_int32_extents(**extents: int) -> None:
    """Raise ValueError if an operand spans 2^31 elements or more: offsets inside the kernel are int32."""
    for name, extent in extents.items():
        if extent >= 2**31:
            raise ValueError(
                f"{name}: spans {extent} elements, over the kernel's int32 indexing (2^31); "
                "split the batch into smaller calls"
            )
