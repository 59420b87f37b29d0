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
# variant="auto": (largest M, variant, block_n, block_k) rows, the first with M <= its bound wins; larger M, or no
# row, runs "tiled" with the caller's tiles. A row goes in only with an H100 measurement beside it in
# docs/lns_kernel.md; none yet, so auto is "tiled" for every M.
AUTO_SMALL_M: tuple[tuple[int, str, int | None, int | None], ...] = ()


def auto_variant(m: int) -> tuple[str, int | None, int | None]:
    """(variant, block_n, block_k) that variant="auto" runs for M rows (block sizes None: the caller's/defaults)."""
    for bound, variant, block_n, block_k in AUTO_SMALL_M:
        if m <= bound:
            return variant, block_n, block_k
    return "tiled", None, None
