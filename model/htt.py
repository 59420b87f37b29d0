"""HTT embedding: a tensor-train factorised token table [V, D] with a digit-coupling phase.

Token i is written in mixed radix (i1, i2[, i3]) over V <= v1*v2(*v3); the embedding is the contraction
of the cores over their tensor-train ranks, reshaped to d1*d2(*d3) >= D and cropped to D.

2 cores (math of `shared/design/phase1-model.md`):
    E[i, (a, b)] = sum_rho c[i1, i2, rho] * G1[i1, a, rho] * G2[rho, i2, b]
    c = cos(theta1[i1, rho] + theta2[i2, rho])  (phase on), c = 1 (phase off)
3 cores (our design; the note leaves it open): one phase per tensor-train bond, each coupling the two
digits that bond joins:
    E[i, (a, b, e)] = sum_{rho, sigma} cos(theta1[i1, rho] + theta2l[i2, rho])
                                       * cos(theta2r[i2, sigma] + theta3[i3, sigma])
                                       * G1[i1, a, rho] * G2[rho, i2, b, sigma] * G3[sigma, i3, e]
    A bond weight that depends on both adjacent digits cannot be folded into either core, exactly as in the
    2-core case; the per-rank scalar of the prototype could be (and added nothing).

Storage layout (equivalent to the note's, chosen so a gather by digit is one contiguous index):
G1 [v1, d1, r], G2 [v2, r, d2] (2 cores) or [v2, r, d2, r] (3 cores, middle), G3 [v3, r, d3].

Parameters: 2 cores r*(v1*d1 + v2*d2) + phase r*(v1 + v2);
            3 cores r*v1*d1 + r^2*v2*d2 + r*v3*d3 + phase r*(v1 + 2*v2 + v3).

Activations saved for backward by `forward` (per token; measured with saved_tensors_hooks on CPU; "ac" =
the autocast dtype's bytes, 2 for bf16/fp16, 4 without autocast; r = htt_rank; phase on):
    2 cores: digit indices int64 x2 (16 B), phase sum and cos [r] fp32 x2 (8r B), gathered G1 rows
             [d1, r] fp32 (4*d1*r B), bmm inputs G1*cos [d1, r] and G2 rows [r, d2] in ac (ac*r*(d1 + d2) B).
             Phase off: no phase terms, G1 rows not kept in fp32 when autocast casts them.
    3 cores: digit indices x3, both bonds' phase sum and cos [r] fp32 (16r B), fp32 G1 and G3 rows kept by
             the phase multiplies (4*r*(d1 + d3) B), bmm inputs in ac: G1*cos [d1, r], middle core rows
             [r, d2, r], the intermediate [d1*d2, r], G3*cos [r, d3]. 10.9 kB per token at D = 1024, r = 16,
             bf16 (2 cores: 4.2 kB), dominated by the middle core rows; checkpoint_htt replaces it by the ids.
    Formula: `model.lm.saved_bytes_per_token(config)["embedding"]`.
    The output [B, L, D] (float32) is kept by the first block's norm, not here.
`table` (the tied head) saves only the phase-scaled cores (about the parameter count; for 3 cores also
[2r, v2*d2*v3*d3]); the matmul using the table keeps the table itself.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from model.optim import tag
from model.shapes import factorize as factorize  # re-exported with the count: the formulas live in model/shapes.py
from model.shapes import htt_param_count as htt_param_count
from model.shapes import htt_shapes, rows_per_leading_digit

if TYPE_CHECKING:
    from model.config import Phase1Config


# --- module --------------------------------------------------------------------------------------


class HTTEmbedding(nn.Module):
    """Tensor-train token embedding: ids [B, L] int64 -> [B, L, D] float32."""

    def __init__(self, config: Phase1Config):
        super().__init__()
        self.vocab_size, self.d_model = config.vocab_size, config.d_model
        self.rank, self.num_cores, self.phase = config.htt_rank, config.htt_num_cores, config.htt_phase_encoding
        self.v_factors, self.d_factors = htt_shapes(config)
        r, vs, ds = self.rank, self.v_factors, self.d_factors
        # Phase angles uniform on (-pi, pi): the sum of two such angles is uniform mod 2 pi, so
        # E[cos^2] = 1/2 exactly, and sin(theta) != 0 almost surely, so the phase gets gradient from step 1
        # (theta = 0 would be a stationary point of cos: zero gradient, a phase that never learns).
        c2 = 0.5 if self.phase else 1.0
        if self.num_cores == 2:
            # E[e^2] = r * E[c^2] * s^4 = 1 -> entries ~ N(0, 1) like nn.Embedding, row norm ~ sqrt(D).
            s = (1.0 / (r * c2)) ** 0.25
            self.core1 = tag(nn.Parameter(torch.randn(vs[0], ds[0], r) * s), "embedding")
            self.core2 = tag(nn.Parameter(torch.randn(vs[1], r, ds[1]) * s), "embedding")
            if self.phase:
                self.theta1 = tag(nn.Parameter(torch.empty(vs[0], r).uniform_(-math.pi, math.pi)), "phase")
                self.theta2 = tag(nn.Parameter(torch.empty(vs[1], r).uniform_(-math.pi, math.pi)), "phase")
        else:
            # E[e^2] = r^2 * E[c^2]^2 * s^6 = 1.
            s = (1.0 / (r * r * c2 * c2)) ** (1.0 / 6.0)
            self.core1 = tag(nn.Parameter(torch.randn(vs[0], ds[0], r) * s), "embedding")
            self.core2 = tag(nn.Parameter(torch.randn(vs[1], r, ds[1], r) * s), "embedding")
            self.core3 = tag(nn.Parameter(torch.randn(vs[2], r, ds[2]) * s), "embedding")
            if self.phase:
                self.theta1 = tag(nn.Parameter(torch.empty(vs[0], r).uniform_(-math.pi, math.pi)), "phase")
                self.theta2l = tag(nn.Parameter(torch.empty(vs[1], r).uniform_(-math.pi, math.pi)), "phase")
                self.theta2r = tag(nn.Parameter(torch.empty(vs[1], r).uniform_(-math.pi, math.pi)), "phase")
                self.theta3 = tag(nn.Parameter(torch.empty(vs[2], r).uniform_(-math.pi, math.pi)), "phase")

    def extra_repr(self) -> str:
        return (
            f"vocab={self.vocab_size} ({'x'.join(map(str, self.v_factors))}), d_model={self.d_model} "
            f"({'x'.join(map(str, self.d_factors))}), rank={self.rank}, phase={self.phase}"
        )

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Embedding rows of token ids `idx` [N] int64 -> [N, D]."""
        vs = self.v_factors
        n = idx.shape[0]
        if self.num_cores == 2:
            i1, i2 = idx // vs[1], idx % vs[1]
            c1 = self.core1[i1]  # [N, d1, r]
            if self.phase:
                c1 = c1 * torch.cos(self.theta1[i1] + self.theta2[i2]).unsqueeze(1)
            out = torch.bmm(c1, self.core2[i2])  # [N, d1, r] @ [N, r, d2] -> [N, d1, d2]
        else:
            i1, i2, i3 = idx // (vs[1] * vs[2]), (idx // vs[2]) % vs[1], idx % vs[2]
            c1, c2, c3 = self.core1[i1], self.core2[i2], self.core3[i3]  # [N, d1, r], [N, r, d2, r], [N, r, d3]
            if self.phase:
                # Each bond's phase scales the small outer core on that bond (G1 rows, G3 rows), never the
                # middle core: scaling [N, r, d2, r] would keep an extra fp32 copy of it for the backward.
                c1 = c1 * torch.cos(self.theta1[i1] + self.theta2l[i2]).unsqueeze(1)
                c3 = c3 * torch.cos(self.theta2r[i2] + self.theta3[i3]).unsqueeze(2)
            d1, d2 = self.d_factors[0], self.d_factors[1]
            t = torch.bmm(c1, c2.reshape(n, self.rank, d2 * self.rank))  # [N, d1, d2*r]
            out = torch.bmm(t.reshape(n, d1 * d2, self.rank), c3)  # [N, d1*d2, d3]
        return out.reshape(n, -1)[:, : self.d_model]

    @property
    def rows_per_leading_digit(self) -> int:
        """Vocabulary rows sharing one leading digit i1; `table` builds whole blocks of this many rows."""
        return rows_per_leading_digit(self.v_factors)

    def table(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Rows start..end-1 of the full table [end - start, D] (the tied head builds it chunk by chunk).

        Built with the separable form of the phase, cos(x + y) = cos x cos y - sin x sin y: each phase bond
        becomes a plain tensor-train bond of rank 2r (cores times [cos, sin] on one side, [cos, -sin] on the
        other), so the rows are one or two GEMMs over whole leading-digit blocks instead of a per-row gather.
        Same flops as `rows` (2 V D r), but autograd saves only the phase-scaled cores (~ the parameter count,
        plus [2r, v2*d2*v3*d3] for 3 cores) instead of ~ 3*r*d per row (1.5x the table itself at D = 1024).
        """
        end = self.vocab_size if end is None else end
        vs, ds, n = self.v_factors, self.d_factors, self.num_cores
        block = self.rows_per_leading_digit
        lo, hi = start // block, -(-end // block)  # leading digits covering [start, end)
        g2: torch.Tensor  # a Parameter, then its phase-scaled (plain tensor) version
        g3: torch.Tensor
        if n == 2:
            g1, g2 = self.core1[lo:hi], self.core2  # [k, d1, r], [v2, r, d2]
            if self.phase:
                t1, t2 = self.theta1[lo:hi].unsqueeze(1), self.theta2.unsqueeze(2)  # [k, 1, r], [v2, r, 1]
                g1 = torch.cat([g1 * torch.cos(t1), g1 * torch.sin(t1)], dim=2)  # [k, d1, 2r]
                g2 = torch.cat([g2 * torch.cos(t2), -g2 * torch.sin(t2)], dim=1)  # [v2, 2r, d2]
            rank = g1.shape[2]
            rest = g2.permute(1, 0, 2).reshape(rank, vs[1] * ds[1])  # [R, v2*d2]
            out = (g1.reshape(-1, rank) @ rest).reshape(hi - lo, ds[0], vs[1], ds[1])  # [k, d1, v2, d2]
            out = out.permute(0, 2, 1, 3)  # [k, v2, d1, d2]
        else:
            g1, g2, g3 = self.core1[lo:hi], self.core2, self.core3  # [k,d1,r], [v2,r,d2,r], [v3,r,d3]
            if self.phase:
                t1 = self.theta1[lo:hi].unsqueeze(1)  # [k, 1, r]
                tl, tr = self.theta2l[:, :, None, None], self.theta2r[:, None, None, :]  # [v2, r, 1, 1], [v2, 1, 1, r]
                t3 = self.theta3.unsqueeze(2)  # [v3, r, 1]
                g1 = torch.cat([g1 * torch.cos(t1), g1 * torch.sin(t1)], dim=2)  # [k, d1, 2r]
                g2 = torch.cat([g2 * torch.cos(tl), -g2 * torch.sin(tl)], dim=1)  # [v2, 2r, d2, r]
                g2 = torch.cat([g2 * torch.cos(tr), g2 * torch.sin(tr)], dim=3)  # [v2, 2r, d2, 2r]
                g3 = torch.cat([g3 * torch.cos(t3), -g3 * torch.sin(t3)], dim=1)  # [v3, 2r, d3]
            r1, r2 = g2.shape[1], g2.shape[3]
            t23 = g2.reshape(-1, r2) @ g3.permute(1, 0, 2).reshape(r2, vs[2] * ds[2])  # [v2*r1*d2, v3*d3]
            t23 = t23.reshape(vs[1], r1, ds[1], vs[2], ds[2]).permute(1, 0, 3, 2, 4)  # [r1, v2, v3, d2, d3]
            out = g1.reshape(-1, r1) @ t23.reshape(r1, -1)  # [k*d1, v2*v3*d2*d3]
            out = out.reshape(hi - lo, ds[0], vs[1] * vs[2], ds[1] * ds[2]).permute(0, 2, 1, 3)  # [k, v2*v3, d1, d2*d3]
        out = out.reshape((hi - lo) * block, -1)[:, : self.d_model]  # rows lo*block .. hi*block - 1
        return out[start - lo * block : end - lo * block]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, L] int64 -> embeddings [B, L, D] float32.

        float32 even under autocast (whose bmm gives bf16/fp16): this starts the residual stream, which stays
        float32 through the blocks (fp32 + bf16 branch = fp32), as with a plain nn.Embedding under autocast.
        """
        # .contiguous(): when d1*d2 > D the cropped rows are a view, and the first norm would keep the whole
        # uncropped [N, d1*d2] storage alive for the backward.
        return self.rows(ids.reshape(-1)).float().contiguous().reshape(*ids.shape, self.d_model)
