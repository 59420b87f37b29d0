"""Learning curves: fit log PPL = alpha * log tokens + c, bound the final PPL, prune trials that cannot reach the front.

Optuna cannot prune multi-objective studies (`trial.report` / `should_prune` raise there), so the tuner prunes by
itself: the validation PPL measured at log-spaced points of the token budget is fitted by a power law (least squares in
log-log space), the final PPL at the full budget is predicted with a Student-t prediction interval, and a trial whose
*optimistic* bound is still dominated by the current (val_ppl, peak_vram_gib) Pareto front at the trial's own peak VRAM
is stopped (`LearningCurvePrune`, end reason `learning_curve`).

The exponent drifts as training goes on (alpha flattens from one window of tokens to the next; within one run the
cosine schedule and the early fast phase bend the log-log curve too), so a line through a trial's early points is
biased low at the budget. When the study has completed curves, the rest of the curve is predicted with the *late*
exponent they measured from the same token count to the budget (`predict_late_alpha`): the trial's own latest PPL
times (budget / tokens)^alpha_late, with a Student-t interval from the spread of alpha_late across those trials.

Pure numpy: no torch, no optuna. The monitor is built in the process that trains (the objective's child) and holds only
picklable state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------------------------------
# Where to evaluate
# ---------------------------------------------------------------------------------------------------------------------


def eval_points(budget_tokens: int, n: int = 5, first_fraction: float = 1 / 8) -> list[int]:
    """`n` token counts, log-spaced from `first_fraction * budget_tokens` up to `budget_tokens` (the last point).

    Log spacing gives each decade of the power law the same weight in the fit. At least 4 points (two to fit a line,
    the rest to estimate its noise); the first no later than 1/8 of the budget so a prune decision can come early.
    Raises ValueError when the budget is too small to give `n` distinct integer points.
    """
    if n < 4:
        raise ValueError(f"eval_points: n={n}; a fit with an uncertainty needs at least 4 points, use n >= 4")
    if not 0.0 < first_fraction <= 1 / 8:
        raise ValueError(
            f"eval_points: first_fraction={first_fraction}; must be in (0, 1/8] so pruning can start early"
        )
    budget = int(budget_tokens)
    first = budget * first_fraction
    if first < 1:
        raise ValueError(f"eval_points: budget_tokens={budget_tokens} is too small for first_fraction={first_fraction}")
    pts = [int(round(x)) for x in np.geomspace(first, budget, n)]
    pts[-1] = budget
    pts[0] = min(pts[0], int(math.floor(first)))  # rounding must not push the first point past the fraction
    if len(set(pts)) != n or any(b <= a for a, b in zip(pts, pts[1:])):
        raise ValueError(
            f"eval_points: budget_tokens={budget_tokens} too small for {n} distinct points; raise the budget or lower n"
        )
    return pts


# ---------------------------------------------------------------------------------------------------------------------
# Student t quantile (integer degrees of freedom; numpy only, no scipy)
# ---------------------------------------------------------------------------------------------------------------------


def _t_cdf(t: float, dof: int) -> float:
    """P(T <= t) for Student's t with integer `dof` >= 1 (Abramowitz & Stegun 26.7.3/26.7.4, exact finite sums)."""
    theta = math.atan2(t, math.sqrt(dof))  # A(t|dof) below is P(|T| < |t|), signed by t
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if dof % 2 == 1:
        total, term = 0.0, 1.0
        if dof > 1:
            total = term = 1.0
            for k in range(1, (dof - 3) // 2 + 1):
                term *= c2 * (2 * k) / (2 * k + 1)
                total += term
        a = 2 / math.pi * (theta + s * math.cos(theta) * total) if dof > 1 else 2 * theta / math.pi
    else:
        total = term = 1.0
        for k in range(1, (dof - 2) // 2 + 1):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        a = s * total
    return 0.5 * (1.0 + a)


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with integer `dof` >= 1 (bisection on the exact CDF; |error| < 1e-9)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p={p} must be in (0, 1)")
    if dof < 1:
        raise ValueError(f"t_quantile: dof={dof} must be >= 1")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, dof) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, dof) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------------------------------
# Fit and prediction
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLawFit:
    """log(ppl) = alpha * log(tokens) + c, least squares; natural logs.

    sigma: residual standard deviation in log PPL (sqrt(SSE / (n - 2))); NaN when n == 2 (no degree of freedom left,
    the line goes through both points and says nothing about its own error). cov: 2x2 covariance of (alpha, c) =
    sigma^2 (X^T X)^-1, NaN-filled when sigma is. r2: coefficient of determination in log space (1 for n == 2, where
    the line fits exactly: that is why the prediction interval, not r2, decides a prune).
    """

    alpha: float
    c: float
    r2: float
    sigma: float
    cov: tuple[tuple[float, float], tuple[float, float]]
    n: int

    @property
    def dof(self) -> int:
        return self.n - 2

    def log_ppl(self, tokens: float) -> float:
        return self.alpha * math.log(tokens) + self.c

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cov"] = [list(r) for r in self.cov]
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


@dataclass(frozen=True)
class Prediction:
    """Predicted PPL at `tokens`: mean (the fitted line) and the two ends of a two-sided `confidence` prediction
    interval for one new measurement there. optimistic <= mean <= pessimistic; infinite bounds when the fit has no
    degree of freedom (n == 2)."""

    tokens: int
    mean_ppl: float
    optimistic_ppl: float
    pessimistic_ppl: float
    confidence: float
    method: str = "power_law"  # "power_law": the trial's own fit; "late_alpha": calibrated on completed curves

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def fit_power_law(tokens: Sequence[float], ppl: Sequence[float]) -> PowerLawFit:
    """Least-squares fit of log ppl = alpha * log tokens + c.

    tokens: [n] training tokens seen (> 0, at least two distinct values); ppl: [n] validation perplexities (> 0).
    """
    t_arr, p_arr = np.asarray(tokens, dtype=np.float64), np.asarray(ppl, dtype=np.float64)
    if not (np.all(np.isfinite(t_arr)) and np.all(np.isfinite(p_arr)) and np.all(t_arr > 0) and np.all(p_arr > 0)):
        raise ValueError("fit_power_law: tokens and ppl must be finite and > 0")
    x, y = np.log(t_arr), np.log(p_arr)
    n = int(x.size)
    if n != y.size:
        raise ValueError(f"fit_power_law: {n} token counts but {y.size} PPL values")
    if n < 2 or np.ptp(x) == 0.0:
        raise ValueError(f"fit_power_law: needs at least 2 distinct token counts, got {n} points")
    X = np.stack([x, np.ones_like(x)], axis=1)  # [n, 2]
    xtx_inv = np.linalg.inv(X.T @ X)
    alpha, c = (xtx_inv @ X.T @ y).tolist()
    resid = y - (alpha * x + c)
    sse = float(resid @ resid)
    sst = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - sse / sst if sst > 0 else 1.0
    sigma = math.sqrt(sse / (n - 2)) if n > 2 else float("nan")
    cov = (sigma**2) * xtx_inv if n > 2 else np.full((2, 2), np.nan)
    return PowerLawFit(
        alpha=float(alpha),
        c=float(c),
        r2=float(r2),
        sigma=float(sigma),
        cov=((float(cov[0, 0]), float(cov[0, 1])), (float(cov[1, 0]), float(cov[1, 1]))),
        n=n,
    )


def _exp(x: float) -> float:
    """math.exp, but +inf past the float range: a wide prediction interval's upper bound (or a diverged fit's mean)
    is an unbounded PPL, not an OverflowError that fails the trial (seen on the H100 with 12 packed workers)."""
    return math.exp(x) if x < 709.0 else float("inf")


def predict(fit: PowerLawFit, tokens: float, confidence: float = 0.9) -> Prediction:
    """Predicted PPL at `tokens` with a two-sided `confidence` Student-t prediction interval (dof = n - 2).

    var(log ppl_new) = sigma^2 + [x0, 1] cov [x0, 1]^T: the scatter of one new measurement plus the uncertainty of the
    line itself at x0 = log(tokens), which grows with the extrapolation distance and shrinks with more points.
    With n == 2 there is no estimate of sigma: the bounds are 0 and +inf (nothing can be ruled out).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"predict: confidence={confidence} must be in (0, 1)")
    x0 = math.log(tokens)
    mean_log = fit.alpha * x0 + fit.c
    if fit.dof < 1 or not math.isfinite(fit.sigma):
        return Prediction(int(tokens), _exp(mean_log), 0.0, float("inf"), confidence)
    cov = np.asarray(fit.cov)
    v = np.array([x0, 1.0])
    se = math.sqrt(fit.sigma**2 + float(v @ cov @ v))
    half = t_quantile(0.5 + confidence / 2.0, fit.dof) * se
    return Prediction(int(tokens), _exp(mean_log), _exp(mean_log - half), _exp(mean_log + half), confidence)


def relative_error(predicted: float, actual: float) -> float:
    """|predicted - actual| / actual."""
    return abs(predicted - actual) / actual


MIN_REFERENCES = 3  # completed curves needed before their late exponents replace the trial's own fit


def as_pairs(curve: Iterable[Any]) -> list[tuple[float, float]]:
    """A curve given as dicts ({tokens, val_ppl, ...}) or (tokens, ppl) pairs -> sorted finite (tokens, ppl) pairs."""
    out = []
    for p in curve:
        t, v = (p["tokens"], p["val_ppl"]) if isinstance(p, dict) else (p[0], p[1])
        if t is not None and v is not None and t > 0 and v > 0 and math.isfinite(t) and math.isfinite(v):
            out.append((float(t), float(v)))
    return sorted(out)


def _log_ppl_at(pairs: list[tuple[float, float]], tokens: float) -> float | None:
    """log PPL of a curve at `tokens` by log-log (power-law) interpolation between its bracketing points."""
    for (t0, p0), (t1, p1) in zip(pairs, pairs[1:]):
        if t0 <= tokens <= t1:
            if t1 == t0:
                return math.log(p0)
            w = math.log(tokens / t0) / math.log(t1 / t0)
            return (1 - w) * math.log(p0) + w * math.log(p1)
    if pairs and pairs[-1][0] == tokens:
        return math.log(pairs[-1][1])
    return None


def late_alphas(reference_curves: Iterable[Iterable[Any]], from_tokens: float, budget_tokens: float) -> list[float]:
    """For each completed reference curve (its last point at >= 99% of the budget): the exponent of its remaining
    segment, alpha_late = (log ppl(end) - log ppl(from_tokens)) / log(end / from_tokens)."""
    out = []
    for curve in reference_curves:
        pairs = as_pairs(curve)
        if len(pairs) < 2 or pairs[-1][0] < 0.99 * budget_tokens or pairs[-1][0] <= from_tokens:
            continue
        start = _log_ppl_at(pairs, from_tokens)
        if start is None:
            continue
        t_end, p_end = pairs[-1]
        out.append((math.log(p_end) - start) / math.log(t_end / from_tokens))
    return out


def predict_late_alpha(
    tokens: float, ppl: float, budget_tokens: float, alphas: Sequence[float], confidence: float = 0.9
) -> Prediction:
    """PPL at the budget from the trial's latest point (tokens, ppl) and the late exponents of completed curves.

    log ppl(B) = log ppl + mean(alpha_late) * log(B / tokens); the interval is the Student-t prediction interval of
    one new alpha_late (m - 1 dof, half-width t * sd * sqrt(1 + 1/m)) carried over the same log distance.
    Needs at least 2 exponents (for a spread); MIN_REFERENCES is what the monitor asks for.
    """
    a = np.asarray(alphas, dtype=np.float64)
    m = int(a.size)
    if m < 2:
        raise ValueError(f"predict_late_alpha: needs at least 2 reference exponents, got {m}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"predict_late_alpha: confidence={confidence} must be in (0, 1)")
    dist = math.log(budget_tokens / tokens)
    mean_log = math.log(ppl) + float(a.mean()) * dist
    half = t_quantile(0.5 + confidence / 2.0, m - 1) * float(a.std(ddof=1)) * math.sqrt(1 + 1 / m) * dist
    return Prediction(
        int(budget_tokens),
        _exp(mean_log),
        _exp(mean_log - half),
        _exp(mean_log + half),
        confidence,
        "late_alpha",
    )


# ---------------------------------------------------------------------------------------------------------------------
# Pareto test
# ---------------------------------------------------------------------------------------------------------------------


def can_enter_front(optimistic_ppl: float, peak_vram_gib: float, front: Iterable[tuple[float, float]]) -> bool:
    """Whether a point (optimistic_ppl, peak_vram_gib) could join the 2-D minimisation front of (ppl, vram_gib) points.

    False iff some front point uses no more VRAM and has no higher PPL (it weakly dominates the point). An empty
    front admits everything.
    """
    for ppl_f, vram_f in front:
        if vram_f <= peak_vram_gib and ppl_f <= optimistic_ppl:
            return False
    return True


# ---------------------------------------------------------------------------------------------------------------------
# The seeds' other claim: the representation effective rank predicts the final PPL
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankPredictor:
    """log(final_ppl) = slope * effective_rank + intercept, least squares across trials (a log-linear law between rank
    and final PPL, checked against finished trials by rank_predictor_error)."""

    slope: float
    intercept: float
    r2: float
    n: int

    def predict(self, effective_rank: float) -> float:
        return _exp(self.slope * effective_rank + self.intercept)


def fit_rank_predictor(ranks: Sequence[float], final_ppls: Sequence[float]) -> RankPredictor:
    """Fit log final PPL linearly on the early effective rank. ranks, final_ppls: [n] per trial, n >= 2."""
    x = np.asarray(ranks, dtype=np.float64)
    y = np.log(np.asarray(final_ppls, dtype=np.float64))
    if x.size != y.size or x.size < 2 or np.ptp(x) == 0.0:
        raise ValueError(f"fit_rank_predictor: needs >= 2 trials with distinct ranks, got {x.size}")
    slope, intercept = np.polyfit(x, y, 1).tolist()
    resid = y - (slope * x + intercept)
    sst = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / sst if sst > 0 else 1.0
    return RankPredictor(float(slope), float(intercept), float(r2), int(x.size))


def rank_predictor_error(ranks: Sequence[float], final_ppls: Sequence[float]) -> float:
    """Median leave-one-out relative error of the rank predictor: each trial's final PPL predicted from a fit on the
    others (so the figure compares fairly with the power law, which never sees the final point). Needs >= 3 trials."""
    r = list(map(float, ranks))
    p = list(map(float, final_ppls))
    if len(r) != len(p) or len(r) < 3:
        raise ValueError(f"rank_predictor_error: needs >= 3 (rank, ppl) pairs, got {len(r)}")
    errs = []
    for i in range(len(r)):
        fit = fit_rank_predictor(r[:i] + r[i + 1 :], p[:i] + p[i + 1 :])
        errs.append(relative_error(fit.predict(r[i]), p[i]))
    return float(np.median(errs))
