"""The constraint form we write is read as infeasible by Optuna 5's TPE, NSGA-II and GP code and by the dashboard,
and the samplers learn from it (fewer over-ceiling trials later in a study)."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
from optuna.samplers._gp.sampler import _get_constraint_vals_and_feasibility
from optuna.samplers._tpe.sampler import _get_infeasible_trial_score
from optuna.samplers.nsgaii._constraints_evaluation import _constrained_dominates
from optuna.study._constrained_optimization import _get_feasible_trials
from optuna_dashboard._serializer import serialize_frozen_trial

from tuner.storage.constraints import (
    CONSTRAINTS_ATTR,
    constraint_value,
    is_feasible,
    set_trial_constraint,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study_with(values_and_constraints):
    study = optuna.create_study(directions=["minimize", "minimize"])
    for values, c in values_and_constraints:
        t = study.ask()
        t.suggest_float("x", 0, 1)
        if c is not None:
            set_trial_constraint(t, c)
        study.tell(t, values)
    return study


def test_written_form_is_the_list_both_read():
    study = _study_with([((10.0, 2.0), -1.5), ((5.0, 9.0), 1.25)])
    ok, over = study.get_trials()
    assert ok.system_attrs[CONSTRAINTS_ATTR] == [-1.5] and over.system_attrs[CONSTRAINTS_ATTR] == [1.25]
    # Optuna's reader: one constraint, key "0"
    assert ok.constraints == {"0": -1.5} and over.constraints == {"0": 1.25}
    assert (constraint_value(ok), constraint_value(over)) == (-1.5, 1.25)
    assert is_feasible(ok) and not is_feasible(over)
    # optuna-dashboard 0.21's serializer reports the same list
    assert serialize_frozen_trial(study._study_id, over, {})["constraints"] == [1.25]


def test_optuna_treats_it_as_infeasible_in_every_sampler_path():
    study = _study_with([((10.0, 2.0), -1.5), ((5.0, 9.0), 1.25), ((4.0, 1.0), 0.5)])
    ok, over, over2 = study.get_trials()
    assert _get_feasible_trials(study.get_trials()) == [ok]  # the shared helper
    assert _get_infeasible_trial_score(ok) == 0 and _get_infeasible_trial_score(over) == 1.25  # TPE
    dirs = study.directions
    assert _constrained_dominates(ok, over2, dirs) and not _constrained_dominates(over2, ok, dirs)  # NSGA-II
    assert _constrained_dominates(over2, over, dirs)  # the smaller violation ranks first
    _, feasible = _get_constraint_vals_and_feasibility(study, study.get_trials())  # GP
    assert feasible.tolist() == [True, False, False]
    # the public API: the Pareto front leaves out the infeasible (4, 1) although it dominates (10, 2)
    assert [t.number for t in study.best_trials] == [0]


def test_reading_emits_no_warning():
    study = _study_with([((1.0, 1.0), 0.5)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert study.get_trials()[0].constraints == {"0": 0.5}


def test_frozen_trial_before_add_trial():
    study = optuna.create_study(directions=["minimize", "minimize"])
    ft = optuna.trial.create_trial(
        values=[1.0, 2.0], params={"x": 0.5}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)}
    )
    set_trial_constraint(ft, 3.0)
    study.add_trial(ft)
    stored = study.get_trials()[0]
    assert stored.constraints == {"0": 3.0} and not is_feasible(stored)


def test_rejects_nan_and_second_write():
    study = optuna.create_study()
    t = study.ask()
    with pytest.raises(ValueError, match="NaN"):
        set_trial_constraint(t, math.nan)
    set_trial_constraint(t, 1.0)
    with pytest.raises(ValueError, match="already set"):
        set_trial_constraint(t, -1.0)


def test_no_constraint_counts_as_feasible_like_optuna():
    study = _study_with([((1.0, 1.0), None)])
    t = study.get_trials()[0]
    assert constraint_value(t) is None and is_feasible(t) and _get_feasible_trials([t]) == [t]


def _over_ceiling_shares(sampler: str, constrained: bool, n: int = 60) -> tuple[float, float]:
    """Toy study: x in [0, 1], 'peak' = 10 x GiB against a 5 GiB ceiling (half the space over it), quality better
    with larger x. Returns the share of over-ceiling trials in the first and the second half."""
    s = (
        optuna.samplers.TPESampler(seed=0, n_startup_trials=10, multivariate=True, constant_liar=True)
        if sampler == "tpe"
        else optuna.samplers.NSGAIISampler(seed=0, population_size=10)
    )
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=s)
    over = []
    for _ in range(n):
        t = study.ask()
        x = t.suggest_float("x", 0.0, 1.0)
        y = t.suggest_float("y", 0.0, 1.0)
        peak = 10.0 * x
        if constrained:
            set_trial_constraint(t, peak - 5.0)
        over.append(peak > 5.0)
        study.tell(t, (2.0 - x + 0.1 * y, peak))
    return sum(over[: n // 2]) / (n // 2), sum(over[n // 2 :]) / (n // 2)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_sampler_learns_the_ceiling(sampler):
    """Seeded, so deterministic: with the constraint the second half goes over the ceiling less than in the first
    half, and less than half as often as the same sampler without it (which the ceiling does not steer)."""
    first, second = _over_ceiling_shares(sampler, constrained=True)
    _, second_blind = _over_ceiling_shares(sampler, constrained=False)
    assert second < first, (first, second)
    assert second < second_blind / 2, (second, second_blind)


def test_heartbeat_retry_may_replace_the_inherited_constraint():
    """RetryHeartbeatStaleTrialCallback copies the failed trial's system attrs (its constraint too) into the retry;
    the retry's own measurement must replace that value, while a second write on an ordinary trial still fails."""
    study = optuna.create_study(directions=["minimize", "minimize"])
    retry = study.ask()
    study._storage.set_trial_system_attr(retry._trial_id, CONSTRAINTS_ATTR, [5.0])  # as copied by the callback
    study._storage.set_trial_system_attr(retry._trial_id, "failed_trial", 0)
    set_trial_constraint(retry, -1.5)
    assert study._storage.get_trial_system_attrs(retry._trial_id)[CONSTRAINTS_ATTR] == [-1.5]

    plain = study.ask()
    set_trial_constraint(plain, 0.5)
    with pytest.raises(ValueError, match="already set"):
        set_trial_constraint(plain, 0.25)
