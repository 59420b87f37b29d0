"""What the objective sends the trial child about the learning curve (Objective._pruning_request), on a real in-memory
Optuna study: always a request (the curve is recorded on every trial, issue 7) whose `enabled` is the spec's switch;
the front from feasible complete trials; reference curves from complete trials of the same budget only. And the
spec refuses pruning on a budget too small for the log-spaced evaluation schedule."""

from __future__ import annotations

import optuna
import pytest

from tuner.errors import SpecError
from tuner.storage.constraints import set_trial_constraint
from tuner.study.loader import spec_from_dict
from tuner.trial.objective import Objective

optuna.logging.set_verbosity(optuna.logging.ERROR)
BUDGET = 2048


def _spec(enabled: bool, metrics=("val_ppl", "peak_vram_gib"), train_tokens=BUDGET):
    return spec_from_dict(
        {
            "name": "request_unit",
            "objectives": [{"metric": m, "direction": "minimize"} for m in metrics],
            "vram_ceiling_gib": 1.0,
            "model": {"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_seq": 64},
            "search_space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
            "data": {"source": "stdlib"},
            "budget": {"train_tokens": train_tokens, "eval_tokens": 512},
            "pruning": {"learning_curve": {"enabled": enabled, "min_fraction": 0.3, "confidence": 0.85}},
        },
        check_paths=False,
    )


def _curve(final_ppl, budget=BUDGET):
    return [{"tokens": budget // 4, "val_ppl": final_ppl * 1.5}, {"tokens": budget, "val_ppl": final_ppl}]


def _study_with_history(n_values=2):
    study = optuna.create_study(directions=["minimize"] * n_values)
    dist = {"learning_rate": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)}
    rows = [  # (values, end_reason, constraint, curve)
        ([100.0, 0.2][:n_values], "complete", -0.8, _curve(100.0)),  # feasible, reference
        ([90.0, 1.5][:n_values], "vram_ceiling", 0.5, _curve(90.0)),  # over the ceiling: neither
        ([120.0, 0.1][:n_values], "complete", -0.9, _curve(120.0, 4096)),  # another budget: front, not reference
    ]
    for values, reason, cons, curve in rows:
        t = optuna.trial.create_trial(
            values=values,
            params={"learning_rate": 3e-3},
            distributions=dist,
            user_attrs={"end_reason": reason, "curve": curve, "curve_budget_tokens": curve[-1]["tokens"]},
        )
        set_trial_constraint(t, cons)  # the form the samplers and tuner.storage.constraints read
        study.add_trial(t)
    return study


@pytest.mark.parametrize("enabled", [False, True])
def test_request_is_always_sent_with_front_and_same_budget_references(enabled):
    study = _study_with_history()
    trial = study.ask()
    req = Objective(_spec(enabled), runner=None)._pruning_request(trial, predicted=0.25)
    assert req.settings.enabled is enabled
    assert (req.settings.min_fraction, req.settings.confidence, req.proxy_peak_gib) == (0.3, 0.85, 0.25)
    assert sorted(req.front) == [(100.0, 0.2), (120.0, 0.1)]
    assert list(req.reference_curves) == [_curve(100.0)]


def test_without_both_objectives_the_curve_is_recorded_but_never_prunes():
    study = _study_with_history(n_values=1)
    req = Objective(_spec(True, metrics=("val_ppl",)), runner=None)._pruning_request(study.ask(), predicted=None)
    assert req.settings.enabled is False and list(req.front) == [] and list(req.reference_curves) == [_curve(100.0)]


def test_spec_refuses_pruning_on_a_budget_too_small_for_a_curve():
    with pytest.raises(SpecError, match="pruning.learning_curve.enabled: true with budget.train_tokens = 8"):
        _spec(True, train_tokens=8)
    assert _spec(False, train_tokens=8).budget.train_tokens == 8  # without pruning the trial just trains
