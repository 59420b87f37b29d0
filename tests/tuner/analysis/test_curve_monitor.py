"""tuner.analysis.curve_monitor: the learning-curve monitor inside a trial. It records every evaluation, predicts
the final PPL, and stops a trial (LearningCurvePrune) only after min_fraction of the budget and only when even the
optimistic bound cannot enter the Pareto front at the trial's VRAM; with enough completed curves it predicts from
their late exponents instead of the trial's own fit."""

from __future__ import annotations

import math
import pickle

import pytest

from tests.tuner.analysis.curves import Info, Settings
from tests.tuner.analysis.curves import bent_curve as _bent_curve
from tests.tuner.analysis.curves import power_law as _curve
from tuner.analysis.curve import eval_points
from tuner.analysis.curve_monitor import LearningCurveMonitor, LearningCurvePrune

BUDGET = 1_000_000


def _run(monitor, alpha, c, noise=0.01, seed=0):
    """Feed the monitor the schedule's points from a power law; returns how many evaluations it accepted."""
    ppl = _curve(monitor.eval_points, alpha, c, noise, seed)
    for k, (t, p) in enumerate(zip(monitor.eval_points, ppl)):
        monitor.on_eval(Info(t, math.log(p), float(p), 40.0 + k))
    return len(monitor.points)


def _front_at(ppl_at_budget):
    return [(ppl_at_budget, 1.0), (ppl_at_budget * 0.8, 2.0)]


def test_monitor_prunes_a_hopeless_curve_only_after_min_fraction():
    # the front already holds PPL 100 at 1 GiB; this trial heads for ~ e^(9 - 0.45 ln 1e6) = 16e... -> set c so final
    # ~ 300: clearly hopeless at the same VRAM.
    c = math.log(300.0) + 0.45 * math.log(BUDGET)
    mon = LearningCurveMonitor(Settings(min_fraction=0.25), BUDGET, _front_at(100.0), lambda: 1.5)
    with pytest.raises(LearningCurvePrune) as exc:
        _run(mon, -0.45, c)
    last = mon.points[-1]["tokens"]
    assert last >= 0.25 * BUDGET  # never before min_fraction
    assert all(p["tokens"] < 0.25 * BUDGET for p in mon.points[:-1])  # and at the first point allowed
    err = exc.value
    assert err.prediction.optimistic_ppl > 100.0 and err.peak_vram_gib == 1.5
    assert err.prediction.mean_ppl == pytest.approx(300.0, rel=0.1)
    assert "cannot enter the Pareto front" in str(err)
    again = pickle.loads(pickle.dumps(err))  # crosses the child -> worker boundary
    assert isinstance(again, LearningCurvePrune) and again.prediction == err.prediction
    a = mon.attrs()
    assert a["curve_prediction"]["mean_ppl"] == pytest.approx(err.prediction.mean_ppl)
    assert a["curve_alpha"] == pytest.approx(-0.45, abs=0.1)


def test_monitor_lets_a_promising_curve_run_and_scores_its_prediction():
    c = math.log(90.0) + 0.45 * math.log(BUDGET)  # heads below the front's best PPL (100)
    mon = LearningCurveMonitor(Settings(min_fraction=0.25), BUDGET, _front_at(100.0), lambda: 1.5)
    assert _run(mon, -0.45, c) == len(mon.eval_points)
    err = mon.final_error(90.0)
    assert err is not None and err < 0.05
    a = mon.attrs()
    assert len(a["curve"]) == len(mon.eval_points) and a["curve"][0]["repr_effective_rank"] == 40.0
    assert a["curve_final_pred_error"] == err and all("error" in p for p in a["curve_predictions"])
    assert a["curve_r2"] > 0.99


def test_monitor_spares_a_curve_whose_vram_undercuts_the_front():
    c = math.log(300.0) + 0.45 * math.log(BUDGET)  # poor PPL, but at 0.5 GiB nothing on the front is as lean
    mon = LearningCurveMonitor(Settings(), BUDGET, _front_at(100.0), lambda: 0.5)
    assert _run(mon, -0.45, c) == len(mon.eval_points)


def test_monitor_never_prunes_before_min_fraction_even_when_hopeless():
    c = math.log(1000.0) + 0.45 * math.log(BUDGET)
    mon = LearningCurveMonitor(Settings(min_fraction=0.9), BUDGET, _front_at(100.0), lambda: 1.5)
    assert all(t < 0.9 * BUDGET or t == BUDGET for t in mon.eval_points)  # no decision point in [0.9, 1)
    assert _run(mon, -0.45, c) == len(mon.eval_points)  # hopeless, yet never stopped
    assert mon.attrs()["curve_prediction"]["optimistic_ppl"] > 100.0  # the bound alone would have pruned it


def test_monitor_disabled_records_but_never_prunes():
    c = math.log(1000.0) + 0.45 * math.log(BUDGET)
    mon = LearningCurveMonitor(Settings(enabled=False), BUDGET, _front_at(100.0), lambda: 1.5)
    assert _run(mon, -0.45, c) == len(mon.eval_points)
    assert mon.attrs()["curve_prediction"]["mean_ppl"] > 500


def test_monitor_reads_a_callable_front_at_decision_time():
    c = math.log(300.0) + 0.45 * math.log(BUDGET)
    front: list[tuple[float, float]] = []
    mon = LearningCurveMonitor(Settings(), BUDGET, lambda: front, lambda: 1.5)
    pts = mon.eval_points
    ppl = _curve(pts, -0.45, c, 0.01)
    for t, p in zip(pts[:4], ppl[:4]):
        mon.on_eval(Info(t, math.log(p), float(p)))  # empty front: nothing to beat
    front.append((50.0, 1.0))  # another worker finished a strong trial meanwhile
    with pytest.raises(LearningCurvePrune):
        mon.on_eval(Info(pts[4], math.log(ppl[4]), float(ppl[4])))


def test_monitor_rejects_settings_without_the_fields():
    with pytest.raises(TypeError, match="enabled"):
        LearningCurveMonitor(object(), BUDGET, [], lambda: 1.0)


def test_monitor_switches_to_references_once_enough_completed_curves_exist():
    pts = eval_points(BUDGET, 6, 1 / 16)
    refs = [_bent_curve(pts, s, alpha_late=a) for s, a in ((500, -0.22), (450, -0.25), (550, -0.28))]
    trial = _bent_curve(pts, 900, alpha_late=-0.25)  # much worse than the references
    front = [(r[-1]["val_ppl"], 1.0) for r in refs]
    few = LearningCurveMonitor(Settings(), BUDGET, front, lambda: 1.5, reference_curves=refs[:2])
    many = LearningCurveMonitor(Settings(), BUDGET, front, lambda: 1.5, reference_curves=refs)
    for mon in (few, many):
        try:
            for p in trial:
                mon.on_eval(Info(p["tokens"], math.log(p["val_ppl"]), p["val_ppl"]))
        except LearningCurvePrune:
            pass
    assert {p["method"] for p in few.predictions} == {"power_law"}
    assert {p["method"] for p in many.predictions} == {"late_alpha"}
    assert many.predictions[0]["n_references"] == 3
    assert many.points[-1]["tokens"] < BUDGET  # pruned: even its optimistic bound is behind every reference


@pytest.mark.parametrize(
    "settings, message",
    [(Settings(confidence=1.0), "confidence=1.0 must be in"), (Settings(min_fraction=1.0), "min_fraction=1.0 must be")],
)
def test_monitor_rejects_out_of_range_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        LearningCurveMonitor(settings, BUDGET, [], lambda: 1.0)


def test_monitor_fits_only_usable_points_and_records_the_rest():
    mon = LearningCurveMonitor(Settings(), BUDGET, [], lambda: 1.0)
    mon.on_eval(Info(1000, math.nan, math.nan, float("inf")))  # a diverged evaluation: kept, not fitted
    mon.on_eval(Info(2000, math.log(500.0), 500.0))
    assert mon.fit is None and mon.final_error(400.0) is None  # one usable point: no fit, nothing to score
    assert mon.points[0]["repr_effective_rank"] is None and math.isnan(mon.points[0]["val_ppl"])
    mon.on_eval(Info(4000, math.log(400.0), 400.0))
    assert mon.fit is not None and mon.fit.n == 2 and len(mon.predictions) == 1
    mon.on_eval(Info(BUDGET, math.log(300.0), 300.0))  # at the budget: recorded, never refitted
    assert len(mon.points) == 4 and len(mon.predictions) == 1
    a = mon.attrs()
    assert a["curve_budget_tokens"] == BUDGET and a["curve_alpha"] == pytest.approx(math.log(0.8) / math.log(2))
