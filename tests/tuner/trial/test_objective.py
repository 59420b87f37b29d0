"""The objective (tuner.trial.objective) on real Optuna studies (in-memory storage): predicted_over_ceiling is
decided by the real estimator before any training (the runner must not be asked to run). How each trial end is
recorded: test_recording.py; the shared budget: test_budget.py; the runner itself runs for real in
tests/integration/."""

from __future__ import annotations

import optuna
import pytest

from tests.tuner.tiny import TRIAL_VOCAB, complete_result, trial_spec
from tuner.storage.constraints import constraint_value
from tuner.storage.trial_attrs import trial_attr
from tuner.trial.objective import Objective
from tuner.trial.outcome import TrialOutcome
from tuner.trial.recording import TrialFailed, params_total

TrialState = optuna.trial.TrialState
optuna.logging.set_verbosity(optuna.logging.ERROR)


class _NoRunRunner:
    """A runner already started on CPU that must never be asked to train (the estimate decides first)."""

    gpu = None
    device = "cpu"
    device_name = "cpu (test)"

    def ensure_started(self):
        pass

    def run(self, *a, **k):
        raise AssertionError("predicted_over_ceiling must not spend training time")


def test_predicted_over_ceiling_uses_the_real_estimate_and_never_trains():
    from tuner.vram.estimate.predict import estimate

    spec = trial_spec(estimate=True, ceiling=1e-4)  # far below any model's tensor bytes
    study = optuna.create_study(directions=spec.directions)
    study.optimize(Objective(spec, _NoRunRunner()), n_trials=1, catch=(TrialFailed,))
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE and t.user_attrs["end_reason"] == "predicted_over_ceiling", t.user_attrs
    predicted = estimate(spec.build_config(t.params), device="cpu").total_gib
    assert t.user_attrs["predicted_peak_gib"] == pytest.approx(predicted)
    assert t.values == [float(TRIAL_VOCAB), pytest.approx(predicted)] and constraint_value(t) > 0
    assert t.user_attrs["params_total"] == params_total(trial_attr(t, "param_counts")) > 0


class _TimedRunner(_NoRunRunner):
    """A started CPU runner whose trial takes `wall_s`, `busy_s` of it in the trainer (as the child reports)."""

    def __init__(self, wall_s: float, busy_s: float) -> None:
        self.wall_s, self.busy_s = wall_s, busy_s

    def run(self, *a, **k):
        import time

        time.sleep(self.wall_s)
        # the child's own account: 0.05 s building, busy_s training and evaluating (a fifth of it evaluating)
        phases = {"build_s": 0.05, "train_s": 0.8 * self.busy_s, "eval_s": 0.2 * self.busy_s}
        return TrialOutcome.from_dict({**complete_result(), "wall_s": self.wall_s, **phases})


def test_gpu_busy_frac_is_train_and_eval_time_over_the_trials_wall_time_in_the_worker():
    spec = trial_spec()
    study = optuna.create_study(directions=spec.directions)
    study.optimize(Objective(spec, _TimedRunner(wall_s=0.4, busy_s=0.3)), n_trials=1, catch=(TrialFailed,))
    t = study.trials[0]
    frac = t.user_attrs["gpu_busy_frac"]
    wall = (t.datetime_complete - t.datetime_start).total_seconds()
    assert 0.0 < frac <= 0.75  # 0.3 s busy in at least 0.4 s
    assert frac == pytest.approx(0.3 / wall, rel=0.2)  # the worker's wall includes sampling and recording
    phases = t.user_attrs["phase_s"]
    assert phases["train"] == pytest.approx(0.24, abs=2e-3) and phases["eval"] == pytest.approx(0.06, abs=2e-3)
    assert phases["build"] == pytest.approx(0.05, abs=2e-3)
    assert phases["handoff"] == pytest.approx(0.4 - 0.35, abs=0.05)  # the run's wall the child did not account for
    # the phases cut the trial's wall time in this worker (up to Optuna's tell after the record)
    assert sum(phases.values()) == pytest.approx(wall, abs=0.05)
    # phase_s is rounded to the ms, gpu_busy_frac is not: sub-ms phases (sample, estimate...) round to 0, so the
    # recomputed wall may be short by up to 0.5 ms per phase; gpu_busy_frac itself is rounded to 4 digits
    recomputed_wall = sum(phases.values())
    tol = frac * 0.0005 * len(phases) / recomputed_wall + 1e-4
    assert frac == pytest.approx((phases["train"] + phases["eval"]) / recomputed_wall, abs=tol)


def test_gpu_busy_frac_is_zero_for_a_trial_that_never_trained():
    spec = trial_spec(estimate=True, ceiling=1e-4)
    study = optuna.create_study(directions=spec.directions)
    study.optimize(Objective(spec, _NoRunRunner()), n_trials=1, catch=(TrialFailed,))
    assert study.trials[0].user_attrs["gpu_busy_frac"] == 0.0
    assert set(study.trials[0].user_attrs["phase_s"]) == {"sample", "wait_child", "estimate", "report"}


def test_a_packed_launch_gives_the_reference_trial_a_ceiling(monkeypatch):
    from tuner.trial.objective import REFERENCE_WATCH_CEILING_GIB, reference_ceiling_gib
    from tuner.trial.packing import REFERENCE_CEILING_ENV

    monkeypatch.delenv(REFERENCE_CEILING_ENV, raising=False)
    assert reference_ceiling_gib() == REFERENCE_WATCH_CEILING_GIB == float("inf")
    monkeypatch.setenv(REFERENCE_CEILING_ENV, "19.5")
    assert reference_ceiling_gib() == 19.5
    for bad in ("", "x", "-1"):
        monkeypatch.setenv(REFERENCE_CEILING_ENV, bad)
        assert reference_ceiling_gib() == float("inf")


class _RecordingRunner(_NoRunRunner):
    """A started CPU runner that keeps each request and completes it with a fixed result."""

    def __init__(self) -> None:
        self.requests: list = []

    def run(self, request, *a, **k):
        self.requests.append(request)
        return TrialOutcome.from_dict(complete_result())


@pytest.mark.parametrize("step, kind", [("eager", "eager"), ("compile", "eager_upper_bound")])
def test_the_study_step_reaches_the_request_and_is_recorded_with_the_estimate_kind(step, kind):
    import dataclasses

    from tuner.study.spec import StepMode, TrainingSettings

    spec = dataclasses.replace(trial_spec(estimate=True, ceiling=8.0), training=TrainingSettings(StepMode(step)))
    runner = _RecordingRunner()
    study = optuna.create_study(directions=spec.directions)
    study.optimize(Objective(spec, runner), n_trials=1, catch=(TrialFailed,))
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE and [r.step for r in runner.requests] == [StepMode(step)]
    assert t.user_attrs["step_mode"] == step and t.user_attrs["estimate_kind"] == kind
    assert t.user_attrs["predicted_peak_gib"] > 0  # the eager prediction, whatever the step


def test_a_compile_graphs_study_on_a_cpu_runner_is_refused_before_training():
    import dataclasses

    from tuner.errors import WorkerEnvironmentError
    from tuner.study.spec import StepMode, TrainingSettings

    spec = dataclasses.replace(trial_spec(), training=TrainingSettings(StepMode.COMPILE_GRAPHS))
    study = optuna.create_study(directions=spec.directions)
    with pytest.raises(WorkerEnvironmentError, match=r"training\.step compile_graphs .* needs a CUDA device"):
        study.optimize(Objective(spec, _NoRunRunner()), n_trials=1, catch=(TrialFailed,))


def test_the_reference_trial_trains_eager_whatever_the_studys_step():
    """The dense reference is the eager baseline the speedup is measured against: a compile study keeps it eager."""
    import dataclasses

    from model.dense_config import dense_for
    from tuner.storage.trial_attrs import REFERENCE_ATTR
    from tuner.study.spec import StepMode, TrainingSettings

    base = trial_spec()
    shape = {k: base.model[k] for k in ("vocab_size", "d_model", "n_layers", "n_seq", "batch_size", "dtype")}
    spec = dataclasses.replace(base, training=TrainingSettings(StepMode.COMPILE), baseline=dense_for(shape))
    runner = _RecordingRunner()
    study = optuna.create_study(directions=spec.directions)
    study.enqueue_trial({}, user_attrs={REFERENCE_ATTR: "dense"})
    study.optimize(Objective(spec, runner), n_trials=1, catch=(TrialFailed,))
    t = study.trials[0]
    assert [r.step for r in runner.requests] == [StepMode.EAGER] and t.user_attrs["step_mode"] == "eager"


class _CapturingRunner(_NoRunRunner):
    """A started CPU runner that records the request it was asked to run and answers a complete run."""

    def __init__(self) -> None:
        self.requests: list = []

    def run(self, request, *a, **k):
        self.requests.append(request)
        done = complete_result()
        done["result"].update(eval_tokens_per_s=1000.0, eval_peak_gib=0.01)
        return TrialOutcome.from_dict(done)


@pytest.mark.parametrize(
    ("metrics", "measured"),
    [(("val_ppl", "peak_vram_gib"), False), (("val_ppl", "eval_tokens_per_s", "eval_peak_gib"), True)],
)
def test_the_request_asks_for_the_inference_pass_only_when_an_objective_needs_it(metrics, measured):
    spec = trial_spec(metrics)
    runner = _CapturingRunner()
    study = optuna.create_study(directions=spec.directions)
    study.optimize(Objective(spec, runner), n_trials=1, catch=(TrialFailed,))
    assert spec.measures_inference is measured and runner.requests[0].measure_inference is measured
    assert study.trials[0].state == TrialState.COMPLETE
