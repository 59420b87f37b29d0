"""The dense baseline: a GPT-style decoder built from a `DenseConfig`, with the same forward contract as
`Phase1LM` (ids [B, L] -> `LMOutput`), so the one trainer trains and measures both.

    ids [B, L] -> tok_emb[ids] + pos_emb[0:L] -> n_layers x block -> LayerNorm -> h E^T (tied) -> logits [B, L, V]
    block: x = x + Attn(LN(x)); x = x + MLP(LN(x)), MLP = W2 gelu(W1 x), hidden 4D; causal SDPA attention.

Init as GPT-2: every weight N(0, 0.02), the two residual output projections N(0, 0.02 / sqrt(2 n_layers)),
positions N(0, 0.01), LayerNorm weight 1 and bias 0.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.dense_config import DenseConfig
from model.lm import LMOutput
from model.loss import CeSum, XentGrad, ce_sum, chunked_cross_entropy, linear_cross_entropy

INIT_STD = 0.02


class _Attention(nn.Module):
    """Causal multi-head self-attention: x [B, L, D] -> [B, L, D] (SDPA: flash/memory-efficient on CUDA)."""

    def __init__(self, config: DenseConfig):
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, L, hd]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, L, hd]
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class _Block(nn.Module):
    def __init__(self, config: DenseConfig):
        super().__init__()
        D = config.d_model
        self.ln1 = nn.LayerNorm(D)
        self.attn = _Attention(config)
        self.ln2 = nn.LayerNorm(D)
        self.fc = nn.Linear(D, 4 * D, bias=False)
        self.out = nn.Linear(4 * D, D, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class DenseLM(nn.Module):
    """forward(ids [B, L] int64, targets [B, L] int64 | None) -> LMOutput (aux_loss 0, no gate diagnostics)."""

    def __init__(self, config: DenseConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.n_seq, config.d_model)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.ce_fn: CeSum = ce_sum  # one loss chunk's CE sum; model/fast.py swaps in a compiled one
        # set by model/fast.py use_fused_loss: the head's GEMM fused into the loss while training (None: off)
        self.fused_loss_grad: XentGrad | None = None
        self._init_weights()

    def _init_weights(self) -> None:
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layers)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith(("attn.proj.weight", "out.weight")):
                    nn.init.normal_(p, std=residual_std)
                elif name == "pos_emb.weight":
                    nn.init.normal_(p, std=INIT_STD / 2)
                elif p.dim() >= 2:
                    nn.init.normal_(p, std=INIT_STD)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., D] -> logits [..., V] through the tied token table."""
        return h @ self.tok_emb.weight.to(h.dtype).t()

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None) -> LMOutput:
        if ids.dim() != 2:
            raise ValueError(f"ids must be [B, L] int64, got shape {tuple(ids.shape)}")
        L = ids.shape[1]
        if L > self.config.n_seq:
            raise ValueError(f"sequence length {L} exceeds n_seq = {self.config.n_seq} learned positions")
        x = self.tok_emb(ids) + self.pos_emb.weight[:L]  # [B, L, D] float32
        ckpt = self.config.use_gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            # no RNG state to keep (model/lm.py _checkpointing says why)
            x = checkpoint(block, x, use_reentrant=False, preserve_rng_state=False) if ckpt else block(x)
        h = self.ln_f(x)
        aux = h.new_zeros((), dtype=torch.float32)
        if targets is None:
            return LMOutput(self.logits(h), None, None, aux, h, {})
        c = self.config.loss_chunk_size
        if self.fused_loss_grad is not None and torch.is_grad_enabled():
            chunk = ids.shape[0] * c if 0 < c < L else 0
            ce = linear_cross_entropy(h, self.tok_emb.weight, None, targets, chunk, self.fused_loss_grad)
            return LMOutput(None, ce, ce, aux, h, {})
        ce, logits = chunked_cross_entropy(self.logits, h, targets, c, self.ce_fn)
        return LMOutput(logits, ce, ce, aux, h, {})

    def param_counts(self) -> dict[str, int]:
        """Parameters by component (embedding incl. positions, attention, mlp, norm, head = 0: tied)."""

        def n(params) -> int:
            return sum(p.numel() for p in params)

        blocks = cast("list[_Block]", list(self.blocks))  # nn.ModuleList iterates as plain Modules
        counts = {
            "embedding": n([self.tok_emb.weight, self.pos_emb.weight]),
            "attention": n(p for b in blocks for p in b.attn.parameters()),
            "mlp": n(p for b in blocks for p in (*b.fc.parameters(), *b.out.parameters())),
            "norm": n(p for m in self.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()),
            "head": 0,
        }
        assert sum(counts.values()) == n(self.parameters()), "a parameter is in no component"
        return counts


def build_dense_model(config: DenseConfig) -> DenseLM:
    """Build the baseline from `config` (init seeded by config.seed without touching the caller's RNG state)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return DenseLM(config)
