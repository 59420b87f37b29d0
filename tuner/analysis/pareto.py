"""Pure functions over a study's trials: feasible Pareto front, hypervolume, status summary, export choice.

They take FrozenTrials (from `study.get_trials()`) and the study's metric names and directions, so tests call them
directly on trials made with Optuna's own API. Feasible = every recorded constraint <= 0 (tuner.storage.constraints).
Reference (baseline) trials never count as Phase 1 trials here: tuner.analysis.reference shows them beside the front.

Hypervolume reference point (fixed per study, so the number is comparable over the study's life): per objective
- val_ppl: the vocabulary size, the perplexity of the uniform model (any model that learned anything beats it);
- peak_vram_gib: the study's ceiling (no feasible trial exceeds it);
- eval_peak_gib: the ceiling too (on CUDA the inference pass runs under the same allocator cap);
- tokens_per_s, eval_tokens_per_s (maximised): 0;
- params: 2 x the largest parameter count among the feasible trials (no fixed bound exists; documented as derived).
Maximised objectives are negated (Optuna's hypervolume assumes minimisation); points not strictly better than the
reference in every objective contribute nothing and are left out.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from tuner.storage._optuna_compat import compute_hypervolume, trial_id
from tuner.storage.constraints import constraint_value, is_feasible
from tuner.storage.trial_attrs import is_reference
from tuner.storage.workers import PROGRESS_ATTR


def _sign(direction: Any) -> float:
    name = getattr(direction, "name", direction)
    return -1.0 if str(name).lower() == "maximize" else 1.0


def metric_value(trial: Any, metric: str, metric_names: Sequence[str]) -> float | None:
    """The trial's value of `metric`: its objective value when the metric is an objective, else its user attr."""
    if metric in metric_names and trial.values is not None:
        return float(trial.values[list(metric_names).index(metric)])
    value = trial.user_attrs.get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def feasible_complete(trials: Sequence[Any]) -> list[Any]:
    """COMPLETE Phase 1 trials with objective values whose constraints hold. Reference (baseline) trials are left
    out: the front, the hypervolume, the best values and the export are the Phase 1 model's
    (tuner.analysis.reference shows the reference beside them)."""
    return [
        t
        for t in trials
        if t.state.name == "COMPLETE" and t.values is not None and is_feasible(t) and not is_reference(t)
    ]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when `a` is no worse than `b` in every objective and better in one (all minimised)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(trials: Sequence[Any], directions: Sequence[Any]) -> list[Any]:
    """Feasible COMPLETE trials no other feasible COMPLETE trial dominates, by trial number.

    Trials with identical values are all kept (as Optuna's `best_trials` does)."""
    pool = feasible_complete(trials)
    signs = [_sign(d) for d in directions]
    keyed = [(t, [s * v for s, v in zip(signs, t.values)]) for t in pool]
    front = [t for t, v in keyed if not any(dominates(w, v) for _, w in keyed)]
    return sorted(front, key=lambda t: t.number)


def reference_point(
    metric_names: Sequence[str],
    directions: Sequence[Any],
    *,
    vocab_size: int | None,
    ceiling_gib: float | None,
    trials: Sequence[Any] = (),
) -> list[float] | None:
    """The hypervolume reference in minimisation form (see module docstring); None when one is not derivable."""
    ref: list[float] = []
    feasible = feasible_complete(trials)
    for metric, d in zip(metric_names, directions):
        sign = _sign(d)
        if metric == "val_ppl" and vocab_size:
            ref.append(sign * float(vocab_size))
        elif metric in ("peak_vram_gib", "eval_peak_gib") and ceiling_gib:
            ref.append(sign * float(ceiling_gib))
        elif metric in ("tokens_per_s", "eval_tokens_per_s") and sign < 0:
            ref.append(0.0)
        elif metric == "params":
            measured = [metric_value(t, "params", metric_names) for t in feasible]
            values = [v for v in measured if v is not None]
            if not values:
                return None
            ref.append(sign * 2.0 * max(values) if sign > 0 else 0.0)
        else:
            return None
    return ref


def hypervolume(front: Sequence[Any], directions: Sequence[Any], reference: Sequence[float] | None) -> float | None:
    """Hypervolume of the trials' values against `reference` (minimisation form); 0.0 for an empty front."""
    if reference is None:
        return None
    import numpy as np

    signs = np.array([_sign(d) for d in directions])
    ref = np.asarray(reference, dtype=float)
    points = np.array([signs * np.asarray(t.values, dtype=float) for t in front], dtype=float).reshape(-1, len(ref))
    points = points[np.all(points < ref, axis=1)]
    if len(points) == 0:
        return 0.0
    return float(compute_hypervolume(points, ref))


def export_choice(
    trials: Sequence[Any], metric_names: Sequence[str], directions: Sequence[Any], max_vram_gib: float
) -> Any | None:
    """The feasible Pareto trial with the lowest val_ppl whose peak_vram_gib <= max_vram_gib (None if none)."""
    candidates = []
    for t in pareto_front(trials, directions):
        ppl = metric_value(t, "val_ppl", metric_names)
        vram = metric_value(t, "peak_vram_gib", metric_names)
        if ppl is not None and vram is not None and vram <= max_vram_gib:
            candidates.append((ppl, vram, t.number, t))
    return min(candidates, key=lambda c: c[:3])[3] if candidates else None


WORKER_STATES = ("alive", "stale", "stopped")


def workers_seen(
    trials: Sequence[Any],
    *,
    now: _dt.datetime,
    heartbeat_age_s: Mapping[int, float] | None = None,
    alive_within_s: float = 120.0,
    exits: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per worker (its trials' `worker` user attr, or an exit record): trials, RUNNING trial(s) with their
    stored progress, seconds since last seen, and its state:

    - `stopped`: it recorded a clean exit (`exits`: worker -> {"reason", "at"}, tuner.storage.workers) after its
      last trial started, and runs nothing;
    - `alive`: seen within `alive_within_s` s: a RUNNING trial's heartbeat (`heartbeat_age_s`: trial_id -> s since
      the trial's last heartbeat) or start, or a trial it finished;
    - `stale`: neither (killed or lost without an exit record, or waiting on the other workers' trials that long).
    `alive` (bool) is kept for older readers: state == "alive"."""
    heartbeat_age_s = heartbeat_age_s or {}
    exits = exits or {}
    rows: dict[str, dict[str, Any]] = {}

    def row_for(worker: str) -> dict[str, Any]:
        return rows.setdefault(
            worker,
            {"worker": worker, "trials": 0, "running": [], "progress": {}, "last_seen_s": None, "last_start": None},
        )

    for t in trials:
        worker = t.user_attrs.get("worker")
        if not worker:
            continue
        row = row_for(str(worker))
        row["trials"] += 1
        ages = []
        for stamp in (t.datetime_start, t.datetime_complete):
            if stamp is not None:
                ages.append(max(0.0, (now - stamp).total_seconds()))
        if t.datetime_start is not None and (row["last_start"] is None or t.datetime_start > row["last_start"]):
            row["last_start"] = t.datetime_start
        if t.state.name == "RUNNING":
            row["running"].append(t.number)
            progress = t.system_attrs.get(PROGRESS_ATTR)
            if isinstance(progress, dict):
                row["progress"][t.number] = {k: progress.get(k) for k in ("step", "tokens", "loss")}
            if trial_id(t) in heartbeat_age_s:
                ages = [max(0.0, float(heartbeat_age_s[trial_id(t)]))]  # the heartbeat says more than the start
        if ages:
            age = min(ages)
            row["last_seen_s"] = age if row["last_seen_s"] is None else min(row["last_seen_s"], age)
    for worker in exits:
        row_for(str(worker))
    for row in rows.values():
        last_start = row.pop("last_start")
        exit_ = exits.get(row["worker"])
        if exit_ is not None:
            row["exit"] = {"reason": exit_.get("reason"), "at": str(exit_.get("at"))}
        seen = row["last_seen_s"] is not None and row["last_seen_s"] <= alive_within_s
        exited = exit_ is not None and (last_start is None or exit_["at"] >= last_start)
        row["state"] = "stopped" if exited and not (row["running"] and seen) else "alive" if seen else "stale"
        row["alive"] = row["state"] == "alive"
    return sorted(rows.values(), key=lambda r: r["worker"])


def status_summary(
    trials: Sequence[Any],
    metric_names: Sequence[str],
    directions: Sequence[Any],
    *,
    vocab_size: int | None = None,
    ceiling_gib: float | None = None,
    now: _dt.datetime | None = None,
    heartbeat_age_s: Mapping[int, float] | None = None,
    alive_within_s: float = 120.0,
    exits: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Trials by state and end_reason, workers, best feasible value per objective, Pareto size, hypervolume."""
    now = now or _dt.datetime.now()
    by_state = Counter(t.state.name for t in trials)
    by_reason = Counter(
        str(t.user_attrs.get("end_reason", "unrecorded")) for t in trials if t.state.name not in ("RUNNING", "WAITING")
    )
    feasible = feasible_complete(trials)
    best: dict[str, Any] = {}
    for i, (metric, d) in enumerate(zip(metric_names, directions)):
        if feasible:
            pick = min(feasible, key=lambda t: (_sign(d) * t.values[i], t.number))
            best[metric] = {"trial": pick.number, "value": float(pick.values[i])}
        else:
            best[metric] = None
    front = pareto_front(trials, directions)
    ref = reference_point(metric_names, directions, vocab_size=vocab_size, ceiling_gib=ceiling_gib, trials=trials)
    infeasible = sum(1 for t in trials if t.state.name == "COMPLETE" and not is_feasible(t) and not is_reference(t))
    return {
        "n_trials": len(trials),
        "by_state": dict(sorted(by_state.items())),
        "by_end_reason": dict(sorted(by_reason.items())),
        "feasible": len(feasible),
        "infeasible": infeasible,
        "workers": workers_seen(
            trials, now=now, heartbeat_age_s=heartbeat_age_s, alive_within_s=alive_within_s, exits=exits
        ),
        "best_feasible": best,
        "pareto_size": len(front),
        "hypervolume": hypervolume(front, directions, ref),
        "reference_point": ref,
    }


def trial_row(trial: Any, metric_names: Sequence[str]) -> dict[str, Any]:
    """A JSON-ready description of one trial (for `pareto --json` and reports)."""
    return {
        "number": trial.number,
        "values": dict(zip(metric_names, (float(v) for v in trial.values))) if trial.values is not None else None,
        "params": dict(trial.params),
        "constraint_gib": constraint_value(trial),
        "end_reason": trial.user_attrs.get("end_reason"),
        "device": trial.user_attrs.get("device"),
        "reference": trial.user_attrs.get("reference"),
    }
