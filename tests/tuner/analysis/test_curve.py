"""tuner.analysis.curve: power-law fit, prediction interval, Pareto entry test, and the pruning monitor."""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass

import numpy as np
import pytest

from tuner.analysis.curve import (
    can_enter_front,
    eval_points,
    fit_power_law,
    fit_rank_predictor,
    late_alphas,
    predict,
    predict_late_alpha,
    rank_predictor_error,
    t_quantile,
)
from tuner.analysis.curve_monitor import LearningCurveMonitor, LearningCurvePrune


@dataclass
class Settings:
    enabled: bool = True
    min_fraction: float = 0.25
    confidence: float = 0.9


@dataclass
class Info:
    tokens: int
    val_loss: float
    val_ppl: float
    repr_effective_rank: float | None = None


def _curve(tokens, alpha, c, noise, seed=0):
    rng = np.random.default_rng(seed)
    t = np.asarray(tokens, dtype=float)
    return np.exp(alpha * np.log(t) + c + rng.normal(0.0, noise, t.size))


# -- eval_points ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "budget,n,frac", [(1_000_000, 5, 1 / 8), (100_000, 6, 1 / 16), (64, 4, 1 / 8), (3_000_017, 9, 1 / 8)]
)
def test_eval_points_log_spaced_first_early_last_is_budget(budget, n, frac):
    pts = eval_points(budget, n, frac)
    assert len(pts) == n >= 4
    assert pts[0] <= budget / 8 and pts[0] <= budget * frac
    assert pts[-1] == budget
    assert all(b > a for a, b in zip(pts, pts[1:]))
    ratios = np.diff(np.log(pts))
    assert np.allclose(ratios, ratios.mean(), rtol=0.05)  # log-spaced (within integer rounding)


def test_eval_points_rejects_bad_requests():
    with pytest.raises(ValueError, match="at least 4"):
        eval_points(10_000, n=3)
    with pytest.raises(ValueError, match="1/8"):
        eval_points(10_000, n=5, first_fraction=0.25)
    with pytest.raises(ValueError, match="too small"):
        eval_points(10, n=8, first_fraction=1 / 8)


# -- Student t and the fit --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p,dof,expected",
    [
        (0.975, 1, 12.7062),
        (0.95, 1, 6.3138),
        (0.975, 2, 4.3027),
        (0.95, 10, 1.8125),
        (0.975, 30, 2.0423),
        (0.9, 5, 1.4759),
        (0.05, 4, -2.1318),
    ],
)
def test_t_quantile_matches_tables(p, dof, expected):
    assert t_quantile(p, dof) == pytest.approx(expected, abs=2e-4)


def test_fit_recovers_alpha_and_c_from_noisy_power_law():
    tokens = np.geomspace(5e4, 8e5, 12)
    ppl = _curve(tokens, -0.45, 9.0, noise=0.01, seed=1)
    fit = fit_power_law(tokens, ppl)
    assert fit.n == 12 and fit.dof == 10
    assert fit.alpha == pytest.approx(-0.45, abs=0.02)
    assert fit.c == pytest.approx(9.0, abs=0.25)
    assert fit.r2 > 0.99
    assert 0.004 < fit.sigma < 0.02  # estimates the injected noise (0.01 in log PPL)
    # the parameter covariance is honest: alpha within 4 standard errors of the truth
    assert abs(fit.alpha + 0.45) < 4 * math.sqrt(fit.cov[0][0])


def test_prediction_interval_formula_and_ordering():
    tokens = np.geomspace(1e4, 1e5, 6)
    fit = fit_power_law(tokens, _curve(tokens, -0.5, 8.0, 0.03, seed=2))
    pred = predict(fit, 4e5, confidence=0.8)
    x = np.log(tokens)
    x0 = math.log(4e5)
    se = fit.sigma * math.sqrt(1 + 1 / x.size + (x0 - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum())
    half = t_quantile(0.9, x.size - 2) * se
    mean_log = fit.alpha * x0 + fit.c
    assert pred.mean_ppl == pytest.approx(math.exp(mean_log))
    assert pred.optimistic_ppl == pytest.approx(math.exp(mean_log - half), rel=1e-9)
    assert pred.pessimistic_ppl == pytest.approx(math.exp(mean_log + half), rel=1e-9)
    assert pred.optimistic_ppl < pred.mean_ppl < pred.pessimistic_ppl
    wider = predict(fit, 4e5, confidence=0.99)
    assert wider.optimistic_ppl < pred.optimistic_ppl and wider.pessimistic_ppl > pred.pessimistic_ppl


def _width(pred):
    return math.log(pred.pessimistic_ppl / pred.optimistic_ppl)


def test_interval_widens_with_noise():
    tokens = np.geomspace(1e4, 2.5e5, 6)
    widths = [
        _width(predict(fit_power_law(tokens, _curve(tokens, -0.45, 9, s, seed=3)), 1e6)) for s in (0.005, 0.02, 0.08)
    ]
    assert widths[0] < widths[1] < widths[2]


def test_interval_shrinks_with_more_points():
    widths = []
    for n in (3, 5, 10, 40):
        tokens = np.geomspace(1e4, 2.5e5, n)
        # the same noise realisation family; average over seeds so one unlucky draw can't flip the order
        w = np.median(
            [_width(predict(fit_power_law(tokens, _curve(tokens, -0.45, 9, 0.03, seed=s)), 1e6)) for s in range(20)]
        )
        widths.append(w)
    assert widths[0] > widths[1] > widths[2] > widths[3]


def test_two_points_fit_exactly_but_bound_nothing():
    fit = fit_power_law([1e4, 1e5], [400.0, 150.0])
    assert fit.n == 2 and math.isnan(fit.sigma) and fit.r2 == 1.0
    pred = predict(fit, 1e6)
    assert pred.mean_ppl == pytest.approx(150.0 * (150.0 / 400.0))  # exact log-log extrapolation one decade on
    assert pred.optimistic_ppl == 0.0 and pred.pessimistic_ppl == math.inf


def test_three_points_give_a_wide_but_finite_interval():
    tokens3, tokens8 = [1e4, 3e4, 1e5], np.geomspace(1e4, 1e5, 8)
    w3, w8 = [], []
    for seed in range(20):
        p3 = predict(fit_power_law(tokens3, _curve(tokens3, -0.45, 9, 0.02, seed=seed)), 1e6)
        assert 0 < p3.optimistic_ppl < p3.mean_ppl < p3.pessimistic_ppl < math.inf
        w3.append(_width(p3))
        w8.append(_width(predict(fit_power_law(tokens8, _curve(tokens8, -0.45, 9, 0.02, seed=seed)), 1e6)))
    assert np.median(w3) > 2 * np.median(w8)  # dof = 1: t(0.95, 1) = 6.31 vs t(0.95, 6) = 1.94


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="distinct"):
        fit_power_law([1e4, 1e4, 1e4], [10.0, 9.0, 8.0])
    with pytest.raises(ValueError, match="finite"):
        fit_power_law([1e4, 2e4, 3e4], [10.0, 0.0, 8.0])


# -- Pareto entry -----------------------------------------------------------------------------------------------------


def test_can_enter_front_cases():
    front = [(100.0, 4.0), (150.0, 2.0), (300.0, 1.0)]
    assert can_enter_front(120.0, 10.0, []) is True  # empty front admits anything
    assert can_enter_front(90.0, 10.0, front) is True  # best PPL of all, at more VRAM
    assert can_enter_front(200.0, 1.5, front) is True  # between the knees: nothing uses <= 1.5 GiB with <= 200
    assert can_enter_front(120.0, 4.0, front) is False  # (100, 4) uses the same VRAM and beats it
    assert can_enter_front(100.0, 4.0, front) is False  # an equal point adds nothing
    assert can_enter_front(310.0, 1.0, front) is False
    assert can_enter_front(299.0, 1.0, front) is True
    assert can_enter_front(500.0, 0.5, front) is True  # less VRAM than any front point


# -- the monitor ------------------------------------------------------------------------------------------------------

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


# -- effective-rank predictor -----------------------------------------------------------------------------------------


def test_rank_predictor_recovers_a_log_linear_relation_and_scores_out_of_sample():
    rng = np.random.default_rng(5)
    ranks = rng.uniform(30, 90, 12)
    ppl = np.exp(6.5 - 0.02 * ranks + rng.normal(0, 0.02, 12))
    fit = fit_rank_predictor(ranks, ppl)
    assert fit.slope == pytest.approx(-0.02, abs=0.004) and fit.r2 > 0.9
    assert rank_predictor_error(ranks, ppl) < 0.05
    noisy = np.exp(6.5 - 0.02 * ranks + rng.normal(0, 0.3, 12))
    assert rank_predictor_error(ranks, noisy) > rank_predictor_error(ranks, ppl)


# -- late exponents from completed curves -----------------------------------------------------------------------------


def _bent_curve(tokens, scale, alpha_early=-0.6, alpha_late=-0.25, knee=200_000.0):
    """A log-log curve that flattens after `knee` (as within-run curves do): slope alpha_early, then alpha_late."""
    out = []
    for t in tokens:
        lp = math.log(scale) + alpha_early * math.log(min(t, knee) / 1000.0)
        if t > knee:
            lp += alpha_late * math.log(t / knee)
        out.append({"tokens": int(t), "val_ppl": math.exp(lp)})
    return out


def test_late_alphas_measure_the_remaining_segment_of_each_reference():
    pts = eval_points(BUDGET, 6, 1 / 16)
    refs = [_bent_curve(pts, s, knee=50_000.0, alpha_late=a) for s, a in ((500, -0.2), (400, -0.3), (600, -0.25))]
    alphas = late_alphas(refs, pts[3], BUDGET)  # pts[3] > knee: the remaining segment is pure alpha_late
    assert alphas == pytest.approx([-0.2, -0.3, -0.25], abs=1e-9)
    between = late_alphas(refs, (pts[3] + pts[4]) / 2, BUDGET)  # interpolated start point
    assert between == pytest.approx([-0.2, -0.3, -0.25], abs=1e-9)
    assert late_alphas([refs[0][:-1]], pts[3], BUDGET) == []  # a curve that stops short of the budget is no reference


def test_late_alpha_prediction_beats_the_own_fit_on_bending_curves():
    pts = eval_points(BUDGET, 6, 1 / 16)
    refs = [_bent_curve(pts, s, alpha_late=a) for s, a in ((500, -0.22), (450, -0.25), (550, -0.28), (480, -0.24))]
    trial = _bent_curve(pts, 520, alpha_late=-0.25)
    final = trial[-1]["val_ppl"]
    upto = [p for p in trial if p["tokens"] <= BUDGET / 4]
    own = predict(fit_power_law([p["tokens"] for p in upto], [p["val_ppl"] for p in upto]), BUDGET, 0.9)
    a = late_alphas(refs, upto[-1]["tokens"], BUDGET)
    late = predict_late_alpha(upto[-1]["tokens"], upto[-1]["val_ppl"], BUDGET, a, 0.9)
    assert late.method == "late_alpha" and own.method == "power_law"
    assert abs(late.mean_ppl - final) / final < 0.03 < abs(own.mean_ppl - final) / final  # the own fit is biased low
    assert late.optimistic_ppl < final < late.pessimistic_ppl
    wide = predict_late_alpha(upto[-1]["tokens"], upto[-1]["val_ppl"], BUDGET, [x * 1.5 for x in a] + a, 0.9)
    assert _width(wide) > _width(late)  # more spread between references -> wider interval


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


def test_predict_late_alpha_rejects_too_few_references():
    with pytest.raises(ValueError, match="at least 2"):
        predict_late_alpha(1000, 300.0, 4000, [-0.3])
