"""The tiny config most model tests build (vocab 97, d_model 32, 2 layers, 17 tokens) and a parameter counter."""

from __future__ import annotations

import torch

from model.config import Phase1Config


def cfg(**kw) -> Phase1Config:
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_seq=17, ffn_rank=4, ar_ssm_max_rank=8,
                ar_ssm_min_rank=2, htt_rank=4)
    base.update(kw)
    return Phase1Config(**base)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
