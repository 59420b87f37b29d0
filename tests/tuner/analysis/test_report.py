"""tuner.analysis.report: learning-curve PNG from real optuna trials in a sqlite study."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from tests.tuner.analysis.curves import Info, Settings
from tuner.analysis.curve_monitor import LearningCurveMonitor, LearningCurvePrune
from tuner.analysis.report import pareto_numbers_min, write_learning_curves

BUDGET = 200_000


@pytest.fixture
def study(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.create_study(storage=f"sqlite:///{tmp_path / 'curves.db'}", directions=["minimize", "minimize"])
    rng = np.random.default_rng(0)
    front: list[tuple[float, float]] = []
    for _k, (final_ppl, vram) in enumerate([(120, 1.0), (90, 2.0), (400, 2.5), (80, 3.0), (500, 3.0), (150, 0.9)]):
        trial = s.ask()
        mon = LearningCurveMonitor(Settings(), BUDGET, front, lambda v=vram: v)
        c = math.log(final_ppl) + 0.45 * math.log(BUDGET)
        try:
            for t in mon.eval_points:
                ppl = float(math.exp(-0.45 * math.log(t) + c + rng.normal(0, 0.01)))
                mon.on_eval(Info(t, math.log(ppl), ppl, 30.0))
        except LearningCurvePrune:
            for key, v in mon.attrs().items():
                trial.set_user_attr(key, v)
            trial.set_user_attr("end_reason", "learning_curve")
            s.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        mon.final_error(final_ppl)
        for key, v in mon.attrs().items():
            trial.set_user_attr(key, v)
        trial.set_user_attr("end_reason", "complete")
        s.tell(trial, [final_ppl, vram])
        front.append((final_ppl, vram))
    s.tell(s.ask(), state=optuna.trial.TrialState.FAIL)  # a trial without a curve must not break the plot
    return s


def test_writes_png_with_pareto_and_pruned_trials(study, tmp_path):
    trials = study.get_trials(deepcopy=False)
    reasons = [t.user_attrs.get("end_reason") for t in trials]
    assert reasons.count("learning_curve") == 2  # (400, 2.5) and (500, 3.0) were hopeless against the front
    path = write_learning_curves(trials, tmp_path / "report", pareto_numbers={t.number for t in study.best_trials})
    assert path is not None and path.exists() and path.suffix == ".png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000  # a real figure, not an empty canvas


def test_default_front_matches_optuna_best_trials(study):
    trials = study.get_trials(deepcopy=False)
    assert pareto_numbers_min(trials) == {t.number for t in study.best_trials}


def test_returns_none_without_curves(tmp_path):
    s = optuna.create_study(directions=["minimize", "minimize"])
    t = s.ask()
    s.tell(t, [1.0, 2.0])
    assert write_learning_curves(s.get_trials(), tmp_path) is None
    assert not list(tmp_path.iterdir())


def test_title_counts_every_pruned_trial(study):
    from tuner.analysis.report import curve_title

    s = optuna.create_study(directions=["minimize", "minimize"])
    for t in study.get_trials():
        s.add_trial(t)
    # pruned before its first evaluation (no curve to draw), and pruned for another reason
    for reason in ("learning_curve", "numerical_instability"):
        s.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={"end_reason": reason}))
    title = curve_title(s.get_trials(), 2, 2, 1)
    assert "4 pruned trials (3 by the learning curve, 2 drawn in red)" in title, title
    assert "2 pruned trials (2 by the learning curve, all drawn in red)" in curve_title(study.get_trials(), 2, 2, 1)
