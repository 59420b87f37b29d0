"""Launchers of the gated scan's Triton kernels (kernels/scan_triton.py, design notes there): tile choice, buffers,
grids. kernels/scan.py's autograd Function calls `_scan_fwd` / `_scan_bwd`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from kernels.scan_shapes import scan_tile_widths
from kernels.scan_triton import WINDOW, _chunk_scan_bwd, _chunk_scan_fwd, _chunk_state_bwd, _chunk_state_fwd
from kernels.triton_direct import DirectLaunch

_PROGRAMS = 1024  # programs to aim for: ~8 per SM of an H100 (132 SMs), about one wave
_RED_ROWS = 64  # da partials the last backward program of a channel block sums per loop step
# Launched through DirectLaunch: after the first launch per specialisation, none of Triton's per-call binding.
_state_fwd, _scan_fwd_k = DirectLaunch(_chunk_state_fwd), DirectLaunch(_chunk_scan_fwd)
_state_bwd, _scan_bwd_k = DirectLaunch(_chunk_state_bwd), DirectLaunch(_chunk_scan_bwd)


@dataclass(frozen=True)
class ScanTiles:
    """Tile sizes. block_t: sub-tile length, shared by both passes (the forward saves h before every
    sub-tile: carry [B, ceil(L/block_t), R] fp32). Per pass: chunk length (a multiple of block_t), channels per
    program, warps. Only block_t ties the passes together."""

    block_t: int
    fwd_c: int
    fwd_r: int
    fwd_warps: int
    bwd_c: int
    bwd_r: int
    bwd_warps: int

    def __post_init__(self):
        for c in (self.fwd_c, self.bwd_c):  # the kernels take a^(chunk) as (a^block_t)^K with K < 32
            if c % self.block_t or not 1 <= c // self.block_t <= 16:
                raise ValueError(f"ScanTiles: chunk {c} must be 1 to 16 sub-tiles of {self.block_t}")


def _cdiv(n: int, d: int) -> int:
    # Host-side ceil division. triton.cdiv is a constexpr_function (argument unwrapping on every call): a few us
    # each, six times per forward + backward.
    return -(-n // d)


def _chunk_len(batch: int, L: int, R: int, block_t: int, block_r: int) -> int:
    # K * block_t with K the largest of 16, 8, 4, 2 that still gives _PROGRAMS programs, else 1: long chunks
    # keep the state passing short (each program reads the states of the chunks on one side of it), short
    # ones fill the GPU when B * L is small.
    n_seq, n_sub = batch * _cdiv(R, block_r), _cdiv(L, block_t)
    return block_t * next((k for k in (16, 8, 4, 2) if n_seq * _cdiv(n_sub, k) >= _PROGRAMS), 1)


@functools.lru_cache(maxsize=512)  # called on every forward: keep the wrapper's host work small
def _tiles(L: int, R: int, dtype: torch.dtype, batch: int = 1) -> ScanTiles:  # noqa: ARG001 - dtype: see below
    """Tiles for a [batch, L, R] problem. Predicted from register counts (ptxas -v, sm_90, Triton 3.6), not yet
    timed on a GPU (bench/scan_notes.md): forward 64 x 32 tiles on 4 warps (~156 registers, no spills);
    backward 64 x 16 on 8 warps (~80 registers, no spills: it holds two scans and six input tiles; 64 x 32 on
    4 warps needs 255 registers and spills). The widths are kernels/scan_shapes.py's (the estimator reads them).
    dtype is unused for now but kept in the signature and the cache key: the register counts above are for one
    dtype, and timed tiles may differ per dtype (bench/kernel_bench.py already passes it).
    """
    block_t, fwd_r, bwd_r = scan_tile_widths(L, R)
    return ScanTiles(
        block_t, _chunk_len(batch, L, R, block_t, fwd_r), fwd_r, 4, _chunk_len(batch, L, R, block_t, bwd_r), bwd_r, 8
    )


def _log2(n: int) -> int:
    return n.bit_length() - 1


def _scan_fwd(u, g, v, a, save_carry: bool, tiles: ScanTiles | None = None):
    """Forward launcher. u, g, v contiguous [B, L, R] (one dtype); a contiguous [R]. Returns (y [B, L, R],
    carry [B, ceil(L/block_t), R] fp32 = h before each sub-tile, or None; tiles)."""
    B, L, R = u.shape
    t = tiles or _tiles(L, R, u.dtype, B)
    nc, nrb, nt = _cdiv(L, t.fwd_c), _cdiv(R, t.fwd_r), _cdiv(L, t.block_t)
    n_seq, ksub = B * nrb, t.fwd_c // t.block_t
    y = torch.empty_like(u)
    carry = torch.empty((B, nt, R), dtype=torch.float32, device=u.device) if save_carry else y
    # Per-chunk end states [S, nc, fwd_r], chunk nc-1's never written nor read; no zeroing needed.
    states = torch.empty(n_seq * nc * t.fwd_r, dtype=torch.float32, device=u.device) if nc > 1 else y
    if nc > 1:
        _state_fwd(
            (n_seq, nc - 1),
            (u, g, a, states),
            (L, R, nc, nrb, ksub),
            {"BLOCK_T": t.block_t, "BLOCK_R": t.fwd_r, "LOG_T": _log2(t.block_t)},
            t.fwd_warps,
        )
    _scan_fwd_k(
        (n_seq, nc),
        (u, g, v, a, states, y, carry),
        (L, R, nc, nrb, nt, ksub),
        {"BLOCK_T": t.block_t, "BLOCK_R": t.fwd_r, "WINDOW": WINDOW, "LOG_W": _log2(WINDOW), "SAVE_CARRY": save_carry},
        t.fwd_warps,
    )
    return y, (carry if save_carry else None), t


def _scan_bwd(dy, u, g, v, a, carry, tiles: ScanTiles):
    """Backward launcher: (du, dg, dv) [B, L, R] in the input dtype, da [R] in a's dtype. dy contiguous. Two
    launches; the carry's first row serves as counters during the second and is left 0, as the forward wrote it."""
    B, L, R = u.shape
    t = tiles
    nc, nrb, nt = _cdiv(L, t.bwd_c), _cdiv(R, t.bwd_r), _cdiv(L, t.block_t)
    n_seq, ksub = B * nrb, t.bwd_c // t.block_t
    du, dg, dv = torch.empty_like(u), torch.empty_like(g), torch.empty_like(v)
    da_part = torch.empty((B * nc, R), dtype=torch.float32, device=u.device)
    da = torch.empty_like(a)  # summed from da_part by the scan kernel itself, in a's dtype
    states = torch.empty(n_seq * nc * t.bwd_r, dtype=torch.float32, device=u.device) if nc > 1 else da_part
    if nc > 1:
        _state_bwd(
            (n_seq, nc - 1),
            (dy, g, v, a, states),
            (L, R, nc, nrb, ksub),
            {"BLOCK_T": t.block_t, "BLOCK_R": t.bwd_r, "LOG_T": _log2(t.block_t)},
            t.bwd_warps,
        )
    _scan_bwd_k(
        (n_seq, nc),
        (dy, u, g, v, a, states, carry, du, dg, dv, da_part, da),
        (L, R, nc, nrb, nt, ksub),
        {"BLOCK_T": t.block_t, "BLOCK_R": t.bwd_r, "WINDOW": WINDOW, "LOG_W": _log2(WINDOW), "RED_ROWS": _RED_ROWS},
        t.bwd_warps,
    )
    return du, dg, dv, da
