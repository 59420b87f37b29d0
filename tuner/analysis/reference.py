"""The study's reference (baseline) trial beside the Phase 1 trials: its PPL and GiB, and what the best feasible
Phase 1 trial costs or saves against it.

A reference trial carries user attr `reference` (tuner.storage.trial_attrs.REFERENCE_ATTR, e.g. "dense"). It is
excluded from the front, the hypervolume and the export (tuner.analysis.pareto.feasible_complete); this module is
how `status`, `pareto` and `report` show it. Ratios are Phase 1 / reference: a PPL ratio of 1.10 means the best
feasible Phase 1 trial is 10 % worse in perplexity, a GiB ratio of 0.25 that it needs a quarter of the memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tuner.analysis.pareto import feasible_complete, metric_value
from tuner.storage.constraints import is_feasible
from tuner.storage.trial_attrs import REFERENCE_ATTR, is_reference


def reference_summary(trials: Sequence[Any], metric_names: Sequence[str]) -> dict[str, Any] | None:
    """A JSON-ready description of the study's reference trial, or None when the study has none.

    Keys: reference (the model family), trial, state, end_reason, val_ppl, peak_vram_gib (None until it completed),
    feasible, params_total, and best_phase1: the feasible Phase 1 trial with the lowest val_ppl (the one `export`
    would pick with no memory budget below the ceiling) with ppl_ratio and gib_ratio = Phase 1 / reference (None
    when either side is missing or the reference's value is 0)."""
    refs = [t for t in trials if is_reference(t)]
    if not refs:
        return None
    done = [t for t in refs if t.state.name == "COMPLETE" and t.values is not None]
    ref = max(done or refs, key=lambda t: t.number)  # a retried reference: the attempt that completed
    completed = ref in done
    ppl = metric_value(ref, "val_ppl", metric_names) if completed else None
    gib = metric_value(ref, "peak_vram_gib", metric_names) if completed else None
    out: dict[str, Any] = {
        "reference": str(ref.user_attrs[REFERENCE_ATTR]),
        "trial": ref.number,
        "state": ref.state.name,
        "end_reason": ref.user_attrs.get("end_reason"),
        "val_ppl": ppl,
        "peak_vram_gib": gib,
        "feasible": bool(completed and is_feasible(ref)),
        "params_total": ref.user_attrs.get("params_total"),
        "best_phase1": None,
    }
    scored = [(metric_value(t, "val_ppl", metric_names), t) for t in feasible_complete(trials)]
    scored = [(v, t) for v, t in scored if v is not None]
    if scored:
        best_ppl, best = min(scored, key=lambda c: (c[0], c[1].number))
        best_gib = metric_value(best, "peak_vram_gib", metric_names)
        out["best_phase1"] = {
            "trial": best.number,
            "val_ppl": best_ppl,
            "peak_vram_gib": best_gib,
            "ppl_ratio": _ratio(best_ppl, ppl),
            "gib_ratio": _ratio(best_gib, gib),
        }
    return out


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None or den == 0 else float(num) / float(den)


def describe_reference(s: dict[str, Any] | None) -> list[str]:
    """Text lines for `status`, `pareto` and `report`: the reference's PPL and GiB and the best feasible Phase 1
    trial's ratios to it; [] when the study has no reference."""
    if s is None:
        return []
    head = f"reference: {s['reference']} (trial {s['trial']}, not on the front, never exported): "
    if s["val_ppl"] is None:
        state = s["state"].lower() + (f" ({s['end_reason']})" if s["end_reason"] else "")
        lines = [head + f"{state}, no measurement yet"]
    else:
        gib = "n/a" if s["peak_vram_gib"] is None else f"{s['peak_vram_gib']:.4g} GiB"
        fit = "within the ceiling" if s["feasible"] else f"over the ceiling ({s['end_reason']})"
        lines = [head + f"val_ppl {s['val_ppl']:.4g}, peak_vram_gib {gib}, {fit}"]
    b = s["best_phase1"]
    if b is None:
        lines.append("  best feasible Phase 1 trial: none yet")
    else:
        gib = "n/a" if b["peak_vram_gib"] is None else f"{b['peak_vram_gib']:.4g} GiB"
        lines.append(
            f"  best feasible Phase 1 (trial {b['trial']}): val_ppl {b['val_ppl']:.4g} ({_x(b['ppl_ratio'])} the "
            f"reference's), peak_vram_gib {gib} ({_x(b['gib_ratio'])} the reference's)"
        )
    return lines


def _x(ratio: float | None) -> str:
    return "n/a x" if ratio is None else f"{ratio:.3g}x"
