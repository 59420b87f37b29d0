"""Optimizer parameter groups: one learning-rate multiplier and one weight-decay rule per kind of parameter.

`param_groups(model, lr, weight_decay)` -> list of AdamW group dicts (each with "params", "lr", "weight_decay" and
"name"); the trainer builds its AdamW from it, and any other model (a dense baseline) can too. A parameter's kind
comes from its tag `p.param_group` (set with `tag(p, kind)` where the module is built); an untagged parameter is a
"matrix" when it has >= 2 dims and a "bias" otherwise, so plain nn.Linear / nn.Embedding / norm models work
untagged (tag the embedding as "embedding" to get its rate).

Kinds, rates and decay (measurements and commands: docs/parametrization.md; D = d_model):
    matrix     Linear weights, conv taps, low-rank head factors   lr                weight decay
    embedding  HTT cores (the token table)                        lr * 8 * sqrt(D)  weight decay
    phase      HTT phase angles (radians)                         lr                none
    gain       RMSNorm weights                                    lr                none
    decay      AR-SSM decay logits                                lr                none
    bias       Linear/conv biases, the head's output bias [V]     lr                none
Why a much larger rate for the cores: Adam moves every entry by ~lr per step. A matrix with entries ~1/sqrt(fan_in)
fed unit-RMS inputs changes its output by a large multiple of lr relative to its size, while the table (entries
O(1), read through the fixed 1/sqrt(D) input and head scales) changes by ~lr relative: at one shared rate the table
hardly moves (the shipped model ended above the unigram baseline). Measured on the stdlib corpus (2 layers, 300k
tokens): the multipliers that work are ~64-256 at D = 64, 128 and 256 alike; sqrt(D) is far too small and a core
rate of ~0.5-1 degrades. 8 sqrt(D) sits in that band at all three widths and keeps the cores' absolute rate at D =
1024 (x256) at 0.08-0.26 for base rates 3e-4..1e-3, the range that worked; a multiplier of D would reach 0.3-1.
Phases at the base rate: at the cores' rate, the best result per width was mixed (64: 5.569 vs 5.626, 128: 5.512
vs 5.476, 256: 5.363 vs 5.392 nats) and worse at the largest rates (D 256, 3e-3: 5.530 vs 5.441; a quickstart
trial at 6e-3 above the unigram), so the base rate is the safer choice at D = 1024.
Why no decay on phases, gains, decays and biases: weight decay pulls toward 0, a meaningful point only for weights
whose scale is free (matrices, cores); for an angle, a gain of 1, a decay logit or a log-frequency bias it is a
pull toward an arbitrary value. Keeping decay on the cores measured slightly better than dropping it (5.561 vs
5.586 nats at D = 128).
"""

from __future__ import annotations

import math

from torch import nn

KINDS = ("matrix", "embedding", "phase", "gain", "decay", "bias")
_DECAYED = frozenset({"matrix", "embedding"})


EMBEDDING_LR_PER_SQRT_D = 8.0  # embedding rate = this * sqrt(D) * base rate (measured, docs/parametrization.md)


def lr_multipliers(d_model: int) -> dict[str, float]:
    """Learning-rate multiplier of each kind for a model of width `d_model` (see the module docstring)."""
    emb = EMBEDDING_LR_PER_SQRT_D * math.sqrt(d_model)
    return {"matrix": 1.0, "embedding": emb, "phase": 1.0, "gain": 1.0, "decay": 1.0, "bias": 1.0}


def tag(param: nn.Parameter, kind: str) -> nn.Parameter:
    """Mark `param` as one of KINDS for `param_groups`; returns it (for use in assignments)."""
    if kind not in KINDS:
        raise ValueError(f"param_group: {kind!r} is not one of {KINDS}")
    param.param_group = kind  # type: ignore[attr-defined]
    return param


def kind_of(param: nn.Parameter) -> str:
    """The tag set by `tag`, else "matrix" for >= 2 dims and "bias" for vectors and scalars."""
    kind = getattr(param, "param_group", None)
    if kind is not None:
        return kind
    return "matrix" if param.dim() >= 2 else "bias"


def param_groups(model: nn.Module, lr: float, weight_decay: float, *, d_model: int | None = None) -> list[dict]:
    """AdamW groups of `model`'s trainable parameters, one per kind present, in KINDS order.

    lr: the base (matrix) learning rate; each group's "lr" is lr times its multiplier, and LR schedulers scale every
    group's rate by the same factor. weight_decay: applied to matrices and embedding cores only. d_model: the width
    the embedding's multiplier is computed from (default: `model.config.d_model`).
    """
    width = int(model.config.d_model) if d_model is None else d_model  # type: ignore[union-attr, arg-type]
    mult = lr_multipliers(width)
    by_kind: dict[str, list[nn.Parameter]] = {k: [] for k in KINDS}
    for p in model.parameters():
        if p.requires_grad:
            by_kind[kind_of(p)].append(p)
    return [
        {"name": k, "params": ps, "lr": lr * mult[k], "weight_decay": weight_decay if k in _DECAYED else 0.0}
        for k, ps in by_kind.items()
        if ps
    ]
