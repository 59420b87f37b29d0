"""Predict a training trial's peak GPU memory, as NVML sees the process, from its Phase1Config alone.

Pure arithmetic (no torch import): a trial is estimated in milliseconds on a machine with no GPU. Three parts:

1. tensor bytes - what `torch.cuda.max_memory_allocated` reports: the peak over one steady-state training step
   (step >= 2, AdamW state present) of parameters, gradients, optimizer state, saved activations (with each
   checkpointing flag), autocast weight copies, the chunked logits/cross-entropy working set and the temporaries
   live at that moment, each request rounded up to the caching allocator's 512-byte blocks. The step is followed
   as `model/train.py` runs it: forward under autocast, the chunked CE inside `torch.utils.checkpoint`, backward
   (recomputing checkpointed blocks one at a time), clip, fused AdamW (CUDA) / for-loop AdamW (CPU), zero_grad
   with set_to_none. Which tensors each op keeps is read off model/{htt,ar_ssm,ffn,lm}.py and kernels/scan.py;
   the CPU test suite checks the figure against a real peak measurement.
2. allocator - reserved over allocated with `expandable_segments:True` (what the worker sets). Each pool is ONE
   virtual segment per stream, mapped in 2 MiB pages at its end and never unmapped before empty_cache, so the peak
   reserved is the high-water mark of the segment's end: the peak allocated rounded up to a page (plus the small
   pool's page), unless a free hole in the middle is too small for a later request that then extends the end.
   The one pattern at the peak that does this is the chunked cross-entropy's backward (replayed on a best-fit
   segment by `_segment_gap`): under autocast a chunk recomputes logits [rows, V] (ac), their fp32 copy and the
   log-softmax (fp32, saved); logits and copy are freed, leaving a 1.5 F hole (F = 4 rows V bytes); the nll
   gradient (F) takes it and leaves 0.5 F; the log-softmax gradient (F) does not fit and extends the end. In fp32
   `.float()` is a no-op, the hole is exactly F and fills exactly: no gap. So reserved_peak = max(tensor peak,
   tensor at the CE backward + kappa F), kappa from the replay of the config's own CE allocations (about 0.5-0.65
   under autocast, 0.1-0.2 in fp32, tied head's table blocks included), plus the device's median offset once
   `tuner.calibration.refine` has seen trials of that dtype class.
3. outside the allocator - CUDA context, loaded kernel modules, library handles: a per-(device, driver, torch)
   calibration (tuner.calibration), never a constant in this file.

All results in GiB (2^30 bytes). Shapes: B batch, L n_seq, N = B*L positions, D d_model, V vocab, r ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from model.shapes import CONV_KERNEL, FFN_EXPANSION, factorize  # torch-free: `import model` loads only the config

GIB = float(2**30)
MIB = 2**20
BLOCK = 512  # caching allocator: every request is rounded up to a multiple of 512 bytes
PAGE = 2 * MIB  # expandable segments map physical memory in 2 MiB pages (both pools)

# Constants of the model code these formulas follow (kept equal to theirs; a test imports both and compares).
TABLE_CHUNK_ROWS = 8192  # model.lm.TABLE_CHUNK_ROWS: tied-head table rows built at once
SCAN_TORCH_CHUNK = 64  # kernels.scan._TORCH_CHUNK


def _r(nbytes: float) -> int:
    """Bytes the caching allocator hands out for one request of `nbytes` (0 stays 0)."""
    n = int(math.ceil(nbytes))
    return 0 if n <= 0 else -(-n // BLOCK) * BLOCK


# --- result ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A prediction of one trial's peak memory. All `*_gib` in GiB; `components` maps name -> GiB at the peak."""

    total_gib: float  # tensor + allocator + outside: the predicted NVML per-process peak
    tensor_gib: float  # predicted torch.cuda.max_memory_allocated (raw x calibration tensor_scale)
    allocator_gib: float  # predicted peak reserved - peak allocated
    outside_gib: float  # memory outside the caching allocator (calibrated per device/driver/torch)
    components: dict[str, float]  # tensor bytes per component live at the peak moment
    tensor_raw_gib: float  # the analytic tensor peak before the calibration's correction
    tensor_scale: float  # calibration's multiplicative tensor correction (1.0 uncalibrated)
    peak_moment: str  # where in the step the peak happens
    moments: dict[str, float]  # raw tensor GiB at each candidate moment
    calibrated: bool  # True when the outside part comes from a calibration of this device
    outside_source: str  # where the outside part comes from, in words
    calibration_key: str | None
    device: str  # "cuda" | "cpu"
    batch_size: int
    n_seq: int
    params: int
    notes: tuple[str, ...] = ()
    transient_gib: float = 0.0  # part of the tensor peak that is step-transient (activations, temporaries)
    ce_chunk_gib: float = 0.0  # F: one cross-entropy chunk's fp32 [rows, V] tensor
    ce_backward_gib: float = 0.0  # tensor bytes (scaled like tensor_gib) when the CE backward's hole is open
    ce_hole_kappa: float = 0.0  # segment growth past the live bytes at the CE backward, in units of F
    ce_replay_kappa: float = 0.0  # the best-fit replay's kappa for this config (ce_hole_kappa = it + device offset)
    kappa_source: str = ""  # "replay" or "replay + device offset of N trials"
    allocator_class: str = ""  # "amp" | "fp32": the dtype class whose kappa applies (calibration keys on it)
    config: dict[str, Any] = field(default_factory=dict, repr=False)

    def allocator_for(self, tensor_peak_gib: float, kappa: float | None = None) -> float:
        """Allocator overhead (GiB) this model predicts when the tensor peak reached is `tensor_peak_gib` (the CE
        backward moment is scaled by the same ratio); `kappa` overrides the estimate's own."""
        k = self.ce_hole_kappa if kappa is None else kappa
        scale = tensor_peak_gib / self.tensor_gib if self.tensor_gib > 0 else 1.0
        return _allocator_gib(tensor_peak_gib, self.ce_backward_gib * scale, self.ce_chunk_gib, k)

    def observed_kappa(self, torch_peak_gib: float, allocator_gap_gib: float) -> float | None:
        """Invert the allocator model: the kappa that explains a measured gap (reserved - allocated peak, GiB).

        None when the gap is page rounding only and the CE backward stayed below the peak: the hole did not set the
        high-water mark, so the trial bounds kappa from above without measuring it."""
        if self.ce_chunk_gib <= 0:
            return None
        scale = torch_peak_gib / self.tensor_gib if self.tensor_gib > 0 else 1.0
        ce_bwd = self.ce_backward_gib * scale
        pages = _allocator_gib(torch_peak_gib, 0.0, 0.0, 0.0)
        excess = allocator_gap_gib - pages
        if excess <= 2 * PAGE / GIB and ce_bwd < torch_peak_gib:
            return None
        return max(0.0, (excess + torch_peak_gib - ce_bwd) / self.ce_chunk_gib)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_gib": self.total_gib, "tensor_gib": self.tensor_gib, "allocator_gib": self.allocator_gib,
            "outside_gib": self.outside_gib, "components": dict(self.components),
            "tensor_raw_gib": self.tensor_raw_gib, "tensor_scale": self.tensor_scale,
            "peak_moment": self.peak_moment, "moments": dict(self.moments),
            "calibrated": self.calibrated, "outside_source": self.outside_source,
            "calibration_key": self.calibration_key, "device": self.device, "batch_size": self.batch_size,
            "n_seq": self.n_seq, "params": self.params, "notes": list(self.notes),
            "transient_gib": self.transient_gib, "ce_chunk_gib": self.ce_chunk_gib,
            "ce_backward_gib": self.ce_backward_gib, "ce_hole_kappa": self.ce_hole_kappa,
            "ce_replay_kappa": self.ce_replay_kappa,
            "kappa_source": self.kappa_source, "allocator_class": self.allocator_class,
        }


def _allocator_gib(tensor_gib: float, ce_backward_gib: float, ce_chunk_gib: float, kappa: float) -> float:
    """Reserved - allocated at the peak (GiB) under expandable segments.

    The large pool's segment end reaches max(tensor peak, tensor at the CE backward + kappa F), rounded up to a
    2 MiB page; the small pool (requests <= 1 MiB: norms' statistics, scalars) maps at least one page of its own.
    """
    high = max(tensor_gib, ce_backward_gib + kappa * ce_chunk_gib) * GIB
    pages = -(-int(math.ceil(high)) // PAGE) * PAGE - tensor_gib * GIB
    return (pages + PAGE) / GIB


def _segment_gap(events: list[tuple[str, str, int]]) -> int:
    """Replay allocations on one expandable segment with the caching allocator's best-fit policy.

    events: ("alloc", name, bytes) | ("free", name, 0) in program order. A request takes the smallest free block
    that fits (lowest address on ties) and splits it; frees coalesce with free neighbours; a request that fits
    nowhere extends the segment's end, reusing a free block at the end. Returns (high-water mark of the end) -
    (high-water mark of the live bytes) in bytes: 0 for any pattern whose holes are always refilled in time, e.g.
    a monotone sequence of allocations."""
    blocks: list[list] = []  # [start, size, name or None], address order, covering [0, end)
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
            ev.append(("alloc", name, _r(nbytes)))

    def free(name: str) -> None:
        if any(e[1] == name for e in ev if e[0] == "alloc"):
            ev.append(("free", name, 0))

    f = 4 * rows * V
    if not chunked:
        alloc("previous_logits", s * rows * V)
    if c.head == "tied":
        ds, vs = factorize(D, c.htt_num_cores), factorize(V, c.htt_num_cores)
        per_digit = vs[1] * (vs[2] if c.htt_num_cores == 3 else 1)
        step = max(1, TABLE_CHUNK_ROWS // per_digit) * per_digit
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
    return _segment_gap(ce_backward_events(c, rows, chunked=chunked)) / (4 * rows * c.vocab_size)


# --- the tensor model --------------------------------------------------------------------------------------------


class _Timeline:
    """Live bytes by component through one training step; records the peak and the live set at the peak."""

    def __init__(self) -> None:
        self.live: dict[str, int] = {}
        self.peak = -1
        self.peak_parts: dict[str, int] = {}
        self.peak_moment = ""
        self.moments: dict[str, int] = {}

    def add(self, comp: str, nbytes: int) -> None:
        self.live[comp] = self.live.get(comp, 0) + int(nbytes)

    def sub(self, comp: str, nbytes: int) -> None:
        self.live[comp] = self.live.get(comp, 0) - int(nbytes)

    def mark(self, moment: str, **transient: int) -> None:
        """A candidate peak: the live set plus `transient` (component -> bytes) alive only at this moment."""
        parts = dict(self.live)
        for k, v in transient.items():
            parts[k] = parts.get(k, 0) + int(v)
        total = sum(parts.values())
        self.moments[moment] = max(self.moments.get(moment, 0), total)
        if total > self.peak:
            self.peak, self.peak_parts, self.peak_moment = total, parts, moment


@dataclass(frozen=True)
class _Shape:
    B: int
    L: int
    N: int
    D: int
    V: int
    s: int  # bytes of a matmul output / autocast activation: 2 (bf16, fp16) or 4 (fp32)
    amp: bool
    cuda: bool


def _param_tensors(c: Any) -> list[int]:
    """Element counts of every parameter tensor, in model order (model.lm.Phase1LM.parameters())."""
    D, r, m, H, f = c.d_model, c.ar_ssm_max_rank, c.ar_ssm_min_rank, c.gate_hidden_dim, c.ffn_rank
    vs, ds = factorize(c.vocab_size, c.htt_num_cores), factorize(c.d_model, c.htt_num_cores)
    R = c.htt_rank
    out: list[int] = []
    if c.htt_num_cores == 2:
        out += [vs[0] * ds[0] * R, vs[1] * R * ds[1]]
        if c.htt_phase_encoding:
            out += [vs[0] * R, vs[1] * R]
    else:
        out += [vs[0] * ds[0] * R, vs[1] * R * ds[1] * R, vs[2] * R * ds[2]]
        if c.htt_phase_encoding:
            out += [vs[0] * R, vs[1] * R, vs[1] * R, vs[2] * R]
    for _ in range(c.n_layers):
        out.append(D)  # norm1
        if r > m:
            out += [H * D, H, (r - m) * H, r - m]  # gate MLP
        out += [r * D, r * D, D * r, D * CONV_KERNEL, D, r]  # U, V, W_o, conv weight+bias, decay_logit
        out.append(D)  # norm2
        out += [f * D, FFN_EXPANSION * D * f, f * FFN_EXPANSION * D, D * f]  # U1, V1, U2, V2
    out.append(D)  # norm_f
    if c.head == "low_rank":
        out += [c.head_rank * D, c.vocab_size * c.head_rank]
    return out


def _linear_weight_elems(c: Any) -> int:
    """Elements of all nn.Linear / Conv1d weights (what autocast casts and caches during the forward)."""
    D, r, m, H, f = c.d_model, c.ar_ssm_max_rank, c.ar_ssm_min_rank, c.gate_hidden_dim, c.ffn_rank
    per_layer = (H * D + H + (r - m) * H + (r - m) if r > m else 0) + 3 * r * D + D * CONV_KERNEL + D
    per_layer += 2 * f * FFN_EXPANSION * D + 2 * D * f
    head = c.head_rank * (D + c.vocab_size) if c.head == "low_rank" else 0
    return c.n_layers * per_layer + head


def _rms_norm(sh: _Shape) -> dict[str, int]:
    """RMSNorm (model.lm.RMSNorm / _RMSNormFn) of the fp32 residual stream. saved: rstd [N, 1] (its input x, the
    residual tensor, is counted by the caller); out: the normed x in the autocast dtype (fp32 without autocast);
    fwd: x*rstd and x*rstd*w fp32 before the cast; bwd: the fp32 dy, y = x*rstd, dy*w, and two more [N, D] fp32
    temporaries of dx at its worst point."""
    N, D = sh.N, sh.D
    f32 = _r(4 * N * D)
    return {"saved": _r(4 * N), "out": _r(sh.s * N * D), "fwd": 2 * f32, "bwd": 5 * f32}


def _ffn(sh: _Shape, c: Any) -> dict[str, int]:
    """Low-rank FFN (model.ffn) on the norm output xn (ac): saves xn (U1's input; counted here), x U1 [N, r],
    pre-GELU [N, 4D], GELU out [N, 4D], U2 out [N, r].
    bwd: grad of its output (ac), grad of GELU's output [N, 4D] and of x U2 [N, r], before GELU's out is freed."""
    N, D, s, f = sh.N, sh.D, sh.s, c.ffn_rank
    h4 = _r(s * N * FFN_EXPANSION * D)
    saved = _r(s * N * D) + 2 * _r(s * N * f) + 2 * h4
    out = _r(s * N * D)
    bwd = _r(s * N * D) + h4 + _r(s * N * f)
    return {"saved": saved, "out": out, "fwd": 0, "bwd": bwd}


def _scan(sh: _Shape, c: Any) -> dict[str, int]:
    """The gated scan: Triton (fused, CUDA) or the chunked torch backend. Inputs u, g, v are counted by the mixer.

    saved: what it keeps beyond u, g, v; out: y [N, r] (W_o's saved input); fwd: extra at its forward's end."""
    B, L, N, s = sh.B, sh.L, sh.N, sh.s
    R = c.ar_ssm_max_rank
    nr = _r(s * N * R)
    if c.ar_ssm_use_fused_scan and sh.cuda:
        block_r = min(1 << (R - 1).bit_length(), 32)  # kernels.scan._tiles
        block_t = min(64, max(16, 1 << (L - 1).bit_length()))
        nc, nrb = -(-L // block_t), -(-R // block_r)
        words = B * nrb * nc * block_r
        carry = _r(4 * words)
        work = _r(8 * (2 * words + 1))
        return {"saved": carry, "out": nr, "fwd": work, "bwd": 3 * nr + carry + work}
    C = min(SCAN_TORCH_CHUNK, max(L, 1))
    n = -(-L // C)
    Np = B * n * C  # padded positions
    f4, f4p, chunk = _r(4 * N * R), _r(4 * Np * R), _r(4 * B * C * R)
    # Measured with saved_tensors_hooks on kernels/scan.py's torch backend (tiny shapes, padded and not):
    # autocast: five [N, r] fp32 tensors (copies of u, g, v; g*u; g*v), the stacked state [N', r] fp32, the
    # einsum's bf16 copy of x [N', r], every chunk's state but the last (each carry, a view of it, is saved by
    # the next chunk's mul), and per-layer constants: the decay matrix [r, C, C] (cast to ac), the causal mask
    # [C, C] fp32, its int64 index [C, C], the powers [C + 1, r] fp32.
    consts = _r(4 * C * C) + _r(8 * C * C) + _r(4 * (C + 1) * R)
    if sh.amp:
        saved = 5 * f4 + f4p + _r(s * Np * R) + (n - 1) * chunk + _r(s * C * C * R) + consts
    else:
        saved = 4 * f4 + 2 * f4p + (n - 1) * chunk + _r(4 * C * C * R) + consts
    out = nr
    fwd = 2 * f4p + chunk + f4
    bwd = 7 * f4
    return {"saved": saved, "out": out, "fwd": fwd, "bwd": bwd}


def _mixer(sh: _Shape, c: Any) -> dict[str, int]:
    """AR-SSM mixer (model.ar_ssm.ARSSM) on the norm output xn (ac): gate MLP, U and V share xn (saved once,
    counted here); the conv saves the left-padded x^T [B, D, L + 2] (ac)."""
    B, L, N, D, s = sh.B, sh.L, sh.N, sh.D, sh.s
    R, m, H = c.ar_ssm_max_rank, c.ar_ssm_min_rank, c.gate_hidden_dim
    saved = _r(s * N * D)
    if R > m:
        saved += 2 * _r(s * N * H) + _r(s * N * (R - m))  # gate hidden (GELU input), GELU out, sigmoid out
    saved += 3 * _r(s * N * R)  # g, u, v
    pad = B * D * (L + CONV_KERNEL - 1)
    saved += _r(s * pad)
    sc = _scan(sh, c)
    saved += sc["saved"] + sc["out"]  # y_scan is W_o's input
    out = _r(s * N * D)
    # forward worst point: conv out + W_o out + their sum [N, D] (ac), or the scan's own temporaries
    fwd = max(sc["fwd"], 3 * _r(s * N * D))
    # backward worst point: grad of y (ac), the conv input's grad (ac) and xn's accumulated grad (ac)
    bwd = max(sc["bwd"], 2 * _r(s * N * D) + _r(s * pad))
    return {"saved": saved, "out": out, "fwd": fwd, "bwd": bwd, "scan": sc["saved"] + sc["out"]}


def _htt_rows(sh: _Shape, c: Any) -> dict[str, int]:
    """HTT embedding forward (model.htt.HTTEmbedding.forward) for N tokens: saved set, fp32 output, extras."""
    n, s = sh.N, sh.s
    R = c.htt_rank
    ds = factorize(c.d_model, c.htt_num_cores)
    idx = _r(8 * n)
    if c.htt_num_cores == 2:
        d1, d2 = ds
        g1, g2 = _r(4 * n * d1 * R), _r(4 * n * R * d2)
        saved = 2 * idx
        if c.htt_phase_encoding:
            saved += 2 * _r(4 * n * R) + g1  # phase sum (cos input), cos, gathered core1 rows (phase mul)
        saved += (_r(s * n * d1 * R) + _r(s * n * R * d2)) if sh.amp else (g1 + g2 if c.htt_phase_encoding else g2 + g1)
        bmm_out = _r(s * n * d1 * d2)
        fwd = g1 + g2 + (g1 if c.htt_phase_encoding else 0)
    else:
        # 3 cores: the phases scale the outer cores' rows (G1, G3), never the middle core's [N, r, d2, r].
        d1, d2, d3 = ds
        g1, g2, g3 = _r(4 * n * d1 * R), _r(4 * n * R * d2 * R), _r(4 * n * R * d3)
        saved = 3 * idx
        if c.htt_phase_encoding:
            saved += 4 * _r(4 * n * R) + g1 + g3  # two phase sums and cosines, fp32 G1 and G3 rows
        t = _r(s * n * d1 * d2 * R)
        if sh.amp:  # both bmms' inputs in ac: G1 rows, middle rows, t, G3 rows
            saved += _r(s * n * d1 * R) + _r(s * n * R * d2 * R) + t + _r(s * n * R * d3)
        else:
            saved += g1 + g2 + t + g3
        bmm_out = _r(s * n * d1 * d2 * d3)
        fwd = g1 + g2 + g3 + t
    crop = _r(s * n * c.d_model) if math.prod(ds) != c.d_model else 0  # reshape of the cropped slice copies
    out = _r(4 * n * c.d_model)  # .float(): fp32 residual stream (a no-op without autocast)
    if not sh.amp and not crop:
        out = bmm_out
    fwd += bmm_out + crop
    return {"saved": saved, "out": out, "fwd": fwd, "bwd": 2 * (g1 + g2) + out}


def _loss_chunk(sh: _Shape, c: Any, rows: int) -> dict[str, int]:
    """Head + cross-entropy of `rows` positions (model.lm.Phase1LM._ce_sum), from the fp32 normed hidden states.

    fwd: everything alive at the end of its forward (logits, their fp32 copy, log-softmax, the head's saved set);
    saved: what its recompute keeps for the backward (log-softmax out, the head's saved set);
    bwd: at log-softmax's backward: saved + the nll gradient + log-softmax's gradient [rows, V] fp32."""
    V, D, s = sh.V, sh.D, sh.s
    lg = _r(s * rows * V)
    f32 = _r(4 * rows * V)
    if c.head == "tied":
        ds = factorize(c.d_model, c.htt_num_cores)
        vs = factorize(c.vocab_size, c.htt_num_cores)
        per_digit = vs[1] * (vs[2] if c.htt_num_cores == 3 else 1)
        step = max(1, TABLE_CHUNK_ROWS // per_digit) * per_digit
        n_chunks = -(-V // step)
        DD = math.prod(ds)
        hs = _r(s * rows * D)  # h / sqrt(D) in h's dtype (ac), kept by every table chunk's matmul
        tables = 0
        table_tmp = 0
        for k in range(n_chunks):
            start, end = k * step, min((k + 1) * step, V)
            lo, hi = start // per_digit, -(-end // per_digit)
            rows_k = (hi - lo) * per_digit
            tables += _r(s * rows_k * DD)  # the permuted copy the matmul keeps
            table_tmp = max(table_tmp, _r(s * rows_k * DD))  # matmul output before the permuting copy
        cores = 2 * _r(4 * sum(_param_tensors(c)[:2]))  # phase-scaled cores (cos and sin halves)
        if c.htt_num_cores == 3:
            rr = (2 if c.htt_phase_encoding else 1) * c.htt_rank
            # every chunk recomputes t23 [r1, v2*v3*d2*d3] (ac, permuted copy kept by its matmul) and the scaled
            # middle core [v2*r1*d2, r2] (ac cast kept by the first matmul)
            cores += n_chunks * (_r(s * rr * vs[1] * vs[2] * ds[1] * ds[2]) + _r(s * vs[1] * rr * ds[1] * rr))
        head_saved = hs + tables + cores
        part = _r(s * rows * step) if n_chunks > 1 else 0
        head_fwd = head_saved + table_tmp + part
    else:
        r_h = c.head_rank
        # h (ac) is a view of the kept hidden states; down's output; up's weight cast again in the recompute
        head_saved = _r(s * rows * r_h) + (_r(s * V * r_h) if sh.amp else 0)
        head_fwd = head_saved
    copy = f32 if sh.amp else 0  # logits.float()
    fwd = head_fwd + lg + copy + f32
    saved = head_saved + f32
    bwd = saved + 2 * f32
    return {"fwd": fwd, "saved": saved, "bwd": bwd, "logits": lg}


def _tensor_timeline(c: Any, device: str) -> tuple[_Timeline, dict[str, int]]:
    """Walk one steady-state training step (model/train.py) and record the candidate peaks."""
    amp = c.dtype != "float32"
    sh = _Shape(B=c.batch_size, L=c.n_seq, N=c.batch_size * c.n_seq, D=c.d_model, V=c.vocab_size,
                s=2 if amp else 4, amp=amp, cuda=device == "cuda")
    N, D = sh.N, sh.D
    params = _param_tensors(c)
    p_bytes = sum(_r(4 * p) for p in params)
    tl = _Timeline()
    tl.add("parameters", p_bytes)
    tl.add("optimizer_state", 2 * p_bytes + (len(params) * BLOCK if sh.cuda else 0))  # + per-param step (fused)
    tl.add("batch", _r(8 * c.batch_size * (c.n_seq + 1)))
    x_res = _r(4 * N * D)  # one fp32 residual-stream tensor
    tl.add("previous_step_output", x_res)  # last step's LMOutput.hidden lives until this forward returns
    weights_ac = _r(2 * _linear_weight_elems(c)) if amp else 0
    tl.add("autocast_weight_copies", weights_ac)  # autocast's cache of cast weights, until autocast exits

    norm = _rms_norm(sh)
    mixer = _mixer(sh, c)
    ffn = _ffn(sh, c)
    ck_block = c.use_gradient_checkpointing
    ck_mixer = c.checkpoint_ar_ssm and not ck_block
    # Full saved set of one block (what it keeps without checkpointing, or while recomputed in the backward):
    # norm1 keeps the block input, norm2 keeps the mid residual; both keep rstd.
    mix_full = norm["saved"] + mixer["saved"]  # (the mixer counts the norm output it saves)
    ffn_full = x_res + norm["saved"] + ffn["saved"]  # mid residual + norm2 + FFN
    full_block = x_res + mix_full + ffn_full
    if ck_block:
        kept = x_res  # the checkpoint's input
    elif ck_mixer:
        kept = x_res + ffn_full  # checkpointed norm1+mixer keep only the block input
    else:
        kept = full_block

    # --- forward ---------------------------------------------------------------------------------------------
    emb = _htt_rows(sh, c)
    tl.mark("forward: embedding", activations_embedding=emb["saved"] + emb["fwd"])
    tl.add("activations_embedding", _r(8 * N) if c.checkpoint_htt else emb["saved"])
    tl.add("residual_stream", x_res)  # the current block input
    for k in range(c.n_layers):
        # inside block k: its input is live (residual_stream); what it saves accumulates
        in_mixer = norm["saved"] + norm["out"] + mixer["saved"] + mixer["fwd"]
        in_ffn = mix_full + x_res + norm["saved"] + norm["out"] + ffn["saved"] + ffn["out"]
        if ck_mixer:
            in_ffn -= mix_full
        tl.mark(f"forward: block {k}", forward_temporaries=max(in_mixer, in_ffn))
        tl.add("activations_blocks", kept)  # includes its input (the residual tensor it was given)
        tl.sub("residual_stream", x_res)
        tl.add("residual_stream", x_res)  # its output, the next block's input
    tl.sub("residual_stream", x_res)
    tl.add("activations_blocks", x_res)  # the last output, kept by norm_f
    tl.add("activations_final_norm", norm["saved"] + norm["out"])  # rstd and h (LMOutput.hidden)
    chunked = 0 < c.loss_chunk_size < c.n_seq
    rows = c.batch_size * (c.loss_chunk_size if chunked else c.n_seq)
    lc = _loss_chunk(sh, c, rows)
    n_loss_chunks = -(-c.n_seq // c.loss_chunk_size) if chunked else 1
    tl.mark("forward: loss", logits_loss=lc["fwd"])
    if not chunked:
        tl.add("logits_loss", lc["saved"] + lc["logits"])  # logits returned in LMOutput; log-softmax saved
    tl.sub("previous_step_output", x_res)  # the old `out` is released when model(...) returns
    tl.sub("autocast_weight_copies", weights_ac)  # autocast exits after the forward: its cache is cleared
    if amp and not ck_block:
        # the non-checkpointed linears keep their cast weights for the backward
        keep = weights_ac if not ck_mixer else _r(2 * (_linear_weight_elems(c) - c.n_layers * _mixer_weight_elems(c)))
        tl.add("autocast_weight_copies", keep)

    # --- backward --------------------------------------------------------------------------------------------
    emb_grads = _r(4 * sum(params[:4]))
    if chunked:
        h_grad = x_res if n_loss_chunks > 1 else 0  # accumulated gradient of h from the chunks done so far
        tl.mark("backward: loss", logits_loss=lc["bwd"], backward_temporaries=h_grad,
                gradients=emb_grads if c.head == "tied" else 0)
    else:
        tl.mark("backward: loss", logits_loss=2 * _r(4 * rows * sh.V),
                gradients=emb_grads if c.head == "tied" else 0)
        tl.sub("logits_loss", tl.live["logits_loss"])
    grads = emb_grads if c.head == "tied" else _r(4 * (params[-1] + params[-2]))
    tl.add("gradients", grads)
    tl.sub("activations_final_norm", tl.live["activations_final_norm"])
    tl.mark("backward: final norm", backward_temporaries=x_res + norm["bwd"])
    tl.sub("activations_blocks", x_res)  # the last block's output, norm_f's input, is released
    tl.add("backward_temporaries", x_res)  # the residual gradient [N, D] fp32 flowing down the blocks
    per_layer_grads = (p_bytes - sum(_r(4 * p) for p in params[:4]) - _r(4 * params[-1])) // max(1, c.n_layers)
    for k in reversed(range(c.n_layers)):
        if ck_block:
            tl.add("recomputed_block", full_block - x_res)  # the input is already kept
        # FFN backward: U2's input gradient [N, 4D] while GELU's output is still held
        tl.mark(f"backward: block {k} ffn", backward_temporaries=ffn["bwd"])
        tl.sub("recomputed_block" if ck_block else "activations_blocks", ffn["saved"])
        # norm2 backward (the FFN's set is gone)
        tl.mark(f"backward: block {k} norm2", backward_temporaries=norm["bwd"])
        tl.sub("recomputed_block" if ck_block else "activations_blocks", x_res + norm["saved"])  # mid residual
        if ck_mixer:
            tl.add("recomputed_block", mix_full)
        tl.mark(f"backward: block {k} mixer", backward_temporaries=mixer["bwd"])
        tl.sub("recomputed_block" if (ck_block or ck_mixer) else "activations_blocks", mixer["saved"])
        tl.mark(f"backward: block {k} norm1", backward_temporaries=norm["bwd"])
        tl.sub("recomputed_block" if (ck_block or ck_mixer) else "activations_blocks", norm["saved"])
        tl.sub("activations_blocks", x_res)  # the block input
        tl.add("gradients", per_layer_grads)
    tl.mark("backward: embedding", backward_temporaries=emb["bwd"])
    tl.sub("activations_embedding", tl.live.get("activations_embedding", 0))
    tl.sub("backward_temporaries", tl.live["backward_temporaries"])
    # --- optimizer -------------------------------------------------------------------------------------------
    tl.sub("gradients", tl.live["gradients"])
    tl.add("gradients", p_bytes)
    if sh.cuda:
        opt_tmp = 0  # fused AdamW updates in place
    else:
        opt_tmp = 2 * max(_r(4 * p) for p in params)  # for-loop AdamW: one parameter's temporaries at a time
    tl.mark("optimizer step", optimizer_temporaries=opt_tmp)
    return tl, {"p_bytes": p_bytes, "n_params": sum(params)}


def _mixer_weight_elems(c: Any) -> int:
    D, r, m, H = c.d_model, c.ar_ssm_max_rank, c.ar_ssm_min_rank, c.gate_hidden_dim
    return (H * D + H + (r - m) * H + (r - m) if r > m else 0) + 3 * r * D + D * CONV_KERNEL + D


# --- public API ---------------------------------------------------------------------------------------------------


def estimate(config: Any, *, batch_size: int | None = None, calibration: Any = None, device: str = "cuda",
             calibration_path: Any = None) -> Estimate:
    """Predict the peak memory of one training trial of `config` (a model.config.Phase1Config).

    batch_size: overrides config.batch_size. calibration: a tuner.calibration.DeviceCalibration of the GPU the trial
    runs on; None looks in the calibration file (`calibration_path`, default ~/.cache/phase1-tuner/calibration.json)
    for this machine's GPU, else the file's most recent entry (labelled as such, calibrated=False), else leaves the
    outside part at 0 (calibrated=False, said in outside_source). device "cpu": the CPU tensor-bytes peak only.
    """
    if device not in ("cuda", "cpu"):
        raise ValueError(f"estimate: device={device!r} must be 'cuda' or 'cpu'")
    cfg = config.replace(batch_size=batch_size) if batch_size is not None else config
    tl, sizes = _tensor_timeline(cfg, device)
    raw_gib = tl.peak / GIB
    components = {k: v / GIB for k, v in sorted(tl.peak_parts.items()) if v}
    persistent = {"parameters", "optimizer_state", "gradients", "batch", "previous_step_output"}
    transient_gib = sum(v for k, v in components.items() if k not in persistent)
    notes: list[str] = []
    if cfg.lns_enabled:
        notes.append("lns_enabled: LNS models are inference-only; this is the training estimate of the same shape")
    amp = cfg.dtype != "float32"
    chunked = 0 < cfg.loss_chunk_size < cfg.n_seq
    rows = cfg.batch_size * (cfg.loss_chunk_size if chunked else cfg.n_seq)
    ce_chunk = _r(4 * rows * cfg.vocab_size) / GIB
    ce_bwd_raw = tl.moments.get("backward: loss", 0) / GIB
    cls = "amp" if amp else "fp32"
    if device == "cpu":
        return Estimate(
            total_gib=raw_gib, tensor_gib=raw_gib, allocator_gib=0.0, outside_gib=0.0, components=components,
            tensor_raw_gib=raw_gib, tensor_scale=1.0, peak_moment=tl.peak_moment,
            moments={k: v / GIB for k, v in tl.moments.items()}, calibrated=True,
            outside_source="cpu: tensor bytes only (no allocator cache, no device context)", calibration_key=None,
            device=device, batch_size=cfg.batch_size, n_seq=cfg.n_seq, params=sizes["n_params"],
            notes=tuple(notes), transient_gib=transient_gib, ce_chunk_gib=ce_chunk, ce_backward_gib=ce_bwd_raw,
            allocator_class=cls, config=cfg.to_dict(),
        )
    cal, calibrated, source = _resolve_calibration(calibration, calibration_path)
    scale = cal.tensor_scale if cal is not None else 1.0
    workspace = cal.workspace_gib if cal is not None else 0.0
    tensor = raw_gib * scale + workspace
    if cal is not None and workspace:
        components["library_workspace"] = workspace
    replay = replay_kappa(cfg, rows, chunked)
    offset = cal.kappa_offset(cls) if cal is not None else None
    if offset is not None:
        kappa = max(0.0, replay + offset)
        kappa_source = f"replay {offset:+.3f} (median offset of {len(cal.kappa_samples(cls))} {cls} trials)"
    else:
        kappa, kappa_source = replay, "replay"
    ce_bwd = ce_bwd_raw * scale + workspace
    alloc = _allocator_gib(tensor, ce_bwd, ce_chunk, kappa)
    outside = cal.outside_effective_gib if cal is not None else 0.0
    return Estimate(
        total_gib=tensor + alloc + outside, tensor_gib=tensor, allocator_gib=alloc, outside_gib=outside,
        components=components, tensor_raw_gib=raw_gib, tensor_scale=scale,
        peak_moment=tl.peak_moment, moments={k: v / GIB for k, v in tl.moments.items()}, calibrated=calibrated,
        outside_source=source, calibration_key=cal.key if cal is not None else None, device=device,
        batch_size=cfg.batch_size, n_seq=cfg.n_seq, params=sizes["n_params"], notes=tuple(notes),
        transient_gib=transient_gib, ce_chunk_gib=ce_chunk, ce_backward_gib=ce_bwd, ce_hole_kappa=kappa,
        ce_replay_kappa=replay, kappa_source=kappa_source, allocator_class=cls, config=cfg.to_dict(),
    )


def _resolve_calibration(calibration: Any, path: Any) -> tuple[Any, bool, str]:
    """(DeviceCalibration or None, calibrated?, where the outside part comes from)."""
    from tuner import calibration as cal_mod

    if calibration is not None:
        n = calibration.n_refined
        how = f"calibration {calibration.key}" + (f", refined by {n} trials" if n else "")
        return calibration, True, how
    here = cal_mod.current_device_key()
    try:
        entries = cal_mod.load_all(path)
        last = cal_mod.load_calibration(path)
    except cal_mod.CalibrationError as exc:
        return None, False, f"outside part unknown (0 used): {exc}"
    if here is not None and here in entries:
        return entries[here], True, f"stored calibration of this machine ({here})"
    if last is not None:
        return last, False, (f"NOT calibrated for this machine: outside part borrowed from the stored calibration "
                             f"of {last.key}; run `tuner estimate --calibrate` on the trial's GPU")
    return None, False, ("NOT calibrated: outside part unknown (0 used); run `tuner estimate --calibrate` on the "
                         "trial's GPU")
