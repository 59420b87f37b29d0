"""The objective refines the device calibration from a completed GPU trial (issue 6), and only when the trial's
estimate was made from that device's calibration."""

from __future__ import annotations

import optuna
import pytest

from model.config import PRESETS
from tests.tuner.tiny import calibration
from tuner.trial.objective import Objective
from tuner.vram import calibration as cal
from tuner.vram.estimate.predict import estimate


def test_completed_gpu_trial_refines_the_stored_calibration(tmp_path):
    path = tmp_path / "calibration.json"
    c = calibration(device="TestGPU", context_gib=0.5)
    cal.save_calibration(c, path)
    objective = Objective(spec=None, runner=None, calibration_path=path)
    objective._estimate_of_trial = est = estimate(PRESETS["8gb"], calibration=c)
    assert est.calibrated and est.calibration_key == c.key
    trial = optuna.create_study().ask()
    torch_peak = est.tensor_gib * 1.02
    reserved = torch_peak + 0.3
    objective._refine_calibration(
        trial, {"peak_torch_gib": torch_peak, "peak_reserved_gib": reserved}, nvml_peak_gib=reserved + 0.8
    )
    stored = cal.load_calibration(path, c.key)
    assert stored.n_refined == 1
    assert stored.outside_residuals_gib == (pytest.approx(0.8),)
    assert trial.study.trials[0].user_attrs["calibration_refined"] is True


def test_uncalibrated_estimate_refines_nothing(tmp_path):
    path = tmp_path / "calibration.json"
    objective = Objective(spec=None, runner=None, calibration_path=path)
    choice = cal.choose_calibration(path, None)  # no entry: uncalibrated
    objective._estimate_of_trial = estimate(PRESETS["8gb"], choice.calibration, calibrated=choice.calibrated)
    trial = optuna.create_study().ask()
    objective._refine_calibration(trial, {"peak_torch_gib": 5.0, "peak_reserved_gib": 5.5}, nvml_peak_gib=6.3)
    assert not path.exists()
    assert "calibration_refined" not in trial.study.trials[0].user_attrs
