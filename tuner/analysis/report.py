"""Plot the trials' learning curves (validation PPL vs training tokens, log-log) with their power-law fits.

Used by `tuner report`. Pareto trials are drawn in colour with their fit; trials stopped by the learning-curve pruner
are drawn in red with the fit extrapolated to the budget and the optimistic bound that condemned them; the other
finished trials are drawn thin and grey for context.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tuner.analysis.curve import fit_power_law
from tuner.analysis.pareto import dominates
from tuner.storage.trial_attrs import trial_attr

__all__ = ["curve_title", "pareto_numbers_min", "write_learning_curves"]


def pareto_numbers_min(trials: Sequence[Any]) -> set[int]:
    """Numbers of the non-dominated trials among those with `values`, every objective minimised.

    A default for callers without the study's directions; `tuner report` should pass
    `{t.number for t in study.best_trials}` instead."""
    pts = [(t.number, tuple(t.values)) for t in trials if getattr(t, "values", None)]
    front = set()
    for num, v in pts:
        if not any(dominates(w, v) for _, w in pts):
            front.add(num)
    return front


def curve_points(t: Any) -> list[dict[str, Any]]:
    """The trial's `curve` attr (each {tokens, val_ppl, ...}) without points of no tokens or a non-finite PPL."""
    pts = trial_attr(t, "curve") or []
    return [p for p in pts if p.get("tokens", 0) > 0 and p.get("val_ppl") and math.isfinite(p["val_ppl"])]


def write_learning_curves(
    trials: Iterable[Any],
    out_dir: str | Path,
    *,
    pareto_numbers: Iterable[int] | None = None,
    filename: str = "learning_curves.png",
) -> Path | None:
    """Write `out_dir/filename` (PNG) and return its path; None when no trial carries a `curve` user attribute.

    trials: optuna FrozenTrials (any state) with user attrs `curve` (list of {tokens, val_ppl, ...}), `end_reason`,
      optionally `curve_budget_tokens` and `curve_prediction` (written by LearningCurveMonitor.attrs()).
    pareto_numbers: trial numbers on the Pareto front; default: the minimisation front of the given trials' values.
    """
    trials = list(trials)
    with_curves = [t for t in trials if len(curve_points(t)) >= 1]
    if not with_curves:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: report runs on servers without a display
    import matplotlib.pyplot as plt
    import numpy as np

    pareto = set(pareto_numbers) if pareto_numbers is not None else pareto_numbers_min(trials)
    pruned = [t for t in with_curves if t.user_attrs.get("end_reason") == "learning_curve"]
    pruned_nums = {t.number for t in pruned}
    front = [t for t in with_curves if t.number in pareto and t.number not in pruned_nums]
    drawn = pruned_nums | {t.number for t in front}
    others = [t for t in with_curves if t.number not in drawn]

    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    for t in others:
        pts = curve_points(t)
        ax.plot(
            [p["tokens"] for p in pts], [p["val_ppl"] for p in pts], color="0.7", lw=0.8, marker=".", ms=3, zorder=1
        )
    cmap = plt.get_cmap("viridis", max(len(front), 1))
    for i, t in enumerate(sorted(front, key=lambda t: t.number)):
        _draw(ax, t, cmap(i), "o", "-", f"#{t.number} (Pareto)", np)
    for j, t in enumerate(pruned):
        _draw(ax, t, "tab:red", "x", ":", "pruned (learning_curve)" if j == 0 else None, np, mark_bound=True)
    if others:
        ax.plot([], [], color="0.7", lw=0.8, marker=".", label="other trials")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation PPL")
    ax.set_title(curve_title(trials, len(front), len(pruned), len(others)), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def curve_title(trials: Sequence[Any], n_front: int, n_pruned_drawn: int, n_others: int) -> str:
    """The plot's title. Pruned trials are counted over every trial of the study (state PRUNED, whatever the
    reason: learning curve, instability, timeout, invalid config), not only those drawn: a trial pruned before its
    first evaluation has no curve to draw but was still pruned."""
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    by_curve = sum(1 for t in pruned if t.user_attrs.get("end_reason") == "learning_curve")
    drawn = f"{n_pruned_drawn} drawn" if n_pruned_drawn != by_curve else "all drawn"
    return (
        f"Learning curves: {n_front} Pareto, {n_others} other; {len(pruned)} pruned trials "
        f"({by_curve} by the learning curve, {drawn} in red)\n(lines: fits log PPL = alpha log tokens + c)"
    )


def _draw(
    ax: Any, t: Any, color: Any, marker: str, fit_style: str, label: str | None, np: Any, mark_bound: bool = False
) -> None:
    pts = curve_points(t)
    x = [p["tokens"] for p in pts]
    y = [p["val_ppl"] for p in pts]
    ax.plot(x, y, color=color, marker=marker, lw=0.6, alpha=0.8, ms=5, label=label, zorder=3)
    if len({*x}) < 2:
        return
    # refit from the stored points: the plot shows exactly what the points say, whatever was stored as `curve_alpha`
    fit = fit_power_law(x, y)
    pred = trial_attr(t, "curve_prediction") or {}
    # the prediction's target is the budget: a pruned trial's fit is drawn out to where it was judged
    budget = t.user_attrs.get("curve_budget_tokens") or pred.get("tokens") or max(x)
    xs = np.geomspace(min(x), max(budget, max(x)), 50)
    ax.plot(xs, np.exp(fit.alpha * np.log(xs) + fit.c), color=color, ls=fit_style, lw=1.2, zorder=2)
    if mark_bound and pred.get("optimistic_ppl"):
        ax.plot([pred["tokens"]], [pred["optimistic_ppl"]], color=color, marker="v", ms=6, zorder=3)
