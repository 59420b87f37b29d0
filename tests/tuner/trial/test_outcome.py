"""The typed trial boundary (tuner.trial.outcome): what crosses the pipe, how each end reason is recorded, and the
one definition of a run's peak_vram_gib."""

from __future__ import annotations

import pickle

import pytest

from tuner.storage.trial_attrs import EndReason
from tuner.study.spec import LearningCurvePruning
from tuner.trial.outcome import (
    ENDINGS,
    FEASIBLE_EPS_GIB,
    PruningRequest,
    TrialOutcome,
    TrialRequest,
    peak_vram,
)

CEILING = 1.0


def test_every_reason_a_trial_records_itself_has_an_ending():
    # worker_lost is recorded by the heartbeat callback on a trial whose worker is gone, never by the objective.
    assert set(ENDINGS) == set(EndReason) - {EndReason.WORKER_LOST}
    assert {r for r, e in ENDINGS.items() if e.infeasible} == {
        EndReason.VRAM_CEILING,
        EndReason.OOM,
        EndReason.PREDICTED_OVER_CEILING,
    }


def test_from_dict_sorts_curve_attrs_and_refuses_unknown_fields():
    o = TrialOutcome.from_dict({"kind": "complete", "wall_s": 2.0, "curve": [1], "curve_fit": {"a": 1}})
    assert o.curve_attrs == {"curve": [1], "curve_fit": {"a": 1}} and o.wall_s == 2.0
    with pytest.raises(ValueError, match="unknown field"):
        TrialOutcome.from_dict({"kind": "complete", "nvml_peak": 1.0})


def test_a_crash_is_recorded_as_an_error():
    assert TrialOutcome(kind="crash").reason is EndReason.ERROR
    assert TrialOutcome(kind="oom").reason is EndReason.OOM


def test_request_crosses_a_pipe():
    req = TrialRequest(
        config={"d_model": 64},
        data=None,
        train_tokens=10,
        eval_tokens=5,
        ceiling_gib=CEILING,
        pruning=PruningRequest(LearningCurvePruning(enabled=True), front=((100.0, 0.5),)),
    )
    assert pickle.loads(pickle.dumps(req)) == req


@pytest.mark.parametrize(
    "device, outcome, want",
    [
        ("cpu", TrialOutcome(kind="complete", result={"peak_torch_gib": 0.3}), (0.3, "cpu_tensor_bytes")),
        (
            "cuda",
            TrialOutcome(kind="complete", result={"peak_torch_gib": 0.3}, nvml_peak_gib=0.8, nvml_pid_seen=5),
            (0.8, "nvml_process"),
        ),
        (
            "cuda",
            TrialOutcome(kind="complete", result={"peak_torch_gib": 0.3}, nvml_peak_gib=0.8, nvml_pid_seen=0),
            (0.3, "cuda_max_allocated_nvml_pid_unseen"),
        ),
        ("cuda", TrialOutcome(kind="vram_ceiling", peak_gib=1.2), (1.2, None)),
        ("cuda", TrialOutcome(kind="vram_ceiling"), (CEILING, None)),
        ("cuda", TrialOutcome(kind="oom", torch_peak_gib=0.4), (CEILING + FEASIBLE_EPS_GIB, None)),
        ("cuda", TrialOutcome(kind="oom", nvml_peak_gib=1.5, torch_peak_gib=0.4), (1.5, None)),
    ],
)
def test_peak_vram(device, outcome, want):
    peak = peak_vram(outcome, device=device, ceiling_gib=CEILING)
    assert (peak.gib, peak.kind) == pytest.approx(want)
