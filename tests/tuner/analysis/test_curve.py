"""tuner.analysis.curve: power-law fit, prediction interval, Pareto entry test, the rank predictor and late exponents
from completed curves. The pruning monitor that uses them: test_curve_monitor.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.tuner.analysis.curves import bent_curve as _bent_curve
from tests.tuner.analysis.curves import power_law as _curve
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


BUDGET = 1_000_000


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


def test_predict_late_alpha_rejects_too_few_references():
    with pytest.raises(ValueError, match="at least 2"):
        predict_late_alpha(1000, 300.0, 4000, [-0.3])


def test_predictions_past_the_float_range_are_unbounded_not_an_overflow():
    # A diverging trial (PPL ~ 5e4) checked early against references whose late exponents disagree wildly: the
    # interval's upper bound is e^(>709). It was an OverflowError that failed a trial on the H100; it is +inf.
    late = predict_late_alpha(1_000, 5.0e4, 1e12, [-50.0, 60.0], 0.99)
    assert late.pessimistic_ppl == math.inf
    assert 0.0 <= late.optimistic_ppl < late.pessimistic_ppl
    fit = fit_power_law([1e3, 2e3, 4e3, 8e3], [1e3, 1e4, 2e2, 5e5])
    far = predict(fit, 1e300, 0.99)
    assert far.pessimistic_ppl == math.inf
