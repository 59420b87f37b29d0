"""Learning curves for the analysis tests: a noisy power law, a curve that bends, and stand-ins of the settings and
the trainer's evaluation info that the monitor reads (only the fields it reads)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Settings:
    """The fields of tuner.study.spec.LearningCurvePruning the monitor reads."""

    enabled: bool = True
    min_fraction: float = 0.25
    confidence: float = 0.9


@dataclass
class Info:
    """The fields of model.train's evaluation info the monitor reads."""

    tokens: int
    val_loss: float
    val_ppl: float
    repr_effective_rank: float | None = None


def power_law(tokens, alpha, c, noise, seed=0):
    """PPL = exp(alpha ln t + c) with log-normal noise of sd `noise`, at each of `tokens`."""
    rng = np.random.default_rng(seed)
    t = np.asarray(tokens, dtype=float)
    return np.exp(alpha * np.log(t) + c + rng.normal(0.0, noise, t.size))


def bent_curve(tokens, scale, alpha_early=-0.6, alpha_late=-0.25, knee=200_000.0):
    """A log-log curve that flattens after `knee` (as within-run curves do): slope alpha_early, then alpha_late."""
    out = []
    for t in tokens:
        lp = math.log(scale) + alpha_early * math.log(min(t, knee) / 1000.0)
        if t > knee:
            lp += alpha_late * math.log(t / knee)
        out.append({"tokens": int(t), "val_ppl": math.exp(lp)})
    return out
