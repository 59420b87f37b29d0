"""Low-rank feed-forward network: FFN(x) = act(x U1 V1) U2 V2, hidden width 4D, rank r on both maps.

x [B, L, D] -> x U1 [.., r] -> V1 [.., 4D] -> GELU -> U2 [.., r] -> V2 [.., D].
Parameters r*(D + 4D) + r*(4D + D) = 10*D*r (no biases) against 8*D^2 for the dense FFN.

Activations saved for backward, per token (ac = bytes of the autocast dtype, 4 without autocast):
    input x [D] in ac (the norm returns the autocast dtype), x U1 [r], pre-activation [4D] (GELU's backward),
    GELU output [4D] (U2's weight gradient), U2 output [r]: ac * (9D + 2r) bytes. The two [4D] tensors
    dominate: the low rank saves parameters, not activation memory.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from model.shapes import FFN_EXPANSION
from model.shapes import ffn_layer_param_count as ffn_layer_param_count  # re-exported (model/shapes.py)
from model.shapes import ffn_param_count as ffn_param_count

if TYPE_CHECKING:
    from model.config import Phase1Config


class LowRankFFN(nn.Module):
    """x [B, L, D] -> [B, L, D]."""

    def __init__(self, config: Phase1Config):
        super().__init__()
        d, r, h = config.d_model, config.ffn_rank, FFN_EXPANSION * config.d_model
        self.U1 = nn.Linear(d, r, bias=False)
        self.V1 = nn.Linear(r, h, bias=False)
        self.U2 = nn.Linear(h, r, bias=False)
        self.V2 = nn.Linear(r, d, bias=False)
        with torch.no_grad():
            # Variance-preserving factors (std 1/sqrt(fan_in)); the last one also scaled by 1/sqrt(2 n_layers)
            # so the residual stream stays O(1) at init. nn.Linear's default (std 1/sqrt(3 fan_in)) would
            # shrink the signal ~9x through the four factors.
            for lin in (self.U1, self.V1, self.U2):
                nn.init.normal_(lin.weight, std=lin.in_features**-0.5)
            nn.init.normal_(self.V2.weight, std=(r**-0.5) / math.sqrt(2 * config.n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.V2(self.U2(F.gelu(self.V1(self.U1(x)))))
