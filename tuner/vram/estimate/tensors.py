"""The tensor-bytes timeline of one training step of a Phase1Config (what torch.cuda.max_memory_allocated reports)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kernels.scan_shapes import SCAN_TORCH_CHUNK, scan_tile_widths  # torch-free, the kernels' own sizes
from model.shapes import (  # torch-free: the model's own widths and parameter formulas
    CONV_KERNEL,
    FFN_EXPANSION,
    ar_ssm_cast_elems,
    block_param_tensors,
    factorize,
    head_param_tensors,
    htt_param_tensors,
    linear_weight_elems,
    param_tensors,
    rows_per_leading_digit,
    table_chunk_step,
)
from tuner.vram.estimate.allocator import BLOCK, block_round

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


def _rms_norm(sh: _Shape) -> dict[str, int]:
    """RMSNorm (model.lm.RMSNorm / _RMSNormFn) of the fp32 residual stream. saved: rstd [N, 1] (its input x, the
    residual tensor, is counted by the caller); out: the normed x in the autocast dtype (fp32 without autocast);
    fwd: x*rstd and x*rstd*w fp32 before the cast; bwd: the fp32 dy, y = x*rstd, dy*w, and two more [N, D] fp32
    temporaries of dx at its worst point."""
    N, D = sh.N, sh.D
    f32 = block_round(4 * N * D)
    return {"saved": block_round(4 * N), "out": block_round(sh.s * N * D), "fwd": 2 * f32, "bwd": 5 * f32}


def _ffn(sh: _Shape, c: Any) -> dict[str, int]:
    """Low-rank FFN (model.ffn) on the norm output xn (ac): saves xn (U1's input; counted here), x U1 [N, r],
    pre-GELU [N, 4D], GELU out [N, 4D], U2 out [N, r].
    bwd: grad of its output (ac), grad of GELU's output [N, 4D] and of x U2 [N, r], before GELU's out is freed."""
    N, D, s, f = sh.N, sh.D, sh.s, c.ffn_rank
    h4 = block_round(s * N * FFN_EXPANSION * D)
    saved = block_round(s * N * D) + 2 * block_round(s * N * f) + 2 * h4
    out = block_round(s * N * D)
    bwd = block_round(s * N * D) + h4 + block_round(s * N * f)
    return {"saved": saved, "out": out, "fwd": 0, "bwd": bwd}


def _scan(sh: _Shape, c: Any) -> dict[str, int]:
    """The gated scan: Triton (fused, CUDA) or the chunked torch backend. Inputs u, g, v are counted by the mixer.

    saved: what it keeps beyond u, g, v; out: y [N, r] (W_o's saved input); fwd: extra at its forward's end."""
    B, L, N, s = sh.B, sh.L, sh.N, sh.s
    R = c.ar_ssm_max_rank
    nr = block_round(s * N * R)
    if c.ar_ssm_use_fused_scan and sh.cuda:
        block_t, block_r, _ = scan_tile_widths(L, R)  # the forward's tiles (kernels.scan_launch._tiles)
        nc, nrb = -(-L // block_t), -(-R // block_r)
        words = B * nrb * nc * block_r
        carry = block_round(4 * words)
        work = block_round(8 * (2 * words + 1))
        return {"saved": carry, "out": nr, "fwd": work, "bwd": 3 * nr + carry + work}
    C = min(SCAN_TORCH_CHUNK, max(L, 1))
    n = -(-L // C)
    Np = B * n * C  # padded positions
    f4, f4p, chunk = block_round(4 * N * R), block_round(4 * Np * R), block_round(4 * B * C * R)
    # Measured with saved_tensors_hooks on kernels/scan.py's torch backend (tiny shapes, padded and not):
    # autocast: five [N, r] fp32 tensors (copies of u, g, v; g*u; g*v), the stacked state [N', r] fp32, the
    # einsum's bf16 copy of x [N', r], every chunk's state but the last (each carry, a view of it, is saved by
    # the next chunk's mul), and per-layer constants: the decay matrix [r, C, C] (cast to ac), the causal mask
    # [C, C] fp32, its int64 index [C, C], the powers [C + 1, r] fp32.
    consts = block_round(4 * C * C) + block_round(8 * C * C) + block_round(4 * (C + 1) * R)
    if sh.amp:
        saved = 5 * f4 + f4p + block_round(s * Np * R) + (n - 1) * chunk + block_round(s * C * C * R) + consts
    else:
        saved = 4 * f4 + 2 * f4p + (n - 1) * chunk + block_round(4 * C * C * R) + consts
    out = nr
    fwd = 2 * f4p + chunk + f4
    bwd = 7 * f4
    return {"saved": saved, "out": out, "fwd": fwd, "bwd": bwd}


def _mixer(sh: _Shape, c: Any) -> dict[str, int]:
    """AR-SSM mixer (model.ar_ssm.ARSSM) on the norm output xn (ac): gate MLP, U and V share xn (saved once,
    counted here); the conv saves the left-padded x^T [B, D, L + 2] (ac)."""
    B, L, N, D, s = sh.B, sh.L, sh.N, sh.D, sh.s
    R, m, H = c.ar_ssm_max_rank, c.ar_ssm_min_rank, c.gate_hidden_dim
    saved = block_round(s * N * D)
    if R > m:
        saved += 2 * block_round(s * N * H) + block_round(
            s * N * (R - m)
        )  # gate hidden (GELU input), GELU out, sigmoid out
    saved += 3 * block_round(s * N * R)  # g, u, v
    pad = B * D * (L + CONV_KERNEL - 1)
    saved += block_round(s * pad)
    sc = _scan(sh, c)
    saved += sc["saved"] + sc["out"]  # y_scan is W_o's input
    out = block_round(s * N * D)
    # forward worst point: conv out + W_o out + their sum [N, D] (ac), or the scan's own temporaries
    fwd = max(sc["fwd"], 3 * block_round(s * N * D))
    # backward worst point: grad of y (ac), the conv input's grad (ac) and xn's accumulated grad (ac)
    bwd = max(sc["bwd"], 2 * block_round(s * N * D) + block_round(s * pad))
    return {"saved": saved, "out": out, "fwd": fwd, "bwd": bwd, "scan": sc["saved"] + sc["out"]}


def _htt_rows(sh: _Shape, c: Any) -> dict[str, int]:
    """HTT embedding forward (model.htt.HTTEmbedding.forward) for N tokens: saved set, fp32 output, extras."""
    n, s = sh.N, sh.s
    R = c.htt_rank
    ds = factorize(c.d_model, c.htt_num_cores)
    idx = block_round(8 * n)
    if c.htt_num_cores == 2:
        d1, d2 = ds
        g1, g2 = block_round(4 * n * d1 * R), block_round(4 * n * R * d2)
        saved = 2 * idx
        if c.htt_phase_encoding:
            saved += 2 * block_round(4 * n * R) + g1  # phase sum (cos input), cos, gathered core1 rows (phase mul)
        saved += (
            (block_round(s * n * d1 * R) + block_round(s * n * R * d2))
            if sh.amp
            else (g1 + g2 if c.htt_phase_encoding else g2 + g1)
        )
        bmm_out = block_round(s * n * d1 * d2)
        fwd = g1 + g2 + (g1 if c.htt_phase_encoding else 0)
    else:
        # 3 cores: the phases scale the outer cores' rows (G1, G3), never the middle core's [N, r, d2, r].
        d1, d2, d3 = ds
        g1, g2, g3 = block_round(4 * n * d1 * R), block_round(4 * n * R * d2 * R), block_round(4 * n * R * d3)
        saved = 3 * idx
        if c.htt_phase_encoding:
            saved += 4 * block_round(4 * n * R) + g1 + g3  # two phase sums and cosines, fp32 G1 and G3 rows
        t = block_round(s * n * d1 * d2 * R)
        if sh.amp:  # both bmms' inputs in ac: G1 rows, middle rows, t, G3 rows
            saved += block_round(s * n * d1 * R) + block_round(s * n * R * d2 * R) + t + block_round(s * n * R * d3)
        else:
            saved += g1 + g2 + t + g3
        bmm_out = block_round(s * n * d1 * d2 * d3)
        fwd = g1 + g2 + g3 + t
    crop = block_round(s * n * c.d_model) if math.prod(ds) != c.d_model else 0  # reshape of the cropped slice copies
    out = block_round(4 * n * c.d_model)  # .float(): fp32 residual stream (a no-op without autocast)
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
    lg = block_round(s * rows * V)
    f32 = block_round(4 * rows * V)
    if c.head == "tied":
        ds = factorize(c.d_model, c.htt_num_cores)
        vs = factorize(c.vocab_size, c.htt_num_cores)
        per_digit = rows_per_leading_digit(vs)
        step = table_chunk_step(per_digit)
        n_chunks = -(-V // step)
        DD = math.prod(ds)
        hs = block_round(s * rows * D)  # h / sqrt(D) in h's dtype (ac), kept by every table chunk's matmul
        tables = 0
        table_tmp = 0
        for k in range(n_chunks):
            start, end = k * step, min((k + 1) * step, V)
            lo, hi = start // per_digit, -(-end // per_digit)
            rows_k = (hi - lo) * per_digit
            tables += block_round(s * rows_k * DD)  # the permuted copy the matmul keeps
            table_tmp = max(table_tmp, block_round(s * rows_k * DD))  # matmul output before the permuting copy
        cores = 2 * block_round(4 * sum(htt_param_tensors(c)[:2]))  # phase-scaled cores (cos and sin halves)
        if c.htt_num_cores == 3:
            rr = (2 if c.htt_phase_encoding else 1) * c.htt_rank
            # every chunk recomputes t23 [r1, v2*v3*d2*d3] (ac, permuted copy kept by its matmul) and the scaled
            # middle core [v2*r1*d2, r2] (ac cast kept by the first matmul)
            cores += n_chunks * (
                block_round(s * rr * vs[1] * vs[2] * ds[1] * ds[2]) + block_round(s * vs[1] * rr * ds[1] * rr)
            )
        head_saved = hs + tables + cores
        part = block_round(s * rows * step) if n_chunks > 1 else 0
        head_fwd = head_saved + table_tmp + part
    else:
        r_h = c.head_rank
        # h (ac) is a view of the kept hidden states; down's output; up's weight cast again in the recompute
        head_saved = block_round(s * rows * r_h) + (block_round(s * V * r_h) if sh.amp else 0)
        head_fwd = head_saved
    copy = f32 if sh.amp else 0  # logits.float()
    fwd = head_fwd + lg + copy + f32
    saved = head_saved + f32
    bwd = saved + 2 * f32
    return {"fwd": fwd, "saved": saved, "bwd": bwd, "logits": lg}


def tensor_timeline(c: Any, device: str) -> tuple[_Timeline, dict[str, int]]:
    """Walk one steady-state training step (model/train.py) and record the candidate peaks."""
    amp = c.dtype != "float32"
    sh = _Shape(
        B=c.batch_size,
        L=c.n_seq,
        N=c.batch_size * c.n_seq,
        D=c.d_model,
        V=c.vocab_size,
        s=2 if amp else 4,
        amp=amp,
        cuda=device == "cuda",
    )
    N, D = sh.N, sh.D
    params = param_tensors(c)
    p_bytes = sum(block_round(4 * p) for p in params)
    tl = _Timeline()
    tl.add("parameters", p_bytes)
    tl.add("optimizer_state", 2 * p_bytes + (len(params) * BLOCK if sh.cuda else 0))  # + per-param step (fused)
    tl.add("batch", block_round(8 * c.batch_size * (c.n_seq + 1)))
    x_res = block_round(4 * N * D)  # one fp32 residual-stream tensor
    tl.add("previous_step_output", x_res)  # last step's LMOutput.hidden lives until this forward returns
    weights_ac = block_round(2 * linear_weight_elems(c)) if amp else 0
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
    tl.add("activations_embedding", block_round(8 * N) if c.checkpoint_htt else emb["saved"])
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
        keep = (
            weights_ac
            if not ck_mixer
            else block_round(2 * (linear_weight_elems(c) - c.n_layers * ar_ssm_cast_elems(c)))
        )
        tl.add("autocast_weight_copies", keep)

    # --- backward --------------------------------------------------------------------------------------------
    emb_grads = block_round(4 * sum(htt_param_tensors(c)))
    if chunked:
        h_grad = x_res if n_loss_chunks > 1 else 0  # accumulated gradient of h from the chunks done so far
        tl.mark(
            "backward: loss",
            logits_loss=lc["bwd"],
            backward_temporaries=h_grad,
            gradients=emb_grads if c.head == "tied" else 0,
        )
    else:
        tl.mark(
            "backward: loss",
            logits_loss=2 * block_round(4 * rows * sh.V),
            gradients=emb_grads if c.head == "tied" else 0,
        )
        tl.sub("logits_loss", tl.live["logits_loss"])
    grads = emb_grads if c.head == "tied" else block_round(4 * sum(head_param_tensors(c)[1:]))  # A, B
    tl.add("gradients", grads)
    tl.sub("activations_final_norm", tl.live["activations_final_norm"])
    tl.mark("backward: final norm", backward_temporaries=x_res + norm["bwd"])
    tl.sub("activations_blocks", x_res)  # the last block's output, norm_f's input, is released
    tl.add("backward_temporaries", x_res)  # the residual gradient [N, D] fp32 flowing down the blocks
    per_layer_grads = sum(block_round(4 * p) for p in block_param_tensors(c))  # one block's gradients
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
        opt_tmp = 2 * max(block_round(4 * p) for p in params)  # for-loop AdamW: one parameter's temporaries at a time
    tl.mark("optimizer step", optimizer_temporaries=opt_tmp)
    return tl, {"p_bytes": p_bytes, "n_params": sum(params)}
