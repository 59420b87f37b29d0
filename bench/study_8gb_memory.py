"""The memory half of bench/study_8gb.py's summary, over a study's FrozenTrials: the ceiling's enforcement (who crossed
it, ceiling_stop_s, share over it per quarter), the trials refused by the pre-flight estimate, and the estimate
(predicted_peak_gib) against the NVML peak. Memory in GiB (2^30 bytes); relative errors are measured / predicted - 1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench._common import median_or_none
from tuner.storage.trial_attrs import is_reference

TRAINED = ("complete", "vram_ceiling")  # end reasons of a Phase 1 trial that trained (to the end or to the guard)


def _quantile(xs: Sequence[float], q: float) -> float | None:
    """The q-quantile by linear interpolation between order statistics (numpy's default); None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def rel_diff(new: float, old: float) -> float:
    return new / old - 1.0


def window_of(trial: Any, windows: Sequence[dict[str, Any]]) -> int | None:
    """The launch window whose log names the trial's worker; None for a trial no worker ran (WAITING)."""
    worker = trial.user_attrs.get("worker")
    for w in windows:
        if worker in w["workers"]:
            return int(w["window"])
    return None


def trained_phase1(trials: Sequence[Any]) -> list[Any]:
    """Phase 1 (non-reference) COMPLETE trials that trained: to the end or until the guard stopped them at the
    ceiling. By trial number."""
    return sorted(
        (
            t
            for t in trials
            if t.state.name == "COMPLETE" and not is_reference(t) and t.user_attrs.get("end_reason") in TRAINED
        ),
        key=lambda t: t.number,
    )


# --- the ceiling -----------------------------------------------------------------------------------------------------
def ceiling_enforcement(trials: Sequence[Any], ceiling_gib: float, windows: Sequence[dict[str, Any]]) -> dict:
    """Every trial whose NVML peak crossed the ceiling, with its ceiling_stop_s (or why none is recorded), and the
    share of trained Phase 1 trials over the ceiling per quarter of the study (trained trials in number order)."""
    first_with_attr = min(
        (window_of(t, windows) or 0 for t in trials if t.user_attrs.get("ceiling_stop_s") is not None), default=None
    )
    crossed = []
    for t in sorted(trials, key=lambda t: t.number):
        peak = t.user_attrs.get("nvml_peak_gib")
        if peak is None or peak <= ceiling_gib:
            continue
        row = {
            "trial": t.number,
            "window": window_of(t, windows),
            "reference": t.user_attrs.get("reference"),
            "end_reason": t.user_attrs.get("end_reason"),
            "nvml_peak_gib": peak,
            "predicted_peak_gib": t.user_attrs.get("predicted_peak_gib"),
            "ceiling_detected": t.user_attrs.get("ceiling_detected"),
            "ceiling_stop_s": t.user_attrs.get("ceiling_stop_s"),
        }
        if row["ceiling_stop_s"] is None:
            why = []
            if t.user_attrs.get("ceiling_enforced") is False:
                why.append(
                    "not stopped: the reference runs to its end (ceiling_enforced false, detected after the run)"
                )
            if first_with_attr is not None and (row["window"] or 0) < first_with_attr:
                why.append(f"ran in window {row['window']}, before the code that records ceiling_stop_s")
            row["no_stop_s_because"] = "; ".join(why) or "unknown"
        crossed.append(row)
    trained = trained_phase1(trials)
    quarters = []
    n = len(trained)
    for q in range(4):
        part = trained[q * n // 4 : (q + 1) * n // 4]
        over = [t.number for t in part if (t.user_attrs.get("nvml_peak_gib") or 0) > ceiling_gib]
        quarters.append(
            {
                "quarter": q + 1,
                "trials": [part[0].number, part[-1].number] if part else None,
                "n": len(part),
                "over": len(over),
                "over_trials": over,
                "share_over": len(over) / len(part) if part else None,
            }
        )
    return {
        "ceiling_gib": ceiling_gib,
        "crossed": crossed,
        "ceiling_stop_s_first_window": first_with_attr,
        "quarters_of_trained": quarters,
    }


def refusals(trials: Sequence[Any], ceiling_gib: float) -> dict[str, Any]:
    """Trials refused by the pre-flight estimate and the worker time they saved, estimated as one median trained
    Phase 1 trial_wall_s per refusal (a refused trial would have trained as long as a typical one)."""
    refused = sorted(
        (t for t in trials if t.user_attrs.get("end_reason") == "predicted_over_ceiling"), key=lambda t: t.number
    )
    walls = [t.user_attrs["trial_wall_s"] for t in trained_phase1(trials) if t.user_attrs.get("trial_wall_s")]
    med = median_or_none(walls)
    # What the refusals cost: the estimate phase of each (phase_s), where recorded.
    cost = [float((t.user_attrs.get("phase_s") or {}).get("estimate", 0.0)) for t in refused]
    # The same estimate ran for the completed trials without checkpointing: how far below it they measured says how
    # many refusals the eager-step estimate may have made needlessly under the compiled step. (A ceiling-stopped
    # trial's peak is cut short by the stop, so it is no basis.)
    nock = [
        t.user_attrs["nvml_peak_gib"] / t.user_attrs["predicted_peak_gib"]
        for t in trained_phase1(trials)
        if t.params.get("use_gradient_checkpointing") is False
        and t.user_attrs.get("end_reason") == "complete"
        and t.user_attrs.get("predicted_peak_gib")
    ]
    rows = [
        {
            "trial": t.number,
            "predicted_peak_gib": t.user_attrs.get("predicted_peak_gib"),
            "use_gradient_checkpointing": t.params.get("use_gradient_checkpointing"),
        }
        for t in refused
    ]
    maybe = None
    if nock:
        lo, hi = min(nock), max(nock)
        maybe = {
            "basis": "completed trials with use_gradient_checkpointing=False: measured/predicted, min and max",
            "ratio_min": lo,
            "ratio_max": hi,
            "n_basis": len(nock),
            "refused_under_ceiling_at_min_ratio": [
                r["trial"] for r in rows if r["predicted_peak_gib"] and r["predicted_peak_gib"] * lo <= ceiling_gib
            ],
            "refused_under_ceiling_at_max_ratio": [
                r["trial"] for r in rows if r["predicted_peak_gib"] and r["predicted_peak_gib"] * hi <= ceiling_gib
            ],
            "note": "an extrapolation, not a measurement: these refused trials were never run",
        }
    return {
        "refused": rows,
        "n": len(rows),
        "median_trained_wall_s": med,
        "saved_worker_s": med * len(rows) if med is not None else None,
        "saved_basis": "n refused x the median trial_wall_s of the trained Phase 1 trials (2 workers shared each "
        "GPU, so this is worker time; a whole GPU's time is about half of it)",
        "refusal_cost_s": sum(cost),
        "maybe_needless": maybe,
    }


# --- the memory estimate against NVML --------------------------------------------------------------------------------
def estimator_errors(trials: Sequence[Any]) -> dict[str, Any]:
    """predicted_peak_gib (the eager-step estimate) against nvml_peak_gib for Phase 1 trials that completed, and
    per parameter value how many measured above the prediction."""
    done = [
        t
        for t in trained_phase1(trials)
        if t.user_attrs.get("end_reason") == "complete"
        and t.user_attrs.get("predicted_peak_gib")
        and t.user_attrs.get("nvml_peak_gib")
    ]
    rel = [rel_diff(t.user_attrs["nvml_peak_gib"], t.user_attrs["predicted_peak_gib"]) for t in done]
    gib = [t.user_attrs["nvml_peak_gib"] - t.user_attrs["predicted_peak_gib"] for t in done]
    above = [
        {
            "trial": t.number,
            "predicted_gib": t.user_attrs["predicted_peak_gib"],
            "nvml_gib": t.user_attrs["nvml_peak_gib"],
        }
        for t, r in zip(done, rel)
        if r > 0
    ]
    others = [
        {
            "trial": t.number,
            "end_reason": t.user_attrs.get("end_reason"),
            "predicted_gib": t.user_attrs["predicted_peak_gib"],
            "nvml_gib": t.user_attrs["nvml_peak_gib"],
            "rel": rel_diff(t.user_attrs["nvml_peak_gib"], t.user_attrs["predicted_peak_gib"]),
        }
        for t in trials
        if t not in done
        and not is_reference(t)
        and t.user_attrs.get("predicted_peak_gib")
        and t.user_attrs.get("nvml_peak_gib")
        and t.user_attrs["nvml_peak_gib"] > t.user_attrs["predicted_peak_gib"]
    ]
    return {
        "n": len(done),
        "step_modes": sorted({str(t.user_attrs.get("step_mode")) for t in done}),
        "estimate_kinds": sorted({str(t.user_attrs.get("estimate_kind")) for t in done}),
        "rel_median": median_or_none(rel),
        "rel_p10": _quantile(rel, 0.1),
        "rel_p90": _quantile(rel, 0.9),
        "abs_rel_p90": _quantile([abs(r) for r in rel], 0.9),
        "gib_median": median_or_none(gib),
        "gib_max": max(gib) if gib else None,
        "n_measured_above": len(above),
        "measured_above": sorted(above, key=lambda a: a["predicted_gib"] - a["nvml_gib"]),
        "other_trials_measured_above": sorted(others, key=lambda a: -a["rel"]),
        "by_param": by_param(done),
    }


def by_param(done: Sequence[Any], max_values: int = 8) -> dict[str, list[dict[str, Any]]]:
    """For each parameter with at most `max_values` distinct values: per value, trials n, how many measured above
    the prediction and the median relative error."""
    out: dict[str, list[dict[str, Any]]] = {}
    names = sorted({k for t in done for k in t.params})
    for k in names:
        values = sorted({t.params.get(k) for t in done}, key=str)
        if len(values) > max_values:
            continue
        rows = []
        for v in values:
            group = [t for t in done if t.params.get(k) == v]
            rel = [rel_diff(t.user_attrs["nvml_peak_gib"], t.user_attrs["predicted_peak_gib"]) for t in group]
            rows.append({"value": v, "n": len(group), "above": sum(r > 0 for r in rel), "rel_median": median_or_none(rel)})
        out[k] = rows
    return out


def finding(by: dict[str, list[dict[str, Any]]], min_n: int = 3, top: int = 3) -> list[str]:
    """Sentences from `by_param`, over parameter values with >= min_n trials: the `top` values with the largest
    share measured above the prediction, then the `top` values none of whose trials did, lowest median first."""
    rows = [(k, r) for k, rs in by.items() for r in rs if r["n"] >= min_n]
    most = sorted((kr for kr in rows if kr[1]["above"]), key=lambda kr: (-kr[1]["above"] / kr[1]["n"], -kr[1]["n"]))
    none = sorted((kr for kr in rows if not kr[1]["above"]), key=lambda kr: kr[1]["rel_median"])
    return [
        f"{k}={r['value']}: {r['above']} of {r['n']} measured above the prediction (median {r['rel_median']:+.1%})"
        for k, r in most[:top] + none[:top]
    ]
