"""The LNS matmul's kernel variants and the table `variant="auto"` reads (torch- and triton-free).

`kernels/lns.py` `lns_matmul(..., variant=...)` runs them; docs/lns_kernel.md has what each is and its measurements.
"""

from __future__ import annotations

# lns_matmul's kernel variants (variant="auto", the default, picks one by M from AUTO_SMALL_M).
VARIANTS = (
    "tiled",
    "tiled_bits",
    "skinny",
    "skinny_bits",
    "skinny_splitk",
    "skinny_splitk_bits",
    "swap",
    "swap_bits",
    "gemv",
    "gemv_bits",
)
SMALL_M_VARIANTS = VARIANTS[2:]  # the kernels of kernels/lns_small.py and kernels/lns_swap.py
TILED_DEFAULT_BLOCKS = (128, 128, 32)  # the tiled kernels' (block_m, block_n, block_k) when none are given
# variant="auto": (largest M, variant, block_n, block_k) rows, the first with M <= its bound wins; larger M runs
# "tiled" with the caller's tiles. Each row is the fastest configuration measured at that M on an H100
# (bench/results/lns_small_m.json, docs/lns_kernel.md): M = 1 gemv 27.8 us; M = 16 skinny 32/128 40.4 us (16/256:
# 46.8); M = 64 skinny 16/256 48.2 us (32/128: 67.5); tiled 85-88 us at each. M between the measured ones takes
# the row above it (unmeasured there).
AUTO_SMALL_M: tuple[tuple[int, str, int | None, int | None], ...] = (
    (1, "gemv", None, None),
    (16, "skinny", 32, 128),
    (64, "skinny", 16, 256),
)


def auto_variant(m: int) -> tuple[str, int | None, int | None]:
    """(variant, block_n, block_k) that variant="auto" runs for M rows (block sizes None: the caller's/defaults)."""
    for bound, variant, block_n, block_k in AUTO_SMALL_M:
        if m <= bound:
            return variant, block_n, block_k
    return "tiled", None, None
