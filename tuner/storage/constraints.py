"""The VRAM constraint of a trial (peak_vram_gib - vram_ceiling_gib, feasible when <= 0), written once, in the one
form that both Optuna 5's samplers and optuna-dashboard 0.21 read.

Why this form (read in the installed sources, optuna 5.0.0 and optuna-dashboard 0.21.0):
- Optuna 5 reads constraints through `FrozenTrial.constraints` -> `_get_constraints_from_system_attrs`
  (optuna/study/_constrained_optimization.py:38-55), which accepts two forms: the list under the system attr
  `constraints` (read as keys "0", "1", ...) and the newer one-attr-per-key `constraints:<key>` that
  `Trial.set_constraint` writes (optuna/trial/_trial.py:748-775). Optuna 5 itself still writes the list form on its
  `constraints_func` path (optuna/samplers/_base.py:240-266, `set_trial_system_attr(..., _CONSTRAINTS_KEY, tuple)`).
- TPE (samplers/_tpe/sampler.py:858, `_get_infeasible_trial_score`), NSGA-II (samplers/nsgaii/
  _constraints_evaluation.py:31-57 via `_is_constrained_optimization`) and GP (samplers/_gp/sampler.py:626-638,
  `_get_constraint_vals_and_feasibility`) all read `trial.constraints`, so either form reaches them.
- optuna-dashboard 0.21 reads ONLY the list: `trial_system_attrs.get("constraints", [])`
  (optuna_dashboard/_serializer.py:245); its UI marks a trial infeasible when a value is > 0.
Writing `set_constraint(key)` as well would give Optuna two constraints of equal value ({"0": v, key: v}): TPE
would count the violation twice and GP would fit two identical constraint models (feasibility probability p^2);
writing `set_constraint("0")` beside the list makes Optuna warn "Overwrite an old format constraint" on every read.
So we write the list `[value]` alone: one value, read identically by all three samplers and by the dashboard.
GP also requires every completed trial to carry the same number of constraints (sampler.py:630-631): the objective
must set one on every COMPLETE trial.
"""

from __future__ import annotations

import math
from typing import Any

from tuner.storage._optuna_compat import trial_id

CONSTRAINTS_ATTR = "constraints"  # == optuna.study._constrained_optimization._CONSTRAINTS_KEY == dashboard's key


def set_trial_constraint(trial: Any, value_gib: float) -> None:
    """Record the VRAM constraint (peak_vram_gib - vram_ceiling_gib, in GiB; feasible when <= 0) on a trial.

    `trial`: a running `optuna.Trial` (written to storage now, before `tell`), a tuner.storage.trial_writes.TrialWrites
    (written with its next flush) or a `FrozenTrial` about to be passed to `study.add_trial`. Raises ValueError for
    NaN (Optuna forbids it) and if already set.
    """
    from optuna.trial import FrozenTrial

    from tuner.storage.trial_writes import TrialWrites

    value = float(value_gib)
    if math.isnan(value):
        raise ValueError("constraint value is NaN; record a measured peak or an explicit over-ceiling value")
    if isinstance(trial, FrozenTrial):
        attrs = trial.system_attrs
        if CONSTRAINTS_ATTR in attrs:
            raise ValueError(f"trial {trial.number}: constraint already set to {attrs[CONSTRAINTS_ATTR]}")
        trial.system_attrs = {**attrs, CONSTRAINTS_ATTR: [value]}
        return
    buffered = isinstance(trial, TrialWrites)
    system_attrs = trial.system_attrs if buffered else trial.storage.get_trial_system_attrs(trial_id(trial))
    # A heartbeat retry copies every system attr of the failed trial, its constraint included; that value was
    # the failed attempt's, so the retry's own measurement replaces it. Anything else set twice is a bug.
    if CONSTRAINTS_ATTR in system_attrs and "failed_trial" not in system_attrs:
        raise ValueError(f"trial {trial.number}: constraint already set")
    if buffered:
        trial.set_system_attr(CONSTRAINTS_ATTR, [value])
    else:
        trial.storage.set_trial_system_attr(trial_id(trial), CONSTRAINTS_ATTR, [value])


def constraint_value(trial: Any) -> float | None:
    """The trial's VRAM constraint in GiB (> 0: over the ceiling), or None when none was recorded.

    Reads Optuna's own view (`trial.constraints`), so a constraint written by `set_constraint` also counts;
    several constraints are summed over their violations the way TPE and NSGA-II rank infeasibility.
    """
    values = list(trial.constraints.values())
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    positive = [v for v in values if v > 0]
    return float(sum(positive)) if positive else float(max(values))


def is_feasible(trial: Any) -> bool:
    """True when every recorded constraint is <= 0; a trial without one counts as feasible, exactly as Optuna's
    `_get_feasible_trials` and `Study.best_trials` decide (study/_constrained_optimization.py:23-35)."""
    return all(v <= 0.0 for v in trial.constraints.values())
