"""Sizes of the gated scan that need no torch or triton: the torch backend's chunk length and the Triton tiles'
widths. kernels/scan.py and scan_triton.py use them; the VRAM estimator (tuner/vram/estimate) reads them to size
the scan's saved tensors without importing torch.
"""

from __future__ import annotations

SCAN_TORCH_CHUNK = 64  # chunk length of the torch backend: O(L*C*R) work, L/C sequential steps
FWD_BLOCK_R_MAX = 32  # forward tiles: at most 32 channels (64 x 32 on 4 warps, no spills; see _tiles)
BWD_BLOCK_R_MAX = 16  # backward tiles: at most 16 channels (64 x 32 would spill)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def scan_tile_widths(L: int, R: int) -> tuple[int, int, int]:
    """(block_t, fwd_r, bwd_r): time steps per sub-tile (16..64) and channels per forward / backward tile for a
    problem of L steps and R channels."""
    block_t = min(64, max(16, next_power_of_2(L)))
    return block_t, min(next_power_of_2(R), FWD_BLOCK_R_MAX), min(next_power_of_2(R), BWD_BLOCK_R_MAX)
