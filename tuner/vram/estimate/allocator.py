"""The caching allocator's side of the estimate: request rounding, the cross-entropy backward's segment gap
(kappa), and the hole a recomputed (checkpointed) block's requests leave behind."""

from __future__ import annotations

import math
from typing import Any

from model.shapes import (  # torch-free, the model's own
    CONV_KERNEL,
    FFN_EXPANSION,
    factorize,
    rows_per_leading_digit,
    table_chunk_step,
)
from tuner.units import GIB, MIB

BLOCK = 512  # caching allocator: every request is rounded up to a multiple of 512 bytes
PAGE = 2 * MIB  # expandable segments map physical memory in 2 MiB pages (both pools)


def block_round(nbytes: float) -> int:
    """Bytes the caching allocator hands out for one request of `nbytes` (0 stays 0)."""
    n = int(math.ceil(nbytes))
    return 0 if n <= 0 else -(-n // BLOCK) * BLOCK


def allocator_gib(
    tensor_gib: float,
    ce_backward_gib: float,
    ce_chunk_gib: float,
    kappa: float,
    recompute_gib: float = 0.0,
    recompute_hole_gib: float = 0.0,
) -> float:
    """Reserved - allocated at the peak (GiB) under expandable segments.

    The large pool's segment end reaches the highest of: the tensor peak; the tensor bytes at the CE backward +
    kappa F (the CE chunk's hole); the tensor bytes at the worst moment of the recomputed blocks' backward +
    the recompute hole (recompute_hole_bytes). That end is rounded up to a 2 MiB page; the small pool (requests
    <= 1 MiB: norms' statistics, scalars) maps at least one page of its own.
    """
    high = max(tensor_gib, ce_backward_gib + kappa * ce_chunk_gib, recompute_gib + recompute_hole_gib) * GIB
    pages = -(-int(math.ceil(high)) // PAGE) * PAGE - tensor_gib * GIB
    return (pages + PAGE) / GIB


def recompute_hole_bytes(c: Any) -> int:
    """Bytes by which a checkpointed block's recompute can push the segment end past the live bytes: its largest
    single request, 0 when nothing is recomputed (no checkpointing of blocks or of the AR-SSM mixer).

    Why: in the backward each recomputed block asks again, in forward order, for the same sizes that the previous
    block's backward has just freed, but between the free and the new requests the residual gradient [N, D] fp32
    and the block's parameter gradients are placed by best fit into that freed region and split it. The largest
    request (the FFN's hidden [N, 4D] in the autocast dtype; the mixer's largest when only the mixer is
    recomputed) then finds no hole and extends the end, leaving a hole just short of itself; the smaller requests
    still fit the remaining holes. One such request is what the H100 measured where the recomputed blocks'
    backward set the peak (docs/vram-estimate.md). Shapes: N = B L positions, D d_model; the sizes are the
    tensors.py ones, each rounded to 512-byte blocks."""
    if not (c.use_gradient_checkpointing or c.checkpoint_ar_ssm):
        return 0
    s = 2 if c.dtype != "float32" else 4
    N, D = c.batch_size * c.n_seq, c.d_model
    mixer = [
        s * N * D,  # the norm output, the conv and W_o outputs
        4 * N * D,  # the fp32 residual-stream temporaries (norm backward, residual gradient)
        s * c.batch_size * D * (c.n_seq + CONV_KERNEL - 1),  # the conv's left-padded input
        s * N * c.gate_hidden_dim,  # the gate MLP's hidden
    ]
    if not c.use_gradient_checkpointing:
        return block_round(max(mixer))
    return block_round(max([*mixer, s * N * FFN_EXPANSION * D]))


def _segment_gap(events: list[tuple[str, str, int]]) -> int:
    """Replay allocations on one expandable segment with the caching allocator's best-fit policy.

    events: ("alloc", name, bytes) | ("free", name, 0) in program order. A request takes the smallest free block
    that fits (lowest address on ties) and splits it; frees coalesce with free neighbours; a request that fits
    nowhere extends the segment's end, reusing a free block at the end. Returns (high-water mark of the end) -
    (high-water mark of the live bytes) in bytes: 0 for any pattern whose holes are always refilled in time, e.g.
    a monotone sequence of allocations."""
    blocks: list[list[Any]] = []  # [start, size, name or None], address order, covering [0, end)
    end = live = hw_end = hw_live = 0
    for kind, name, nbytes in events:
        if kind == "free":
            i = next(j for j, b in enumerate(blocks) if b[2] == name)
            live -= blocks[i][1]
            blocks[i][2] = None
            if i + 1 < len(blocks) and blocks[i + 1][2] is None:
                blocks[i][1] += blocks.pop(i + 1)[1]
            if i > 0 and blocks[i - 1][2] is None:
                blocks[i - 1][1] += blocks.pop(i)[1]
            continue
        fits = [(b[1], b[0], j) for j, b in enumerate(blocks) if b[2] is None and b[1] >= nbytes]
        if fits:
            _, _, j = min(fits)
            b = blocks[j]
            if b[1] > nbytes:
                blocks.insert(j + 1, [b[0] + nbytes, b[1] - nbytes, None])
            b[1], b[2] = nbytes, name
        elif blocks and blocks[-1][2] is None:  # grow the free tail
            end += nbytes - blocks[-1][1]
            blocks[-1][1], blocks[-1][2] = nbytes, name
        else:
            blocks.append([end, nbytes, name])
            end += nbytes
        live += nbytes
        hw_end, hw_live = max(hw_end, end), max(hw_live, live)
    return hw_end - hw_live


def ce_backward_events(c: Any, rows: int, *, chunked: bool = True) -> list[tuple[str, str, int]]:
    """The large-pool allocations of one cross-entropy chunk (model.lm.Phase1LM._ce_sum / logits) of `rows`
    positions, from its recomputed forward through its backward, in program order (bytes, 512-rounded; requests of
    1 MiB or less go to the small pool and are left out). chunked=False: the unchunked path, run once in the forward,
    whose logits LMOutput keeps through the backward, while the previous step's logits (the train loop's old `out`)
    live until model() returns and are freed below the new ones.

    Tied head: hs = h / sqrt(D); per vocabulary chunk the table block is built ([rows_k, D]: the GEMM output, then
    the permuted copy the matmul keeps) and multiplied into a part [rows, w] (ac) that is copied into the logits
    buffer `out` [rows, V] (allocated after the first part) and freed once the next part exists. Then `.float()`
    (autocast only: an fp32 copy; in fp32 the same tensor), log-softmax (kept), and the backward's nll and
    log-softmax gradients [rows, V] fp32, and (autocast) the cast back of the gradient to the logits' dtype."""
    amp = c.dtype != "float32"
    s = 2 if amp else 4
    V, D = c.vocab_size, c.d_model
    ev: list[tuple[str, str, int]] = []

    def alloc(name: str, nbytes: float) -> None:
        if nbytes > MIB:
            ev.append(("alloc", name, block_round(nbytes)))

    def free(name: str) -> None:
        if any(e[1] == name for e in ev if e[0] == "alloc"):
            ev.append(("free", name, 0))

    f = 4 * rows * V
    if not chunked:
        alloc("previous_logits", s * rows * V)
    if c.head == "tied":
        ds, vs = factorize(D, c.htt_num_cores), factorize(V, c.htt_num_cores)
        per_digit = rows_per_leading_digit(vs)
        step = table_chunk_step(per_digit)
        DD = math.prod(ds)
        alloc("hs", s * rows * D)
        starts = list(range(0, V, step))
        for k, start in enumerate(starts):
            end = min(start + step, V)
            rows_k = (-(-end // per_digit) - start // per_digit) * per_digit
            alloc(f"table_tmp{k}", s * rows_k * DD)
            alloc(f"table{k}", s * rows_k * DD)  # kept by the matmul for the backward
            free(f"table_tmp{k}")
            if len(starts) == 1:
                alloc("logits", s * rows * V)
                break
            alloc(f"part{k}", s * rows * (end - start))
            if k == 0:
                alloc("logits", s * rows * V)
            else:
                free(f"part{k - 1}")
        if len(starts) > 1:
            free(f"part{len(starts) - 1}")
    else:
        alloc("down", s * rows * c.head_rank)
        alloc("logits", s * rows * V)
    if amp:
        alloc("logits_fp32", f)
    alloc("log_softmax", f)
    if amp:
        free("logits_fp32")
    if chunked:
        free("logits")  # the checkpointed chunk keeps only what its ops saved
    else:
        free("previous_logits")  # the old `out` is released when model(...) returns
    alloc("nll_grad", f)
    alloc("log_softmax_grad", f)
    free("nll_grad")
    free("log_softmax")
    if amp:
        alloc("logits_grad", s * rows * V)
    return ev


def replay_kappa(c: Any, rows: int, chunked: bool) -> float:
    """kappa before any trial on the device: the best-fit replay of one CE chunk's backward (ce_backward_events),
    the segment's growth past the live bytes in units of F = 4 rows V. Under autocast about 0.5 (chunked: the
    freed logits buffer, separated from the fp32 copy's hole by the kept table blocks; unchunked: the previous
    step's logits; either is too small for the log-softmax gradient) plus the table and part blocks' holes; in
    fp32 only those small holes (about 0.1)."""
    return float(_segment_gap(ce_backward_events(c, rows, chunked=chunked)) / (4 * rows * c.vocab_size))
