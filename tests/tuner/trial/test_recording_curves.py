"""A recorded learning curve becomes the trial's intermediate values (step = training tokens, value = val_ppl) in a
multi-objective study, where Optuna's own `Trial.report` refuses, so optuna-dashboard draws the curves."""

from __future__ import annotations

import optuna
import pytest

from tests.tuner.tiny import BASE
from tuner.study.loader import spec_from_dict
from tuner.trial.outcome import TrialOutcome
from tuner.trial.recording import record_outcome, report_curve

optuna.logging.set_verbosity(optuna.logging.WARNING)
CURVE = [{"tokens": 128, "val_ppl": 900.0}, {"tokens": 512, "val_ppl": 700.0}, {"tokens": 1000, "val_ppl": 650.0}]


@pytest.fixture
def spec():
    return spec_from_dict(BASE, check_paths=False)


def test_trial_report_is_refused_in_a_multi_objective_study(tmp_path):
    # Why report_curve writes through the storage: if Optuna starts allowing this, report_curve can use report.
    study = optuna.create_study(directions=["minimize", "minimize"], storage=f"sqlite:///{tmp_path}/s.db")
    with pytest.raises(NotImplementedError):
        study.ask().report(1.0, 1)


def test_complete_trial_stores_its_curve_as_intermediate_values(tmp_path, spec):
    study = optuna.create_study(directions=spec.directions, storage=f"sqlite:///{tmp_path}/s.db")
    trial = study.ask()
    config = spec.build_config(spec.space.suggest(trial))
    result = {"val_ppl": 650.0, "peak_torch_gib": 0.03, "tokens_per_s": 100.0, "val_loss": 6.4}
    outcome = TrialOutcome("complete", result=result, curve_attrs={"curve": CURVE})
    study.tell(trial, record_outcome(trial, spec, config, outcome, "cpu"))
    (frozen,) = study.get_trials()
    assert frozen.intermediate_values == {128: 900.0, 512: 700.0, 1000: 650.0}
    assert frozen.state.name == "COMPLETE"


def test_pruned_trial_keeps_its_curve_and_bad_points_are_skipped(tmp_path, spec):
    study = optuna.create_study(directions=spec.directions, storage=f"sqlite:///{tmp_path}/s.db")
    trial = study.ask()
    points = [*CURVE[:2], {"tokens": 64, "val_ppl": float("nan")}, {"tokens": -1, "val_ppl": 3.0}, {"x": 1}]
    assert report_curve(trial, points) == 2
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert study.get_trials()[0].intermediate_values == {128: 900.0, 512: 700.0}
