"""The learning-curve monitor wired into a trial: records the curve, predicts the final PPL, prunes
(LearningCurvePrune)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tuner.analysis.curve import (
    MIN_REFERENCES,
    PowerLawFit,
    Prediction,
    as_pairs,
    can_enter_front,
    eval_points,
    fit_power_law,
    late_alphas,
    predict,
    predict_late_alpha,
    relative_error,
)

# ---------------------------------------------------------------------------------------------------------------------
# The monitor wired into a trial
# ---------------------------------------------------------------------------------------------------------------------


class LearningCurvePrune(Exception):
    """Raised from `on_eval` to stop a trial: even the optimistic final PPL is dominated by the front.

    Picklable (it crosses the child -> worker process boundary)."""

    def __init__(self, prediction: Prediction, fit: PowerLawFit, peak_vram_gib: float | None = None):
        self.prediction, self.fit, self.peak_vram_gib = prediction, fit, peak_vram_gib
        super().__init__(prediction, fit, peak_vram_gib)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.prediction, self.fit, self.peak_vram_gib))

    def __str__(self) -> str:
        p = self.prediction
        vram = "?" if self.peak_vram_gib is None else f"{self.peak_vram_gib:.3f}"
        return (
            f"learning curve: predicted final PPL {p.mean_ppl:.2f} (optimistic {p.optimistic_ppl:.2f} at "
            f"{p.confidence:.0%}) at {p.tokens} tokens cannot enter the Pareto front at peak {vram} GiB "
            f"(method {p.method}; own fit alpha {self.fit.alpha:.3f}, r2 {self.fit.r2:.3f}, n {self.fit.n})"
        )


FrontLike = Sequence[tuple[float, float]] | Callable[[], Sequence[tuple[float, float]]]


class LearningCurveMonitor:
    """Records a trial's validation curve, fits it at each evaluation, and raises LearningCurvePrune when warranted.

    settings: any object with `enabled` (bool), `min_fraction` (float in (0, 1): no prune decision before this share
      of the budget), `confidence` (float in (0, 1): two-sided level of the prediction interval whose lower end is the
      optimistic bound). The study spec's `pruning.learning_curve`.
    budget_tokens: the trial's training-token budget (the prediction target).
    front: the current feasible (val_ppl, peak_vram_gib) Pareto front, as a list or a zero-argument callable that
      returns one (called at each decision, so a worker can refresh it).
    peak_vram_gib_fn: zero-argument callable giving this trial's peak memory so far, GiB (same measure as the front).
    reference_curves: curves of the study's completed trials with the same budget (each a list of {tokens, val_ppl}
      dicts, i.e. their `curve` user attr, or (tokens, ppl) pairs). With at least MIN_REFERENCES of them the final
      PPL is predicted with their late exponents (`predict_late_alpha`); otherwise with the trial's own power-law fit.
    n_points, first_fraction: the evaluation schedule (`eval_points`). Recording always happens; the prune decision
      only when `settings.enabled`.
    """

    def __init__(
        self,
        settings: Any,
        budget_tokens: int,
        front: FrontLike,
        peak_vram_gib_fn: Callable[[], float],
        *,
        reference_curves: Iterable[Iterable[Any]] = (),
        n_points: int = 6,
        first_fraction: float = 1 / 16,
    ):
        for name in ("enabled", "min_fraction", "confidence"):
            if not hasattr(settings, name):
                raise TypeError(f"LearningCurveMonitor: settings lacks `{name}` (pass spec.pruning.learning_curve)")
        if not 0.0 < float(settings.confidence) < 1.0:
            raise ValueError(f"LearningCurveMonitor: confidence={settings.confidence} must be in (0, 1)")
        if not 0.0 <= float(settings.min_fraction) < 1.0:
            raise ValueError(f"LearningCurveMonitor: min_fraction={settings.min_fraction} must be in [0, 1)")
        self.enabled = bool(settings.enabled)
        self.min_fraction = float(settings.min_fraction)
        self.confidence = float(settings.confidence)
        self.budget_tokens = int(budget_tokens)
        self._front = front
        self._peak_fn = peak_vram_gib_fn
        self.reference_curves = [as_pairs(c) for c in reference_curves]
        self.eval_points: list[int] = eval_points(self.budget_tokens, n_points, first_fraction)
        self.points: list[dict[str, Any]] = []
        self.fit: PowerLawFit | None = None
        self.prediction: Prediction | None = None
        self.predictions: list[dict[str, Any]] = []  # one per fit: made_at_tokens + the Prediction fields
        self.final_ppl: float | None = None
        self.final_pred_error: float | None = None

    # -- the callback ---------------------------------------------------------------------------------------------
    def on_eval(self, info: Any) -> None:
        """Record one evaluation (`info.tokens, .val_loss, .val_ppl, .repr_effective_rank`); maybe raise
        LearningCurvePrune. Evaluations at or past the budget are recorded but never prune (nothing left to save)."""
        tokens = int(info.tokens)
        self.points.append(
            {
                "tokens": tokens,
                "val_loss": float(info.val_loss),
                "val_ppl": float(info.val_ppl),
                "repr_effective_rank": _float_or_none(getattr(info, "repr_effective_rank", None)),
            }
        )
        if tokens >= self.budget_tokens:
            return
        usable = [p for p in self.points if p["tokens"] > 0 and math.isfinite(p["val_ppl"]) and p["val_ppl"] > 0]
        if len({p["tokens"] for p in usable}) < 2:
            return
        self.fit = fit_power_law([p["tokens"] for p in usable], [p["val_ppl"] for p in usable])
        self.prediction = predict(self.fit, self.budget_tokens, self.confidence)
        alphas = late_alphas(self.reference_curves, usable[-1]["tokens"], self.budget_tokens)
        if len(alphas) >= MIN_REFERENCES:
            self.prediction = predict_late_alpha(
                usable[-1]["tokens"], usable[-1]["val_ppl"], self.budget_tokens, alphas, self.confidence
            )
        self.predictions.append(
            {
                "made_at_tokens": tokens,
                **self.prediction.to_dict(),
                "alpha": self.fit.alpha,
                "r2": self.fit.r2,
                "n": self.fit.n,
                "n_references": len(alphas),
            }
        )
        if not self.enabled or tokens < self.min_fraction * self.budget_tokens:
            return
        peak = float(self._peak_fn())
        front = self._front() if callable(self._front) else self._front
        if not can_enter_front(self.prediction.optimistic_ppl, peak, front):
            raise LearningCurvePrune(self.prediction, self.fit, peak)

    # -- after the trial ------------------------------------------------------------------------------------------
    def final_error(self, final_ppl: float) -> float | None:
        """Relative error |predicted - final| / final of the last prediction made before the budget; None if none."""
        self.final_ppl = float(final_ppl)
        for rec in self.predictions:
            rec["error"] = relative_error(rec["mean_ppl"], self.final_ppl)
        self.final_pred_error = self.predictions[-1]["error"] if self.predictions else None
        return self.final_pred_error

    def attrs(self) -> dict[str, Any]:
        """JSON-ready user attributes for the trial: `curve` (the points), `curve_alpha`, `curve_r2`,
        `curve_prediction` (the latest), `curve_predictions` (all, with `error` once final_error ran),
        `curve_final_ppl`, `curve_final_pred_error`, `curve_budget_tokens`."""
        return {
            "curve": list(self.points),
            "curve_budget_tokens": self.budget_tokens,
            "curve_alpha": None if self.fit is None else self.fit.alpha,
            "curve_c": None if self.fit is None else self.fit.c,
            "curve_r2": None if self.fit is None else self.fit.r2,
            "curve_prediction": None if self.prediction is None else self.prediction.to_dict(),
            "curve_predictions": list(self.predictions),
            "curve_final_ppl": self.final_ppl,
            "curve_final_pred_error": self.final_pred_error,
        }


def _float_or_none(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None
