"""The report's figures (matplotlib, no display needed): the Pareto front, the memory breakdown, the importances.

Each `*_figure` function returns the matplotlib Figure (tests read its axes), `save` writes it as a PNG.

Pareto front (`pareto_figure`), for the first two objectives (x = objective 0, y = objective 1):
- the main panel is zoomed to the feasible trials and the reference (5% margins), not to 0 .. ceiling, so a study
  whose trials all sit far under the ceiling is not a flat line; the ceiling is drawn as a line when it is in view
  (the zoom grows to it when it is near) and named at the panel's edge when it is far above;
- front points carry their trial numbers (`#12`); the reference (baseline) trial is a star;
- infeasible trials (over the ceiling) are in a panel of their own: their peak GiB (measured, or predicted for
  `predicted_over_ceiling`) against the ceiling, labelled with the trial number and end reason. Their val_ppl is a
  placeholder (the vocabulary size) unless it was measured, so it is never plotted as a PPL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tuner.analysis.formatting import mem_text
from tuner.storage.constraints import constraint_value, is_feasible
from tuner.storage.trial_attrs import is_reference, trial_attr


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    """Write `fig` as a PNG at `path` and close it."""
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)
    return path


def _span(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 0.05
    return lo - pad, hi + pad


def infeasible_peak_gib(trial: Any, names: Sequence[str]) -> float | None:
    """An infeasible trial's peak in GiB: its peak_vram_gib objective, else its observed or predicted peak attr
    (None when neither was recorded)."""
    if "peak_vram_gib" in names and trial.values is not None:
        return float(trial.values[list(names).index("peak_vram_gib")])
    for key in ("observed_peak_gib", "predicted_peak_gib"):
        if isinstance(trial.user_attrs.get(key), (int, float)):
            return float(trial.user_attrs[key])
    return None


def pareto_figure(
    trials: Sequence[Any],
    names: Sequence[str],
    directions: Sequence[str],
    front: Sequence[Any],
    ceiling_gib: float | None = None,
) -> Any:
    """The Pareto front figure (see the module docstring). Axes: [main] or [main, infeasible]."""
    plt = _plt()
    finished = [t for t in trials if t.state.name == "COMPLETE" and t.values is not None]
    phase1 = [t for t in finished if not is_reference(t)]
    refs = [t for t in finished if is_reference(t)]
    feas = [t for t in phase1 if is_feasible(t)]
    infeas = [t for t in phase1 if not is_feasible(t)]
    front_nums = {t.number for t in front}
    if infeas:
        fig, (ax, side) = plt.subplots(1, 2, figsize=(10, 4.8), dpi=120, gridspec_kw={"width_ratios": [3, 1.3]})
    else:
        fig, ax = plt.subplots(figsize=(6.8, 4.8), dpi=120)
        side = None
    x_i, y_i = (0, 1) if len(names) > 1 else (0, 0)
    others = [t for t in feas if t.number not in front_nums]
    if others:
        ax.scatter([t.values[x_i] for t in others], [t.values[y_i] for t in others], c="0.6", s=18, label="feasible")
    if front:
        pts = sorted((t.values[x_i], t.values[y_i], t.number) for t in front)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", c="tab:blue", ms=5, label="Pareto front", zorder=3)
        for x, y, number in pts:
            ax.annotate(f"#{number}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color="tab:blue")
    for t in refs:  # beside the front, never on it: the plain transformer the compression is measured against
        ax.scatter(
            [t.values[x_i]],
            [t.values[y_i]],
            c="tab:orange",
            marker="*",
            s=160,
            edgecolors="k",
            linewidths=0.5,
            label=f"reference: {t.user_attrs.get('reference')} (trial {t.number})",
            zorder=4,
        )
        ax.annotate(f"#{t.number}", (t.values[x_i], t.values[y_i]), textcoords="offset points", xytext=(5, -10),
                    fontsize=7, color="tab:orange")  # fmt: skip
    shown = feas + refs
    if shown:
        ax.set_xlim(*_span([t.values[x_i] for t in shown]))
        ax.set_ylim(*_span([t.values[y_i] for t in shown]))
    if ceiling_gib is not None and names[y_i] == "peak_vram_gib":
        _ceiling(ax, float(ceiling_gib))
    ax.set_xlabel(f"{names[x_i]} ({directions[x_i]})")
    ax.set_ylabel(f"{names[y_i]} ({directions[y_i]})")
    ax.set_title(
        f"Pareto front: {len(front)} of {len(feas)} feasible Phase 1 trials" + (" + reference" if refs else "")
    )
    ax.grid(alpha=0.3)
    if shown:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no feasible completed trial yet", ha="center", va="center", transform=ax.transAxes)
    if side is not None:
        _infeasible_panel(side, infeas, names, ceiling_gib)
    return fig


def _ceiling(ax: Any, ceiling: float) -> None:
    """The ceiling as a line when it is in view or near (within half the zoomed span: the zoom grows to show it),
    else named at the panel's edge."""
    lo, hi = ax.get_ylim()
    if hi < ceiling <= hi + 0.5 * (hi - lo):
        hi = ceiling + 0.05 * (hi - lo)
        ax.set_ylim(lo, hi)
    label = f"VRAM ceiling {ceiling:g} GiB"
    if lo <= ceiling <= hi:
        ax.axhline(ceiling, ls="--", c="tab:red", lw=1, label=label)
    else:
        where = "above" if ceiling > hi else "below"
        ax.annotate(
            f"{label} ({where}: off this zoom)",
            xy=(0.98, 0.98 if where == "above" else 0.02),
            xycoords="axes fraction",
            ha="right",
            va="top" if where == "above" else "bottom",
            fontsize=8,
            color="tab:red",
        )


def _infeasible_panel(ax: Any, infeas: Sequence[Any], names: Sequence[str], ceiling_gib: float | None) -> None:
    rows = sorted(infeas, key=lambda t: t.number)
    peaks = [infeasible_peak_gib(t, names) for t in rows]
    ys = list(range(len(rows)))
    known = [(y, p) for y, p in zip(ys, peaks) if p is not None]
    ax.scatter([p for _, p in known], [y for y, _ in known], c="tab:red", marker="x", s=28)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"#{t.number} {t.user_attrs.get('end_reason', '?')}" for t in rows], fontsize=7)
    if ceiling_gib is not None:
        ax.axvline(float(ceiling_gib), ls="--", c="tab:red", lw=1)
    ax.set_xlabel("peak GiB (measured, or predicted)")
    ax.set_title(f"over the ceiling: {len(rows)} (infeasible)", fontsize=9)
    ax.grid(alpha=0.3)
    if ys:
        ax.set_ylim(-0.7, len(ys) - 0.3)


def memory_figure(trials: Sequence[Any], names: Sequence[str]) -> Any | None:
    """Estimated memory parts (stacked, user attr `estimate`: tensor components at the peak, allocator, outside)
    beside the measured peak (the peak_vram_gib objective) per trial; None when no trial carries both."""
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        est = trial_attr(t, "estimate")
        if not isinstance(est, Mapping) or t.values is None or "peak_vram_gib" not in names:
            continue
        rows.append((t, est, float(t.values[list(names).index("peak_vram_gib")])))
    if not rows:
        return None
    plt = _plt()
    top = max(max(float(e.get("total_gib") or 0.0), m) for _, e, m in rows)
    scale, unit = (1024.0, "MiB") if top < 1.0 else (1.0, "GiB")  # small studies read in MiB
    totals: dict[str, float] = {}
    for _, est, _ in rows:
        for k, v in (est.get("components") or {}).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    parts = sorted(totals, key=lambda k: -totals[k])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 3), 4.8), dpi=120)
    xs = list(range(len(rows)))
    cmap = plt.get_cmap("tab20", max(len(parts) + 2, 3))
    bottom = [0.0] * len(rows)
    # (label, GiB of that part in an estimate dict): the tensor components at the peak, then the two other parts
    stack: list[tuple[str, Callable[[Mapping[str, Any]], float]]] = [(p, _component(p)) for p in parts]
    stack.append(("allocator", lambda e: float(e.get("allocator_gib") or 0.0)))
    stack.append(("outside the allocator", lambda e: float(e.get("outside_gib") or 0.0)))
    for j, (label, get) in enumerate(stack):
        heights = [scale * get(est) for _, est, _ in rows]
        if not any(heights):
            continue
        ax.bar([x - 0.2 for x in xs], heights, 0.4, bottom=bottom, color=cmap(j), label=label)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.bar([x + 0.2 for x in xs], [scale * m for _, _, m in rows], 0.4, color="k", alpha=0.75, label="measured peak")
    for x, (_, est, measured) in zip(xs, rows):
        ax.annotate(mem_text(measured), (x + 0.2, scale * measured), ha="center", va="bottom", fontsize=6)
        ax.annotate(mem_text(float(est.get("total_gib") or 0.0)), (x - 0.2, bottom[x]), ha="center", va="bottom",
                    fontsize=6)  # fmt: skip
    ax.set_xticks(xs)
    ax.set_xticklabels([f"#{t.number}" for t, _, _ in rows], fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title("Memory: estimated parts (left bar) beside the measured peak (right bar)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _component(name: str) -> Callable[[Mapping[str, Any]], float]:
    return lambda e: float((e.get("components") or {}).get(name, 0.0))


def importance_figure(importances: Mapping[str, Mapping[str, Any]]) -> Any:
    """One horizontal bar chart per objective (tuner report's importances: param -> share, or `_unavailable`)."""
    plt = _plt()
    names = list(importances)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.2 * max(len(names), 1), 3.6), dpi=120, squeeze=False)
    for ax, metric in zip(axes[0], names):
        imp = importances[metric]
        ax.set_title(f"importance for {metric}", fontsize=9)
        if "_unavailable" in imp:
            ax.text(0.5, 0.5, f"unavailable:\n{str(imp['_unavailable'])[:80]}", ha="center", va="center",
                    transform=ax.transAxes, fontsize=7, wrap=True)  # fmt: skip
            ax.set_axis_off()
            continue
        items = sorted(imp.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [float(v) for _, v in items], color="tab:blue")
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlim(0, 1)
        ax.grid(axis="x", alpha=0.3)
    return fig


def infeasible_summary(trials: Sequence[Any], names: Sequence[str]) -> list[dict[str, Any]]:
    """Infeasible Phase 1 trials as rows: number, end_reason, peak_gib, constraint_gib (for the markdown)."""
    return [
        {
            "number": t.number,
            "end_reason": t.user_attrs.get("end_reason"),
            "peak_gib": infeasible_peak_gib(t, names),
            "constraint_gib": constraint_value(t),
        }
        for t in trials
        if t.state.name == "COMPLETE" and t.values is not None and not is_feasible(t) and not is_reference(t)
    ]
