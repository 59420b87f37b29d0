"""The reference (baseline) trial beside the Phase 1 trials, on trials made with Optuna's own API: it never joins the
front, the hypervolume, the best values or the export (even where it would dominate), and its summary gives the best
feasible Phase 1 trial's ratios to it."""

from __future__ import annotations

import optuna
import pytest

from tests.tuner.analysis.test_pareto import NAMES, add, mo_study
from tuner.analysis.pareto import export_choice, pareto_front, status_summary
from tuner.analysis.reference import describe_reference, reference_summary

DIRS = ["minimize", "minimize"]


def _study_with_dominating_reference():
    study = mo_study()
    add(study, [40.0, 4.0], constraint=-4.0)  # 0: Phase 1, on the front
    add(study, [60.0, 2.0], constraint=-6.0)  # 1: Phase 1, on the front
    add(study, [90.0, 9.0], constraint=1.0)  # 2: Phase 1, over the ceiling
    add(study, [20.0, 1.0], constraint=-7.0, reference="dense")  # 3: the reference dominates every Phase 1 trial
    return study


def test_a_dominating_reference_is_never_on_the_front_nor_exported():
    trials = _study_with_dominating_reference().get_trials()
    assert [t.number for t in pareto_front(trials, DIRS)] == [0, 1]
    assert export_choice(trials, NAMES, DIRS, max_vram_gib=8.0).number == 0
    assert export_choice(trials, NAMES, DIRS, max_vram_gib=1.5) is None  # only the reference fits 1.5 GiB


def test_status_counts_and_hypervolume_are_phase1_only():
    trials = _study_with_dominating_reference().get_trials()
    s = status_summary(trials, NAMES, DIRS, vocab_size=100, ceiling_gib=8.0)
    assert s["feasible"] == 2 and s["infeasible"] == 1 and s["pareto_size"] == 2
    assert s["best_feasible"]["val_ppl"] == {"trial": 0, "value": 40.0}
    # rectangles against (100, 8): trial 0 gives 60*4, trial 1 adds 20*(6-4); the reference's 80*7 is not in it
    assert s["hypervolume"] == pytest.approx(60 * 4 + 40 * 2)


def test_summary_gives_the_best_feasible_phase1_ratios_to_the_reference():
    s = reference_summary(_study_with_dominating_reference().get_trials(), NAMES)
    assert s is not None
    got = (s["reference"], s["trial"], s["val_ppl"], s["peak_vram_gib"], s["feasible"])
    assert got == ("dense", 3, 20.0, 1.0, True)
    best = s["best_phase1"]
    assert (best["trial"], best["ppl_ratio"], best["gib_ratio"]) == (0, 2.0, 4.0)
    text = "\n".join(describe_reference(s))
    assert "reference: dense (trial 3" in text and "2x the reference's" in text and "4x the reference's" in text


def test_no_reference_no_summary_and_an_unfinished_one_says_so():
    study = mo_study()
    add(study, [40.0, 4.0], constraint=-4.0)
    assert reference_summary(study.get_trials(), NAMES) is None and describe_reference(None) == []
    add(study, None, state=optuna.trial.TrialState.RUNNING, reference="dense")
    s = reference_summary(study.get_trials(), NAMES)
    assert s is not None and s["val_ppl"] is None and s["best_phase1"]["ppl_ratio"] is None
    assert "running, no measurement yet" in describe_reference(s)[0]


def test_an_infeasible_reference_is_shown_as_over_the_ceiling():
    study = mo_study()
    add(study, [40.0, 4.0], constraint=-4.0)
    add(study, [30.0, 9.0], constraint=1.0, reference="dense", end_reason="complete")
    s = reference_summary(study.get_trials(), NAMES)
    assert s is not None and not s["feasible"] and s["best_phase1"]["gib_ratio"] == pytest.approx(4.0 / 9.0)
    assert "over the ceiling" in describe_reference(s)[0]
