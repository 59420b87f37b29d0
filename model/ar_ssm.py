"""AR-SSM: the adaptive-rank state-space token mixer of each block.

    g = [1]*min_rank ++ sigmoid(MLP(x))          [B, L, r]   (r = ar_ssm_max_rank; first min_rank always on)
    u = x U, v = x V                              [B, L, r]
    h_t = a * h_{t-1} + g_t * u_t                 [B, L, r]   (a = sigmoid(decay_logit) in (0, 1), per channel)
    y = conv_causal(x) + (g * v * h) W_o          [B, L, D]

The scan is `kernels.scan.gated_scan` (Triton on CUDA when `ar_ssm_use_fused_scan`, the torch reference
otherwise). The local term is a depthwise convolution of kernel 3 padded on the left only, so y_t depends on
x_{t-2..t} and, through h, on x_{<=t}: the mixer is causal.

Decay parameterisation: a = sigmoid(lambda). Then 1 - a = sigmoid(-lambda) is computed without cancellation,
which is what the stability monitor's determinant prod_k (1 - a_k + eps) needs near a = 1; a = 1 exactly (the
guide's cumsum) is the limit lambda -> +inf. Init: 1 - a_k log-spaced from 1/2 to 1/1024 (memories of 2 to
~1000 tokens, as in S4D/Mamba-style multi-timescale inits).

Cost honesty: the gate is soft, so all r channels are computed whatever g is; min_rank/L1 change the function
and the diagnostics, not the FLOPs or the memory.

Activations saved for backward per layer, per token (measured with saved_tensors_hooks; formula in
`model.lm.saved_bytes_per_token`; ac = 2 bytes under bf16/fp16 autocast, 4 without; H = gate_hidden_dim,
r = max_rank, m = min_rank):
    the normed input x [D] in ac (RMSNorm already returns the autocast dtype, so gate MLP, U and V share one
    copy), the conv's left-padded x^T [D] in ac, gate hidden pre-activation and GELU output [H] x2 in ac,
    sigmoid output [r - m] in ac, scan output [r] in ac (W_o's weight gradient), plus the scan:
    Triton backend: its inputs u, g, v [r] x3 in ac and a carry of 4*r/BLOCK_T bytes (h is recomputed in the
    backward); torch backend (kernels/scan.py, chunked): ~30*r bytes (fp32 copies of g, u, v, g*u, h, ...)
    and a per-layer [r, C, C] decay matrix (C = chunk length).
    At D = 1024, H = 256, r = 32, m = 4, bf16: 5434 B/token (Triton), 6200 B/token (torch).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kernels.scan import gated_scan
from model.optim import tag
from model.shapes import CONV_KERNEL
from model.shapes import ar_ssm_layer_param_count as ar_ssm_layer_param_count  # re-exported (model/shapes.py)
from model.shapes import ar_ssm_param_count as ar_ssm_param_count

if TYPE_CHECKING:
    from model.config import Phase1Config

GATE_SPARSE_BELOW = 0.1  # a gate below this counts as "off" in gate_sparsity (the guide's definition)
# effective_rank counts the channels whose gate, averaged over the forward's B*L positions, is at least this: the
# same 0.1 as "off" above, so a channel is in use unless it is off on (nearly) every position.
CHANNEL_IN_USE_AT = GATE_SPARSE_BELOW


# --- module --------------------------------------------------------------------------------------


class ARSSM(nn.Module):
    """Adaptive-rank SSM mixer: x [B, L, D] -> (y [B, L, D], gate_l1, effective_rank, gate_sparsity).

    gate_l1 is the differentiable L1 term of this layer before its weight: the SUM over the r - min_rank learned
    channels of each channel's mean gate over the B*L positions (the forced channels are constant and left out). A
    sum, not a mean over channels: the pull on each channel is then the weight itself whatever r is, so
    ar_ssm_l1_regularization means the same at any r_max (averaged over channels it was divided by r, and the guide's
    1e-4..1e-2 moved sparsity by ~1 point). Per token it stays an average, so it is comparable to the mean CE.
    The two diagnostics are detached scalars from this forward pass: effective_rank = channels in use, i.e. whose
    mean gate over the B*L positions is >= CHANNEL_IN_USE_AT (forced channels included, so it lies in
    [min_rank, r]); gate_sparsity = share of (position, channel) gates below GATE_SPARSE_BELOW over all r channels.
    The per-channel mean gate [r] of the last forward is kept in `last_gate_mean` for the stability monitor's
    Schatten check.
    """

    def __init__(self, config: Phase1Config):
        super().__init__()
        d, r, m, hid = config.d_model, config.ar_ssm_max_rank, config.ar_ssm_min_rank, config.gate_hidden_dim
        self.d_model, self.max_rank, self.min_rank = d, r, m
        self.use_fused_scan = config.ar_ssm_use_fused_scan
        self.gate = nn.Sequential(nn.Linear(d, hid), nn.GELU(), nn.Linear(hid, r - m)) if r > m else None
        self.U = nn.Linear(d, r, bias=False)  # weight [r, D] = U^T
        self.V = nn.Linear(d, r, bias=False)
        self.W_o = nn.Linear(r, d, bias=False)  # weight [D, r] = W_o^T
        self.conv = nn.Conv1d(d, d, CONV_KERNEL, groups=d)  # depthwise; causality comes from the left pad
        one_minus_a = torch.logspace(math.log10(0.5), math.log10(1.0 / 1024), r)
        decay_logit = torch.log1p(-one_minus_a) - torch.log(one_minus_a)  # sigmoid^-1(a)
        self.decay_logit = tag(nn.Parameter(decay_logit), "decay")
        self.last_gate_mean: torch.Tensor | None = None
        self._init_weights(config.n_layers)

    @torch.no_grad()
    def _init_weights(self, n_layers: int) -> None:
        d, r = self.d_model, self.max_rank
        nn.init.normal_(self.U.weight, std=d**-0.5)  # u, v ~ N(0, 1) per channel for unit-RMS x
        nn.init.normal_(self.V.weight, std=d**-0.5)
        # Stationary state std of channel k for unit white-noise input is 1/sqrt(1 - a_k^2); scale W_o's
        # column k by its inverse so every channel contributes alike, and by 1/sqrt(2 n_layers) so the
        # residual stream stays O(1) at init (GPT-2's residual-projection scaling).
        a = self.decay()
        state_std = torch.rsqrt(1 - a * a)
        self.W_o.weight.normal_().mul_(1.0 / (math.sqrt(r * 2 * n_layers) * state_std)[None, :])
        # The conv term is a residual branch too: Conv1d's default (std 1/3 per tap for fan-in 3) would add
        # ~0.6 RMS per layer; scale it the same way and start without bias.
        self.conv.weight.mul_(1.0 / math.sqrt(2 * n_layers))
        assert self.conv.bias is not None  # Conv1d(..., bias=True) in __init__
        self.conv.bias.zero_()

    def decay(self) -> torch.Tensor:
        """a [r] in (0, 1)."""
        return torch.sigmoid(self.decay_logit)

    def one_minus_decay(self) -> torch.Tensor:
        """1 - a [r], computed as sigmoid(-lambda) (no cancellation near a = 1)."""
        return torch.sigmoid(-self.decay_logit)

    def scan_backend(self, x: torch.Tensor) -> str:
        """ "triton" when ar_ssm_use_fused_scan and x is on CUDA, else "torch" (the reference, any device)."""
        return "triton" if (self.use_fused_scan and x.is_cuda) else "torch"

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] -> g [B, L, r]; channels 0..min_rank-1 are exactly 1."""
        if self.gate is None:
            return x.new_ones(*x.shape[:-1], self.max_rank)
        learned = torch.sigmoid(self.gate(x))
        return torch.cat([learned.new_ones(*learned.shape[:-1], self.min_rank), learned], dim=-1)

    def forward(self, x: torch.Tensor, return_gate_mean: bool = False):
        """(y, gate_l1, effective_rank, gate_sparsity); the mean gate [r] is stored in `last_gate_mean`, or, with
        return_gate_mean, returned as a fifth output instead. The latter is for a checkpointed caller (model/lm.py
        Block), which stores it outside the checkpoint: torch.compile cannot trace an attribute write inside a
        checkpointed region (it would break the compiled graph there)."""
        u, v = self.U(x), self.V(x)  # [B, L, r], autocast dtype under autocast
        g = self.gates(x).to(u.dtype)  # [B, L, r]; the scan takes u, g, v in one dtype
        # a stays fp32 even under autocast: in bf16, a = 0.999 would round to 1.0 (8 mantissa bits).
        y_scan = gated_scan(u, g, v, self.decay(), backend=self.scan_backend(x))  # [B, L, r]
        local = self.conv(F.pad(x.transpose(1, 2), (CONV_KERNEL - 1, 0))).transpose(1, 2)  # [B, L, D]
        y = local + self.W_o(y_scan)
        with torch.no_grad():
            gd = g.detach().float()
            gate_mean = gd.mean(dim=(0, 1))  # [r]
            effective_rank = (gate_mean >= CHANNEL_IN_USE_AT).sum().float()
            sparsity = (gd < GATE_SPARSE_BELOW).float().mean()
        gate_l1 = g[..., self.min_rank :].float().mean(dim=(0, 1)).sum()
        if return_gate_mean:
            return y, gate_l1, effective_rank, sparsity, gate_mean
        self.last_gate_mean = gate_mean
        return y, gate_l1, effective_rank, sparsity

    def mixing_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U [D, r], mean gate [r], W_o [r, D]) of the mixing operator U diag(mean g) W_o.

        mean g is the last forward pass's per-channel mean; before any forward it is 1 (g <= 1, so this is
        the operator's upper bound).
        """
        gm = self.last_gate_mean
        if gm is None:
            gm = torch.ones(self.max_rank, device=self.U.weight.device)
        return self.U.weight.t(), gm, self.W_o.weight.t()
