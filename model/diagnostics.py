"""Measurements of a trained model's representations, used by training's mid-run evaluations.

`representation_effective_rank(h)` is the effective rank of Roy & Vetterli (2007): with s_1..s_k the singular
values of h [N, D] (k = min(N, D)) and p_i = s_i / sum_j s_j, it is exp(-sum_i p_i log p_i), the exponential of
the Shannon entropy of the normalised singular values. It lies in [1, k]: 1 when h has rank one (all tokens'
hidden states on one line), k when every direction carries the same energy (h = a multiple of an orthogonal
matrix); a collapsing representation shows up as a falling value. h is not centred, so a common offset shared by
all tokens counts as one direction. The AR-SSM gate "effective rank" in `LMOutput.diagnostics` is a different
quantity (active scan channels) and keeps that name; this one is always called `repr_effective_rank`.
"""

from __future__ import annotations

import math

import torch


def representation_effective_rank(h: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values of h [N, D]); 0.0 for an all-zero h, nan if h is not finite.

    Computed in float64. When N > D the singular values come from the D x D Gram matrix h^T h (s = sqrt(eigenvalues)),
    which costs one [D, N] x [N, D] product instead of an SVD of the tall matrix; singular values below ~1e-8 of the
    largest are lost to rounding there, and they carry < 1e-8 of the mass, so the entropy is unaffected.
    """
    if h.dim() != 2:
        raise ValueError(f"representation_effective_rank: h must be [N, D], got shape {tuple(h.shape)}")
    x = h.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        return float("nan")
    n, d = x.shape
    if n > d:
        eig = torch.linalg.eigvalsh(x.T @ x)
        s = eig.clamp_min(0.0).sqrt()
    else:
        s = torch.linalg.svdvals(x)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    entropy = -(p * p.log()).sum()
    return float(math.exp(entropy.item()))
