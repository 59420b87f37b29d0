"""tuner.trial.recording: how each end of a run is recorded on its Optuna trial (state, end_reason, objective values
in the spec's order, constraint), from the outcome the trial runner reports, on real in-memory Optuna studies. The
dense reference trial's recording: test_recording_reference.py."""

from __future__ import annotations

import optuna
import pytest

from tests.tuner.tiny import TRIAL_VOCAB, complete_result, trial_spec
from tuner.storage.constraints import constraint_value
from tuner.storage.trial_attrs import trial_attr
from tuner.trial.budget import counted_trials, enqueue_retry
from tuner.trial.outcome import TrialOutcome
from tuner.trial.recording import (
    TrialFailed,
    TrialInterrupted,
    expected_param_counts,
    objective_values,
    params_total,
    record_outcome,
    report_curve,
)

TrialState = optuna.trial.TrialState
optuna.logging.set_verbosity(optuna.logging.ERROR)

CEILING = 1.0
VOCAB = TRIAL_VOCAB


def _run_with_outcome(spec, outcome, device="cpu"):
    """One real trial whose training outcome is `outcome` (as TrialRunner.run returns it)."""
    study = optuna.create_study(directions=spec.directions)

    def objective(trial):
        params = spec.space.suggest(trial)
        config = spec.build_config(params)
        return record_outcome(trial, spec, config, TrialOutcome.from_dict(outcome), device)

    study.optimize(objective, n_trials=1, catch=(TrialFailed,))
    return study.trials[0]


def test_complete_records_values_in_spec_order_and_a_feasible_constraint():
    spec = trial_spec(metrics=("peak_vram_gib", "val_ppl", "params", "tokens_per_s"))
    t = _run_with_outcome(spec, complete_result())
    assert t.state == TrialState.COMPLETE and t.user_attrs["end_reason"] == "complete"
    assert t.values == [0.25, 300.0, 64.0, 1234.0]
    assert constraint_value(t) == pytest.approx(0.25 - CEILING)
    assert t.user_attrs["effective_rank"] == 7.5 and t.user_attrs["gate_sparsity"] == 0.25
    assert trial_attr(t, "stability") == {"det_min": 0.9} and t.user_attrs["params_total"] == 64


def test_cpu_peak_over_the_ceiling_is_complete_but_infeasible():
    t = _run_with_outcome(trial_spec(), complete_result(peak=1.5))
    assert t.state == TrialState.COMPLETE and t.values == [300.0, 1.5]
    assert t.user_attrs["end_reason"] == "vram_ceiling" and t.user_attrs["ceiling_detected"] == "after_run"
    assert constraint_value(t) == pytest.approx(0.5)


def test_gpu_ceiling_stop_is_complete_infeasible_with_vocab_ppl_and_observed_peak():
    t = _run_with_outcome(
        trial_spec(),
        {
            "kind": "vram_ceiling",
            "peak_gib": 1.3,
            "nvml_peak_gib": 1.3,
            "ceiling_stop_s": 0.21,
            "error_summary": "GPU memory 1.300 GiB crossed the ceiling",
        },
        device="cuda",
    )
    assert t.user_attrs["ceiling_stop_s"] == 0.21  # what issue 18's "stopped within 1 s of crossing" reads
    assert t.state == TrialState.COMPLETE and t.values == [float(VOCAB), 1.3]
    assert t.user_attrs["end_reason"] == "vram_ceiling" and "vocab_size" in t.user_attrs["objective_note"]
    assert t.user_attrs["observed_peak_gib"] == 1.3 and constraint_value(t) == pytest.approx(0.3)


def test_oom_is_infeasible_even_without_an_observed_peak():
    t = _run_with_outcome(trial_spec(), {"kind": "oom", "error_summary": "OutOfMemoryError: x", "traceback": "tb"})
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
    t = _run_with_outcome(trial_spec(), outcome)
    assert t.state == state
    assert t.user_attrs["end_reason"] == ("error" if kind == "crash" else kind)
    if kind == "numerical_instability":
        assert trial_attr(t, "stability") == {"check": "det", "value": 1e-9}
    if state == TrialState.FAIL:
        assert t.user_attrs["error_summary"] == f"{kind} happened" and t.user_attrs["traceback"]


def test_interrupted_is_failed_and_a_retry_records_what_it_replaces():
    spec = trial_spec()
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


def test_objective_values_follow_the_spec_order():
    spec = trial_spec(metrics=("tokens_per_s", "params", "val_ppl"))
    assert objective_values(spec, val_ppl=3.0, peak=0.5, params=7, tokens_per_s=11.0) == (11.0, 7.0, 3.0)


def test_param_counts_come_from_the_models_formulas():
    spec = trial_spec()
    config = spec.build_config({"learning_rate": 1e-3})
    counts = expected_param_counts(config)
    assert "total" not in counts and all(isinstance(v, int) and v >= 0 for v in counts.values())
    from model.lm import build_model

    assert params_total(counts) == sum(p.numel() for p in build_model(config).parameters())  # the real model's
    assert params_total({**counts, "total": 10**9}) == sum(counts.values())  # a "total" entry is not added again


def test_an_unseen_nvml_pid_is_labelled_not_reported_as_zero(caplog):
    outcome = complete_result(peak=0.4)
    outcome.update(device_name="cuda", nvml_pid_seen=0)
    t = _run_with_outcome(trial_spec(), outcome, device="cuda")
    assert t.state == TrialState.COMPLETE
    assert t.user_attrs.get("peak_vram_kind") == "cuda_max_allocated_nvml_pid_unseen" and t.values[1] == 0.4


def test_the_childs_trial_count_is_recorded_whatever_the_end():
    """child_trials_before says whether the trial's process had run others before (their leftovers can count in its
    NVML peak); recorded on a complete trial and on one stopped at the ceiling alike."""
    done = _run_with_outcome(trial_spec(), {**complete_result(), "child_trials_before": 3})
    assert done.state == TrialState.COMPLETE and done.user_attrs["child_trials_before"] == 3
    stopped = _run_with_outcome(
        trial_spec(), {"kind": "vram_ceiling", "peak_gib": 1.5, "replace_child": True, "child_trials_before": 0}
    )
    assert stopped.user_attrs["end_reason"] == "vram_ceiling" and stopped.user_attrs["child_trials_before"] == 0


def test_a_curve_pruned_trial_leaves_a_multi_objective_tpe_study_able_to_sample():
    """Optuna 5.0's TPE reads a pruned trial's last intermediate value through `study.direction`, which raises for
    several objectives: a pruned trial with stored intermediate values made every later ask fail (H100 study with
    learning-curve pruning). The pruned trial keeps its curve as the `curve` attr; TPE then samples on."""
    spec = trial_spec()
    assert len(spec.objectives) > 1
    curve = [{"tokens": 64, "val_ppl": 900.0}, {"tokens": 128, "val_ppl": 700.0}]
    sampler = optuna.samplers.TPESampler(n_startup_trials=1, seed=0)
    study = optuna.create_study(directions=spec.directions, sampler=sampler)

    def objective(trial):
        params = spec.space.suggest(trial)
        outcome = {"kind": "learning_curve", "error_summary": "curve below the front", "curve": curve}
        return record_outcome(trial, spec, spec.build_config(params), TrialOutcome.from_dict(outcome), "cpu")

    study.optimize(objective, n_trials=3)  # trials 2 and 3 are sampled by TPE with pruned trials in the study
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 3
    assert all(not t.intermediate_values and trial_attr(t, "curve") == curve for t in study.trials)
    # What the guard prevents: the same study with one curve stored as intermediate values cannot sample.
    broken = optuna.create_study(directions=spec.directions, sampler=optuna.samplers.TPESampler(n_startup_trials=1))
    t = broken.ask()
    spec.space.suggest(t)
    assert report_curve(t, curve) == 2
    broken.tell(t, state=TrialState.PRUNED)
    with pytest.raises(RuntimeError, match="multi-objective"):
        spec.space.suggest(broken.ask())


INFERENCE = ("val_ppl", "eval_tokens_per_s", "eval_peak_gib")


def _with_inference(result: dict, **measured) -> dict:
    return {**result, "result": {**result["result"], **measured}}


def test_the_inference_metrics_are_values_in_spec_order_and_attrs():
    measured = {"eval_tokens_per_s": 5000.0, "eval_peak_gib": 0.04, "eval_peak_kind": "cpu_tensor_bytes"}
    t = _run_with_outcome(trial_spec(metrics=INFERENCE), _with_inference(complete_result(), **measured))
    assert t.state == TrialState.COMPLETE and t.values == [300.0, 5000.0, 0.04]
    assert {k: t.user_attrs[k] for k in measured} == measured
    assert t.user_attrs["peak_vram_gib"] == 0.25  # the training peak, kept though it is not an objective


def test_a_complete_run_without_its_inference_pass_fails_rather_than_score_a_made_up_value():
    t = _run_with_outcome(trial_spec(metrics=INFERENCE), complete_result())
    assert t.state == TrialState.FAIL and t.user_attrs["end_reason"] == "error"
    assert t.user_attrs["error_summary"].startswith("eval_tokens_per_s was not measured")


def test_an_infeasible_end_has_no_inference_attrs_and_placeholder_values_it_names():
    t = _run_with_outcome(trial_spec(metrics=INFERENCE), {"kind": "vram_ceiling", "peak_gib": 1.4, "wall_s": 1.0})
    assert t.state == TrialState.COMPLETE and t.values == [float(VOCAB), 0.0, 1.4]
    assert constraint_value(t) > 0 and not any(k.startswith("eval_") for k in t.user_attrs)
    assert "never evaluated" in t.user_attrs["objective_note"]
