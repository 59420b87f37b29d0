"""tuner.analysis.plots on trials made with Optuna's own API: the Pareto figure is zoomed to the data, names the
ceiling, labels the front with trial numbers, draws infeasible trials in their own panel (never at their placeholder
PPL) and marks the reference; the memory figure puts the estimated parts beside the measured peak; the importance
figure has one panel per objective."""

from __future__ import annotations

import optuna
import pytest

from tuner.analysis import plots
from tuner.analysis.pareto import pareto_front
from tuner.storage.constraints import set_trial_constraint

optuna.logging.set_verbosity(optuna.logging.WARNING)
NAMES = ["val_ppl", "peak_vram_gib"]
DIRS = ["minimize", "minimize"]
DIST = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
CEILING = 1.0
VOCAB = 2048  # the placeholder PPL of an over-ceiling trial


def add(study, values, constraint, **user_attrs):
    ft = optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE,
        values=values,
        params={"lr": 0.0031234567},
        distributions=DIST,
        user_attrs=user_attrs,
    )
    set_trial_constraint(ft, constraint)
    study.add_trial(ft)


@pytest.fixture
def trials():
    s = optuna.create_study(directions=DIRS)
    est = {"components": {"logits_loss": 0.02, "parameters": 0.005}, "allocator_gib": 0.004, "outside_gib": 0.0,
           "total_gib": 0.029}  # fmt: skip
    add(s, [650.0, 0.034], 0.034 - CEILING, estimate=est)  # 0 front
    add(s, [640.0, 0.036], 0.036 - CEILING, estimate=est)  # 1 front
    add(s, [700.0, 0.040], 0.040 - CEILING)  # 2 dominated
    add(s, [float(VOCAB), 1.7], 0.7, end_reason="vram_ceiling", observed_peak_gib=1.7)  # 3 infeasible
    add(s, [620.0, 0.05], 0.05 - CEILING, reference="dense", end_reason="complete")  # 4 the reference
    s.tell(s.ask(), state=optuna.trial.TrialState.PRUNED)
    return s.get_trials(deepcopy=False)


def test_pareto_is_zoomed_labelled_and_keeps_infeasible_apart(trials, tmp_path):
    front = pareto_front(trials, DIRS)
    assert [t.number for t in front] == [0, 1]
    fig = plots.pareto_figure(trials, NAMES, DIRS, front, CEILING)
    main, side = fig.axes
    lo, hi = main.get_ylim()
    assert hi < 0.1 and lo > 0.02  # zoomed to the data (0.034 .. 0.05), not 0 .. 1 GiB
    xlo, xhi = main.get_xlim()
    assert xhi < 1000 < VOCAB  # the placeholder PPL of trial 3 is not on this panel
    texts = [t.get_text() for t in main.texts]
    assert "#0" in texts and "#1" in texts and "#2" not in texts  # front labels only (and the reference's)
    assert "#4" in texts  # the reference is labelled too
    assert any("VRAM ceiling 1 GiB" in t and "above" in t for t in texts)  # off the zoom: named at the edge
    labels = main.get_legend_handles_labels()[1]
    assert "reference: dense (trial 4)" in labels and "Pareto front" in labels
    assert "infeasible" in side.get_title() and "1" in side.get_title()
    assert [t.get_text() for t in side.get_yticklabels()] == ["#3 vram_ceiling"]
    (x, _y), *_ = side.collections[0].get_offsets()
    assert x == pytest.approx(1.7)  # its peak GiB, never its PPL
    path = plots.save(fig, tmp_path / "p.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_ceiling_in_view_is_a_line(tmp_path):
    s = optuna.create_study(directions=DIRS)
    add(s, [650.0, 0.7], -0.3)
    add(s, [600.0, 0.98], -0.02)
    trials = s.get_trials()
    fig = plots.pareto_figure(trials, NAMES, DIRS, pareto_front(trials, DIRS), CEILING)
    (main,) = fig.axes  # no infeasible trial, no side panel
    assert any(line.get_label() == "VRAM ceiling 1 GiB" for line in main.get_lines())
    plots.save(fig, tmp_path / "p.png")


def test_memory_figure_puts_estimate_beside_measured_peak(trials, tmp_path):
    fig = plots.memory_figure(trials, NAMES)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["#0", "#1"]  # the trials with an estimate
    labels = ax.get_legend_handles_labels()[1]
    assert labels[:2] == ["logits_loss", "parameters"] and "measured peak" in labels and "allocator" in labels
    texts = [t.get_text() for t in ax.texts]
    assert "34.8 MiB" in texts and "29.7 MiB" in texts  # measured 0.034 GiB, estimated 0.029 GiB, in MiB
    plots.save(fig, tmp_path / "m.png")
    assert plots.memory_figure([t for t in trials if "estimate" not in t.user_attrs], NAMES) is None


def test_importance_figure_one_panel_per_objective(tmp_path):
    fig = plots.importance_figure({"val_ppl": {"lr": 0.7, "rank": 0.3}, "peak_vram_gib": {"_unavailable": "few"}})
    assert [ax.get_title() for ax in fig.axes] == ["importance for val_ppl", "importance for peak_vram_gib"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["rank", "lr"]  # largest on top
    plots.save(fig, tmp_path / "i.png")


def test_memory_axis_is_mib_for_a_small_study(trials):
    ax = plots.memory_figure(trials, NAMES).axes[0]
    assert ax.get_ylabel() == "MiB" and 30 < ax.get_ylim()[1] < 60  # 0.034 GiB = 34.8 MiB
