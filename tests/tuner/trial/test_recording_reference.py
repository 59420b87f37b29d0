"""Recording a finished DenseConfig run (tuner.trial.recording): dense parameter counts, no LNS, the `epochs`
attr, and the worker's warning when a trial repeated its training data."""

from __future__ import annotations

import logging

import optuna

from model.dense_config import dense_param_counts
from tests.tuner.tiny import mutate
from tuner.storage.constraints import is_feasible
from tuner.study.loader import spec_from_dict
from tuner.trial.outcome import TrialOutcome
from tuner.trial.recording import expected_param_counts, record_outcome


def _record(epochs: float, caplog):
    spec = spec_from_dict(mutate(baseline="dense"), check_paths=False)
    assert spec.baseline is not None
    trial = optuna.create_study(directions=spec.directions).ask()
    result = {"val_ppl": 50.0, "peak_torch_gib": 0.25, "tokens_per_s": 100.0, "epochs": epochs}
    with caplog.at_level(logging.WARNING, logger="tuner.trial.recording"):
        values = record_outcome(trial, spec, spec.baseline, TrialOutcome("complete", result=result), "cpu")
    return spec, trial, values


def test_a_dense_run_is_recorded_with_dense_counts_and_its_epochs(caplog):
    spec, trial, values = _record(0.5, caplog)
    assert values == (50.0, 0.25)
    assert trial.user_attrs["epochs"] == 0.5 and trial.user_attrs["eval_used_lns"] is False
    assert trial.user_attrs["params_total"] == dense_param_counts(spec.baseline)["total"]
    assert expected_param_counts(spec.baseline) == {
        k: v for k, v in dense_param_counts(spec.baseline).items() if k != "total"
    }
    assert "repeated its training data" not in caplog.text


def test_more_than_one_epoch_is_logged_by_the_worker(caplog):
    _, trial, _ = _record(2.5, caplog)
    assert trial.user_attrs["epochs"] == 2.5
    assert f"trial {trial.number} repeated its training data: 2.50 epochs" in caplog.text


def test_a_dense_run_stopped_at_the_ceiling_is_infeasible_with_dense_counts():
    spec = spec_from_dict(mutate(baseline="dense"), check_paths=False)
    assert spec.baseline is not None
    study = optuna.create_study(directions=spec.directions)
    trial = study.ask()
    outcome = TrialOutcome("vram_ceiling", peak_gib=9.5, error_summary="over")
    values = record_outcome(trial, spec, spec.baseline, outcome, "cuda")
    assert values == (float(spec.baseline.vocab_size), 9.5)  # the uniform model's PPL, the guard's peak
    assert trial.user_attrs["end_reason"] == "vram_ceiling"
    assert trial.user_attrs["params_total"] == dense_param_counts(spec.baseline)["total"]
    study.tell(trial, values)
    assert not is_feasible(study.trials[0])


class _CapturingRunner:
    """A CPU runner that records the request it is given and answers with a finished run over the ceiling."""

    gpu = None
    device = "cpu"
    device_name = "cpu (test)"

    def __init__(self, peak_gib: float):
        self.peak_gib = peak_gib
        self.requests: list = []

    def ensure_started(self) -> None:
        pass

    def run(self, request, timeout_s, **kwargs):
        self.requests.append(request)
        return TrialOutcome("complete", result={"val_ppl": 42.0, "peak_torch_gib": self.peak_gib, "epochs": 0.1})


def test_the_reference_is_measured_not_stopped_and_judged_by_the_study_ceiling():
    """The guard gets no ceiling for a reference (a plain transformer over the study's ceiling still reports its PPL
    and real peak); its constraint is still peak - the study's ceiling, so it is infeasible there."""
    from tuner.trial.objective import REFERENCE_WATCH_CEILING_GIB, Objective

    spec = spec_from_dict(mutate(baseline="dense"), check_paths=False)
    over = float(spec.vram_ceiling_gib) * 3
    runner = _CapturingRunner(peak_gib=over)
    study = optuna.create_study(directions=spec.directions)
    study.enqueue_trial({}, user_attrs={"reference": "dense"})
    study.optimize(Objective(spec, runner), n_trials=1)
    (request,) = runner.requests
    assert request.ceiling_gib == REFERENCE_WATCH_CEILING_GIB == float("inf")
    assert request.config["kind"] == "dense"
    t = study.trials[0]
    assert t.values == [42.0, over]  # the real PPL, not the uniform model's
    assert t.user_attrs["ceiling_enforced"] is False and t.user_attrs["end_reason"] == "vram_ceiling"
    assert not is_feasible(t)
