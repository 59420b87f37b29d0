"""Phase1LM: HTT embedding -> n_layers x (AR-SSM + low-rank FFN) pre-norm blocks -> norm -> head, and its loss.

    ids [B, L] -> x = HTT(ids) [B, L, D] (times 1/sqrt(D) with the tied head, see Phase1LM.__init__)
    each block: x = x + ARSSM(norm1(x)); x = x + FFN(norm2(x))
    h = norm_f(x) [B, L, D] -> logits [B, L, V] = head(h) + b, b [V] the output bias
        (tied: h E^T / sqrt(D); low_rank: (h A) B, A [D, r_h], B [r_h, V])
    loss = mean next-token cross-entropy + l1 * sum over layers and learned gate channels of the channel's mean gate

`targets[b, t]` is the token that should follow `ids[b, t]` (the caller shifts); -100 is ignored.

Decisions (why):
- Norm: RMSNorm rather than LayerNorm: no mean subtraction and no bias, so one statistic (rstd) instead of
  two and fewer ops, the usual choice in SSM and recent LLM stacks (Mamba, LLaMA); a pre-norm residual block
  does not need the re-centring. Custom autograd computing in fp32 whatever the autocast dtype and saving
  only its input and rstd (the composite version keeps two more [N, D] copies per norm).
- Tied head: logits = (h / sqrt(D)) E^T. The HTT table has nn.Embedding's scale (entries ~ N(0, 1), row
  norm ~ sqrt(D)), so without the 1/sqrt(D) the initial logits would have std ~ sqrt(D) and the initial loss
  would be far above ln V. E is built about TABLE_CHUNK_ROWS rows at a time (whole leading-digit blocks) and
  each block multiplies h in one GEMM. The separable identity cos(a+b) = cos a cos b - sin a sin b is used
  where it pays, to BUILD each block: the phase TT becomes a plain TT of rank 2r, i.e. one GEMM over the
  cores, and autograd saves only the phase-scaled cores (HTTEmbedding.table). Measured on the dev CPU
  (V = 50257, D = 1024, r = 16, 2 cores, fp32): building the whole table by per-row gather saves 302 MiB for
  the backward and takes 1.03 s; the separable build saves 2.2 MiB and takes 0.83 s (3 cores: 1432 MiB /
  4.0 s against 20 MiB / 1.1 s). Contracting h against the separable factors directly instead (never
  forming E) is not worth it: 2 * (D*r*v2 + V*d1*r) multiply-adds per position against V*D, about equal at
  d1*r ~ D/2, in small batched contractions, with an [N, d1, r, v2] intermediate larger than the logits;
  measured (N = 512, no grad, best of 3, same logits to 1e-4 at magnitude ~200): 1.27 s against 0.50 s.
- Chunked loss: with loss_chunk_size = c in 1..L-1, each chunk of c positions computes its logits and CE sum
  inside torch.utils.checkpoint, so autograd keeps only the chunk's input h (a view of the final hidden
  states) and recomputes the [B, c, V] logits in the backward; the full [B, L, V] never exists and `logits`
  is returned as None. Without the checkpoint, autograd would keep every chunk's logits and chunking would save
  nothing. The forward builds the tied table block by block and frees each block; in the backward of one
  chunk the whole table (in the autocast dtype) and that chunk's logits are live.
- Outputs under autocast: `hidden` is in the autocast dtype (RMSNorm returns it), the residual stream float32.

Activations saved for backward: `saved_bytes_per_token(config, autocast_bytes=, scan_backend=)` gives the
per-token bytes by component (checked against a saved_tensors_hooks measurement in tests/model/test_lm.py);
each module's docstring lists its tensors. N = B*L, ac = bytes of the autocast dtype (2 bf16/fp16, 4 fp32).
- residual stream: float32 [N, D] (the embedding returns float32 even under autocast).
- RMSNorm (custom autograd): its float32 input [N, D] and rstd [N, 1]; it returns the autocast dtype.
- use_gradient_checkpointing: per block only its input x [N, D] float32 is kept; during the backward one
  block's full set is live again while it is recomputed. checkpoint_ar_ssm: the norm1 + mixer sets are
  replaced by the block input (kept anyway). checkpoint_htt: the embedding's set is replaced by the ids.
- head/loss, unchunked (loss_chunk_size 0 or >= L): tied: h/sqrt(D) [N, D] in ac and, per model, the
  table^T [D, V] in ac; low_rank: h [N, D] and h A [N, r_h] in ac; the CE keeps its fp32 log-softmax [N, V].
  `logits` [N, V] in ac is returned, so it lives as long as the caller keeps the output.
- head/loss, chunked (c = loss_chunk_size): only h [N, D] in ac is kept (checkpoint inputs); during the
  backward of one chunk: the table in ac (tied), [B, c, V] logits in ac, their fp32 copy, log-softmax and
  gradient - about (ac + 12) * B * c * V bytes, transient.
- per-layer constants: autocast's weight copies (ac bytes per weight) and the torch scan's decay matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.ar_ssm import ARSSM
from model.ffn import LowRankFFN
from model.htt import HTTEmbedding
from model.loss import CeSum, XentGrad, ce_sum, chunked_cross_entropy, linear_cross_entropy
from model.optim import tag
from model.shapes import TABLE_CHUNK_ROWS, table_chunk_step
from model.shapes import expected_param_counts as expected_param_counts  # re-exported: tests and tuner read it here

if TYPE_CHECKING:
    from model.config import Phase1Config

NORM_EPS = 1e-6


# --- pure arithmetic (no torch needed) -----------------------------------------------------------

TORCH_SCAN_EXTRA_BYTES_PER_CHANNEL = 30  # kernels/scan.py torch backend: fp32 copies + einsum casts, measured


def saved_bytes_per_token(
    config: Phase1Config, *, autocast_bytes: int = 2, scan_backend: str = "triton"
) -> dict[str, float]:
    """Bytes autograd saves per token (B*L position) for the backward, without checkpointing, by component.

    autocast_bytes: 2 under bf16/fp16 autocast, 4 without autocast (float32). scan_backend: "triton" or
    "torch". Keys: embedding, norm (one RMSNorm), ar_ssm (one layer), ffn (one layer), head (unchunked loss:
    head input + fp32 log-softmax [V]), block (2 norms + ar_ssm + ffn) and total = embedding + n_layers * block
    + norm + head. Per-layer constants (autocast weight copies, the tied table^T [D, V] in the autocast
    dtype, the torch scan's [r, C, C] decay matrix) are not per token and not included. Checked against a
    saved_tensors_hooks measurement in tests/model/test_lm.py. See the module docstring for checkpointing.
    """
    from model.shapes import htt_shapes

    ac, D, V = autocast_bytes, config.d_model, config.vocab_size
    r, m, H = config.ar_ssm_max_rank, config.ar_ssm_min_rank, config.gate_hidden_dim
    rh, q, phase = config.htt_rank, config.ffn_rank, config.htt_phase_encoding
    (_, ds) = htt_shapes(config)
    if config.htt_num_cores == 2:
        # digit ids; phase sum + cos; fp32 G1 rows kept by the phase multiply; bmm inputs in ac.
        emb = 16 + (8 * rh + 4 * ds[0] * rh if phase else 0) + ac * rh * (ds[0] + ds[1])
    else:
        emb = (
            24
            + (16 * rh + 4 * ds[0] * rh + 4 * rh * ds[2] if phase else 0)
            + ac * (ds[0] * rh + rh * ds[1] * rh + ds[0] * ds[1] * rh + rh * ds[2])
        )
    norm = 4 * D + 4  # fp32 input + rstd
    gate = (2 * ac * H + ac * (r - m)) if r > m else 0
    scan = 3 * ac * r if scan_backend == "triton" else TORCH_SCAN_EXTRA_BYTES_PER_CHANNEL * r
    mixer = 2 * ac * D + gate + scan + ac * r  # normed x + padded conv input, gate MLP, scan, scan output
    ffn = ac * (9 * D + 2 * q)
    head = ac * D + 4 * V + 8 + (ac * config.head_rank if config.head == "low_rank" else 0)
    block = 2 * norm + mixer + ffn
    return {
        "embedding": emb,
        "norm": norm,
        "ar_ssm": mixer,
        "ffn": ffn,
        "head": head,
        "block": block,
        "total": emb + config.n_layers * block + norm + head,
    }


def unigram_counts(tokens, vocab_size: int, chunk: int = 1 << 24) -> torch.Tensor:
    """Occurrences of each id in the 1-D token array `tokens` (numpy, any integer dtype) -> float64 [V]
    (model.data.token_counts, as a tensor for the output bias)."""
    from model.data import token_counts

    return torch.from_numpy(token_counts(tokens, vocab_size, chunk).astype(np.float64))


# --- modules -------------------------------------------------------------------------------------


@dataclass
class LMOutput:
    """What `Phase1LM.forward` returns. Tensors are on the model's device."""

    logits: torch.Tensor | None  # [B, L, V]; None when the chunked loss avoided materialising them
    loss: torch.Tensor | None  # scalar ce_loss + aux_loss; None without targets
    ce_loss: torch.Tensor | None  # scalar mean next-token cross-entropy (nats); None without targets
    aux_loss: torch.Tensor  # scalar l1 * sum over layers of ARSSM's gate_l1 (channel sum of mean gates), weighted
    hidden: torch.Tensor  # [B, L, D] final normed hidden states
    # effective_rank (channels in use per layer, see ARSSM), gate_sparsity (share of gates off); layer means, 0-dim
    # detached tensors (float() them)
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)


class _RMSNormFn(torch.autograd.Function):
    """y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps), in fp32. Saves only x and rstd [.., 1]: the
    composite torch version (and F.rms_norm on CPU) also saves x * rstd and an fp32 copy, i.e. two more
    [N, D] tensors per norm, three norms' worth per block."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        x32 = x.to(acc)
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return (x32 * rstd * weight.to(acc)).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        acc = rstd.dtype
        y = x.to(acc) * rstd  # normalised input, recomputed
        dyw = dy.to(acc) * weight.to(acc)
        dx = rstd * (dyw - y * (dyw * y).mean(-1, keepdim=True))
        dw = (dy.to(acc) * y).reshape(-1, y.shape[-1]).sum(0)
        return dx.to(x.dtype), dw.to(weight.dtype), None


class RMSNorm(nn.Module):
    """x [..., D] -> x / rms(x) * weight, computed in fp32; saves x and rstd only.

    Returned in the autocast dtype when autocast is on (else x's dtype): every consumer (gate MLP, U, V, the
    conv, the FFN, the head) would cast it anyway, each into its own saved copy - one cast here means one
    saved [N, D] in the autocast dtype per norm instead of up to four.
    """

    def __init__(self, d_model: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = tag(nn.Parameter(torch.ones(d_model)), "gain")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _RMSNormFn.apply(x, self.weight, self.eps)
        device = x.device.type
        if torch.is_autocast_enabled(device) and y.is_floating_point():
            y = y.to(torch.get_autocast_dtype(device))
        return y


def _checkpointing(module: nn.Module) -> bool:
    """Checkpoint only while training with autograd on: under no_grad there is nothing to save.

    Every checkpoint of the models passes preserve_rng_state=False: their forward draws no random numbers (no
    dropout), so there is no RNG state to restore for the recomputation, and stashing it reads the CUDA generator,
    which a CUDA-graph capture of the step forbids (model/graph_step.py)."""
    return module.training and torch.is_grad_enabled()


class Block(nn.Module):
    """Pre-norm residual block: x [B, L, D] -> (x [B, L, D], gate_l1, effective_rank, gate_sparsity)."""

    def __init__(self, config: Phase1Config):
        super().__init__()
        self.norm1 = RMSNorm(config.d_model)
        self.mixer = ARSSM(config)
        self.norm2 = RMSNorm(config.d_model)
        self.ffn = LowRankFFN(config)
        self.checkpoint_mixer = config.checkpoint_ar_ssm

    def _mix(self, x: torch.Tensor):
        return self.mixer(self.norm1(x), return_gate_mean=True)

    def forward(self, x: torch.Tensor):
        if self.checkpoint_mixer and _checkpointing(self):
            y, gate_l1, eff_rank, sparsity, gate_mean = checkpoint(
                self._mix, x, use_reentrant=False, preserve_rng_state=False
            )
        else:
            y, gate_l1, eff_rank, sparsity, gate_mean = self._mix(x)
        self.mixer.last_gate_mean = gate_mean  # outside the checkpoint (ARSSM.forward says why)
        x = x + y
        x = x + self.ffn(self.norm2(x))
        return x, gate_l1, eff_rank, sparsity


class LowRankHead(nn.Module):
    """h [.., D] -> (h A) B [.., V], A [D, r_h], B [r_h, V]."""

    def __init__(self, config: Phase1Config):
        super().__init__()
        self.down = nn.Linear(config.d_model, config.head_rank, bias=False)
        self.up = nn.Linear(config.head_rank, config.vocab_size, bias=False)
        with torch.no_grad():  # unit-variance logits at init for unit-RMS h
            nn.init.normal_(self.down.weight, std=config.d_model**-0.5)
            nn.init.normal_(self.up.weight, std=config.head_rank**-0.5)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(h))


class Phase1LM(nn.Module):
    """The Phase 1 language model. forward(ids [B, L] int64, targets [B, L] int64 | None) -> LMOutput."""

    def __init__(self, config: Phase1Config):
        super().__init__()
        self.config = config
        self.embed = HTTEmbedding(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm_f = RMSNorm(config.d_model)
        self.head = LowRankHead(config) if config.head == "low_rank" else None
        # Tied head: the table needs row norm ~ sqrt(D) (nn.Embedding's scale) for unit-variance logits at
        # 1/sqrt(D), but fed at that scale into the residual stream it dominates h at init (the branches are
        # damped by 1/sqrt(2 n_layers)), so h ~ e_tok and the head predicts the *current* token with logit
        # ~ sqrt(D): measured initial CE 26.8 at D = 1024, V = 50257 (ln V = 10.8). Feeding E[ids] / sqrt(D)
        # (GPT-2's embedding-to-branch ratio) gives CE ~ ln V at init; on byte-level text (D = 256, 4 layers,
        # 200 AdamW steps) it also ends lower: CE 2.34 against 2.49. The low-rank head has no such coupling
        # (same CE 2.20 either way), so its input is left at the table's scale.
        self.input_scale = config.d_model**-0.5 if self.head is None else 1.0
        self.head_scale = config.d_model**-0.5  # tied head: logits = (h * head_scale) E^T + b
        # Output bias [V]: a token's base rate is one number, which a rank-r tensor-train table (or a rank-r_h head)
        # can only approximate through h; the bias carries it so the table/factors carry context. Zero at build;
        # `init_output_bias` sets it from the training tokens' log-frequencies (the trainer does).
        self.out_bias = tag(nn.Parameter(torch.zeros(config.vocab_size)), "bias")
        self.ce_fn: CeSum = ce_sum  # one loss chunk's CE sum; model/fast.py swaps in a compiled one
        # set by model/fast.py use_fused_loss: the tied head's GEMM fused into the loss while training (None: off)
        self.fused_loss_grad: XentGrad | None = None

    @torch.no_grad()
    def init_output_bias(self, counts: torch.Tensor) -> None:
        """Set the output bias to the centred log unigram frequencies of token `counts` [V] (add-one smoothed), so
        the untrained model predicts the unigram distribution up to its (small, zero-mean) initial logits."""
        if counts.shape != self.out_bias.shape:
            raise ValueError(f"counts: shape {tuple(counts.shape)} != [V] = {tuple(self.out_bias.shape)}")
        logp = torch.log(counts.double() + 1.0)
        self.out_bias.copy_((logp - logp.mean()).to(self.out_bias.dtype))

    # --- head ------------------------------------------------------------------------------------
    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., D] -> logits [..., V] (autocast dtype under autocast)."""
        if self.head is not None:
            out = self.head(h)
            return out.add_(self.out_bias.to(out.dtype))  # in place: no second [.., V] (Linear saves no output)
        V = self.config.vocab_size
        hs = h * self.head_scale
        out = None
        step = table_chunk_step(
            self.embed.rows_per_leading_digit, TABLE_CHUNK_ROWS
        )  # this module's name: tests shrink it
        for start in range(0, V, step):  # whole leading-digit blocks: no block is built twice
            end = min(start + step, V)
            part = hs @ self.embed.table(start, end).t()  # [..., end - start]
            # in place: a matmul's backward needs its inputs, not its output, so this costs no second logits block
            part.add_(self.out_bias[start:end].to(part.dtype))
            if end - start == V:
                return part
            if out is None:
                out = part.new_empty(*h.shape[:-1], V)
            out[..., start:end] = part  # parts die after the copy; the matmul saved hs and the table chunk
        return out

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None) -> LMOutput:
        cfg = self.config
        if ids.dim() != 2:
            raise ValueError(f"ids must be [B, L] int64, got shape {tuple(ids.shape)}")
        if targets is not None and targets.shape != ids.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} != ids shape {tuple(ids.shape)}")
        ckpt = _checkpointing(self)
        if cfg.checkpoint_htt and ckpt:
            x = checkpoint(self.embed, ids, use_reentrant=False, preserve_rng_state=False)
        else:
            x = self.embed(ids)  # [B, L, D] float32
        if self.input_scale != 1.0:
            x = x * self.input_scale
        gate_l1s, eff_ranks, sparsities = [], [], []
        for block in self.blocks:
            if cfg.use_gradient_checkpointing and ckpt:
                x, gm, er, sp = checkpoint(block, x, use_reentrant=False, preserve_rng_state=False)
            else:
                x, gm, er, sp = block(x)
            gate_l1s.append(gm)
            eff_ranks.append(er)
            sparsities.append(sp)
        h = self.norm_f(x)  # [B, L, D]
        aux = cfg.ar_ssm_l1_regularization * torch.stack(gate_l1s).sum()
        # 0-dim tensors, read by whoever wants them (evaluation): a host read here would wait for the GPU in the
        # middle of every training step, and cannot happen inside a CUDA-graph capture (model/graph_step.py)
        diagnostics = {"effective_rank": torch.stack(eff_ranks).mean(), "gate_sparsity": torch.stack(sparsities).mean()}
        if targets is None:
            return LMOutput(self.logits(h), None, None, aux, h, diagnostics)
        if self.fused_loss_grad is not None and self.head is None and torch.is_grad_enabled():
            chunk = ids.shape[0] * cfg.loss_chunk_size if 0 < cfg.loss_chunk_size < ids.shape[1] else 0
            table = self.embed.table()
            ce = linear_cross_entropy(h * self.head_scale, table, self.out_bias, targets, chunk, self.fused_loss_grad)
            return LMOutput(None, ce + aux, ce, aux, h, diagnostics)
        ce, logits = chunked_cross_entropy(self.logits, h, targets, cfg.loss_chunk_size, self.ce_fn)
        return LMOutput(logits, ce + aux, ce, aux, h, diagnostics)

    # --- accounting ------------------------------------------------------------------------------
    def param_counts(self) -> dict[str, int]:
        """Parameters by component (embedding, ar_ssm, ffn, head, norm); they sum to the model's total.

        "head" is the output bias [V] plus, for the low-rank head, its two factors (the tied head reuses the
        embedding's cores). After
        `convert_to_lns` the replaced Linear weights are integer buffers, not parameters, and are not counted.
        """

        def n(modules) -> int:
            return sum(p.numel() for m in modules if m is not None for p in m.parameters())

        counts = {
            "embedding": n([self.embed]),
            "ar_ssm": n(b.mixer for b in self.blocks),
            "ffn": n(b.ffn for b in self.blocks),
            "head": n([self.head]) + self.out_bias.numel(),
            "norm": n([self.norm_f, *(b.norm1 for b in self.blocks), *(b.norm2 for b in self.blocks)]),
        }
        assert sum(counts.values()) == sum(p.numel() for p in self.parameters()), "a parameter is in no component"
        return counts


def build_model(config: Phase1Config) -> Phase1LM:
    """Build the model from `config` (init seeded by config.seed without touching the caller's RNG state).

    With `config.lns_enabled` the model's nn.Linear layers are converted to LNS (inference only) and the model
    is put in eval mode.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Phase1LM(config)
    if config.lns_enabled:
        from model.lns_linear import convert_to_lns  # another component; imported only when asked for

        convert_to_lns(model, config)
        model.eval()
    return model
