"""The objective's bookkeeping and the worker's shared budget, on real Optuna studies (in-memory storage):

- how each trial end is recorded (state, end_reason, values in the spec's order, constraint), from the outcome the
  trial runner reports - the runner itself is exercised for real in tests/integration/;
- predicted_over_ceiling: decided by the real estimator before any training (the runner must not be asked to run);
- the shared budget counts COMPLETE + PRUNED + FAIL minus retried FAILs; a retry records the trial it replaces.
"""

from __future__ import annotations

import optuna
import pytest

from tuner.storage.constraints import constraint_value
from tuner.storage.trial_attrs import trial_attr
from tuner.study.loader import spec_from_dict
from tuner.trial.budget import StudyBudget, counted_trials, enqueue_retry
from tuner.trial.objective import Objective
from tuner.trial.outcome import TrialOutcome
from tuner.trial.recording import (
    TrialFailed,
    TrialInterrupted,
    params_total,
    record_outcome,
)

TrialState = optuna.trial.TrialState
optuna.logging.set_verbosity(optuna.logging.ERROR)

CEILING = 1.0
VOCAB = 512


def _spec(metrics=("val_ppl", "peak_vram_gib"), estimate=False, ceiling=CEILING):
    return spec_from_dict(
        {
            "name": "objective_unit",
            "objectives": [
                {"metric": m, "direction": "maximize" if m == "tokens_per_s" else "minimize"} for m in metrics
            ],
            "vram_ceiling_gib": ceiling,
            "sampler": {"name": "random", "seed": 0},
            "n_trials": 4,
            "model": {
                "vocab_size": VOCAB,
                "d_model": 32,
                "n_layers": 1,
                "n_seq": 64,
                "batch_size": 4,
                "dtype": "float32",
            },
            "search_space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
            "data": {"source": "stdlib", "max_bytes": 262144},
            "budget": {"train_tokens": 2048, "eval_tokens": 1024, "trial_timeout_s": 60},
            "estimate": {"enabled": estimate, "margin": 0.0},
        },
        check_paths=False,
    )


def _run_with_outcome(spec, outcome, device="cpu"):
    """One real trial whose training outcome is `outcome` (as TrialRunner.run returns it)."""
    study = optuna.create_study(directions=spec.directions)

    def objective(trial):
        params = spec.space.suggest(trial)
        config = spec.build_config(params)
        return record_outcome(trial, spec, config, TrialOutcome.from_dict(outcome), device)

    study.optimize(objective, n_trials=1, catch=(TrialFailed,))
    return study.trials[0]


def _complete_result(val_ppl=300.0, peak=0.25):
    return {
        "kind": "complete",
        "wall_s": 1.0,
        "device_name": "cpu",
        "result": {
            "val_ppl": val_ppl,
            "val_loss": 5.7,
            "peak_torch_gib": peak,
            "tokens_per_s": 1234.0,
            "param_counts": {"embedding": 10, "ar_ssm": 20, "ffn": 30, "head": 0, "norm": 4},
            "diagnostics": {"effective_rank": 7.5, "gate_sparsity": 0.25, "det_min": 0.9},
            "steps": 8,
            "train_time_s": 0.5,
            "curve": [{"tokens": 2048, "val_ppl": val_ppl}],
        },
    }


def test_complete_records_values_in_spec_order_and_a_feasible_constraint():
    spec = _spec(metrics=("peak_vram_gib", "val_ppl", "params", "tokens_per_s"))
    t = _run_with_outcome(spec, _complete_result())
    assert t.state == TrialState.COMPLETE and t.user_attrs["end_reason"] == "complete"
    assert t.values == [0.25, 300.0, 64.0, 1234.0]
    assert constraint_value(t) == pytest.approx(0.25 - CEILING)
    assert t.user_attrs["effective_rank"] == 7.5 and t.user_attrs["gate_sparsity"] == 0.25
    assert trial_attr(t, "stability") == {"det_min": 0.9} and t.user_attrs["params_total"] == 64


def test_cpu_peak_over_the_ceiling_is_complete_but_infeasible():
    t = _run_with_outcome(_spec(), _complete_result(peak=1.5))
    assert t.state == TrialState.COMPLETE and t.values == [300.0, 1.5]
    assert t.user_attrs["end_reason"] == "vram_ceiling" and t.user_attrs["ceiling_detected"] == "after_run"
    assert constraint_value(t) == pytest.approx(0.5)


def test_gpu_ceiling_stop_is_complete_infeasible_with_vocab_ppl_and_observed_peak():
    t = _run_with_outcome(
        _spec(),
        {
            "kind": "vram_ceiling",
            "peak_gib": 1.3,
            "nvml_peak_gib": 1.3,
            "error_summary": "GPU memory 1.300 GiB crossed the ceiling",
        },
        device="cuda",
    )
    assert t.state == TrialState.COMPLETE and t.values == [float(VOCAB), 1.3]
    assert t.user_attrs["end_reason"] == "vram_ceiling" and "vocab_size" in t.user_attrs["objective_note"]
    assert t.user_attrs["observed_peak_gib"] == 1.3 and constraint_value(t) == pytest.approx(0.3)


def test_oom_is_infeasible_even_without_an_observed_peak():
    t = _run_with_outcome(_spec(), {"kind": "oom", "error_summary": "OutOfMemoryError: x", "traceback": "tb"})
    assert t.state == TrialState.COMPLETE and t.user_attrs["end_reason"] == "oom"
    assert constraint_value(t) > 0 and t.values[1] > CEILING
    assert t.user_attrs["traceback"] == "tb"


@pytest.mark.parametrize(
    "kind, state",
    [
        ("numerical_instability", TrialState.PRUNED),
        ("learning_curve", TrialState.PRUNED),
        ("invalid_config", TrialState.PRUNED),
        ("timeout", TrialState.PRUNED),
        ("error", TrialState.FAIL),
        ("crash", TrialState.FAIL),
    ],
)
def test_non_value_ends_are_pruned_or_failed_with_their_reason(kind, state):
    outcome = {
        "kind": kind,
        "error_summary": f"{kind} happened",
        "traceback": "Traceback ...",
        "stability": {"check": "det", "value": 1e-9},
    }
    t = _run_with_outcome(_spec(), outcome)
    assert t.state == state
    assert t.user_attrs["end_reason"] == ("error" if kind == "crash" else kind)
    if kind == "numerical_instability":
        assert trial_attr(t, "stability") == {"check": "det", "value": 1e-9}
    if state == TrialState.FAIL:
        assert t.user_attrs["error_summary"] == f"{kind} happened" and t.user_attrs["traceback"]


def test_interrupted_is_failed_and_a_retry_records_what_it_replaces():
    spec = _spec()
    study = optuna.create_study(directions=spec.directions)

    def objective(trial):
        spec.space.suggest(trial)
        return record_outcome(
            trial, spec, spec.build_config(trial.params), TrialOutcome(kind="interrupted", error_summary="stop"), "cpu"
        )

    study.optimize(objective, n_trials=1, catch=(TrialInterrupted,))
    first = study.trials[0]
    assert first.state == TrialState.FAIL and first.user_attrs["end_reason"] == "interrupted"
    enqueue_retry(study, first)
    retry = study.trials[1]
    assert retry.state == TrialState.WAITING and retry.params == first.params
    assert retry.system_attrs["failed_trial"] == 0 and retry.system_attrs["retry_history"] == [0]
    assert "end_reason" not in retry.user_attrs  # the failed attempt's ending does not stick to the retry
    assert counted_trials(study) == 0  # the interrupted trial is replaced, not counted


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

    spec = _spec(estimate=True, ceiling=1e-4)  # far below any model's tensor bytes
    study = optuna.create_study(directions=spec.directions)
    study.optimize(Objective(spec, _NoRunRunner()), n_trials=1, catch=(TrialFailed,))
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE and t.user_attrs["end_reason"] == "predicted_over_ceiling", t.user_attrs
    predicted = estimate(spec.build_config(t.params), device="cpu").total_gib
    assert t.user_attrs["predicted_peak_gib"] == pytest.approx(predicted)
    assert t.values == [float(VOCAB), pytest.approx(predicted)] and constraint_value(t) > 0
    assert t.user_attrs["params_total"] == params_total(trial_attr(t, "param_counts")) > 0


def test_budget_counts_finished_trials_minus_retried_failures():
    study = optuna.create_study(directions=["minimize", "minimize"])
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for state, values in [(TrialState.COMPLETE, [1.0, 1.0]), (TrialState.PRUNED, None), (TrialState.FAIL, None)]:
        study.add_trial(optuna.trial.create_trial(state=state, values=values, params={"x": 0.5}, distributions=dist))
    assert counted_trials(study) == 3
    enqueue_retry(study, study.trials[2])
    assert counted_trials(study) == 2  # the FAIL is replaced by a WAITING retry

    import threading

    stop = threading.Event()
    assert StudyBudget(3, stop).wait_turn(study) is True  # one left, nobody running it
    assert StudyBudget(2, stop).wait_turn(study) is False  # budget spent
    stop.set()
    assert StudyBudget(10, stop).wait_turn(study) is False  # stopping wins
