"""The objective (tuner.trial.objective) on real Optuna studies (in-memory storage): predicted_over_ceiling is
decided by the real estimator before any training (the runner must not be asked to run). How each trial end is
recorded: test_recording.py; the shared budget: test_budget.py; the runner itself runs for real in
tests/integration/."""

from __future__ import annotations

import optuna
import pytest

from tests.tuner.tiny import TRIAL_VOCAB, trial_spec
from tuner.storage.constraints import constraint_value
from tuner.trial.objective import Objective
from tuner.trial.recording import TrialFailed, params_total

TrialState = optuna.trial.TrialState
optuna.logging.set_verbosity(optuna.logging.ERROR)


class _NoRunRunner:
    """A runner already started on CPU that must never be asked to train (the estimate decides first)."""

    gpu = None
    device = "cpu"
    device_name = "cpu (test)"

    def ensure_started(self):
        pass

    def run(self, *a, **k):
        raise AssertionError("predicted_over_ceiling must not spend training time")


def test_predicted_over_ceiling_uses_the_real_estimate_and_never_trains():
    from tuner.vram.estimate.predict import estimate

    spec = trial_spec(estimate=True, ceiling=1e-4)  # far below any model's tensor bytes
    study = optuna.create_study(directions=spec.directions)
    study.optimize(Objective(spec, _NoRunRunner()), n_trials=1, catch=(TrialFailed,))
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE and t.user_attrs["end_reason"] == "predicted_over_ceiling", t.user_attrs
    predicted = estimate(spec.build_config(t.params), device="cpu").total_gib
    assert t.user_attrs["predicted_peak_gib"] == pytest.approx(predicted)
    assert t.values == [float(TRIAL_VOCAB), pytest.approx(predicted)] and constraint_value(t) > 0
    assert t.user_attrs["params_total"] == params_total(t.user_attrs["param_counts"]) > 0
