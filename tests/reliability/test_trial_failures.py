"""Failures inside a trial, on real Postgres with a real worker and tiny real models (CPU):
- CUDA OOM (torch.cuda.OutOfMemoryError raised inside the training step by the worker's test-only fault hook, a
  double of the failure, not of the service) and any other exception: recorded with the reason and a traceback
  summary in user attrs; the child that failed is replaced (memory released) and the worker goes on;
- a crossed stability bound and a loss that really goes non-finite: PRUNED `numerical_instability` with the
  stability diagnostics saved."""

from __future__ import annotations

import math

import optuna
import pytest

from testing.harness import CACHE_DIR, tiny_spec, write_study
from tuner.storage.trial_attrs import all_trial_attrs, trial_attr

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _run(tmp_path, pg_url, spec: dict, fault=None) -> list:
    from tuner.storage.connect import open_storage
    from tuner.study.loader import load_spec
    from tuner.trial.worker import run_worker

    loaded = load_spec(write_study(tmp_path, spec))
    assert run_worker(loaded, storage=open_storage(pg_url), seed=loaded.sampler.seed, cache_dir=CACHE_DIR, fault=fault, install_signal_handlers=False) == 0
    return optuna.load_study(study_name=spec["name"], storage=pg_url).get_trials()


@pytest.mark.parametrize("kind", ["oom", "error"])
def test_exception_in_training_step_is_recorded_and_worker_continues(tmp_path, pg_url, kind):
    from tuner.trial.faults import FaultInjection

    trials = _run(tmp_path, pg_url, tiny_spec(f"fault_{kind}", 2), FaultInjection(kind=kind, at_step=2, trials=(0,)))
    assert [t.number for t in trials] == [0, 1]
    failed, after = trials
    attrs = failed.user_attrs
    if kind == "oom":
        # infeasible COMPLETE: the samplers learn the boundary from it
        assert failed.state.name == "COMPLETE" and attrs["end_reason"] == "oom"
        assert attrs["error_summary"].startswith("OutOfMemoryError: injected CUDA out of memory at step 2")
        assert failed.system_attrs["constraints"][0] > 0
        assert failed.values[0] == 512  # vocab_size: the uniform model's PPL, labelled
        assert "objective_note" in attrs
        assert attrs.get("child_replaced") is True  # the child holding the (GPU) memory is discarded
        exc_name = "OutOfMemoryError"
    else:
        assert failed.state.name == "FAIL" and attrs["end_reason"] == "error"
        assert attrs["error_summary"].startswith("InjectedFault: injected failure at step 2")
        exc_name = "InjectedFault"
    tb = attrs["traceback"]
    assert "Traceback" in tb and exc_name in tb and "on_step" in tb and len(tb) <= 4000
    # the worker went on: the next trial trained to the end in a working child
    assert after.state.name == "COMPLETE" and after.user_attrs["end_reason"] == "complete"
    assert math.isfinite(after.values[0]) and after.values[0] < 512 * 2
    assert after.user_attrs["worker"] == attrs["worker"]


def test_numerical_instability_real_bound_and_real_nonfinite_loss(tmp_path, pg_url):
    """Grid over two real failures: a Schatten bound no model satisfies, and a learning rate that blows the loss
    up. Both end PRUNED `numerical_instability` with their diagnostics."""
    spec = tiny_spec("unstable", 2, train_tokens=1024,
                     model={"learning_rate": 1.0e8, "stability_check_every": 1, "gradient_norm_threshold": 1.0e6})
    spec["sampler"] = {"name": "grid", "seed": 0}
    spec["search_space"] = {"schatten_s1_bound": {"type": "categorical", "choices": [1.0e-6, 1.0e30]}}
    spec["model"]["schatten_s2_bound"] = 1.0e30
    trials = _run(tmp_path, pg_url, spec)
    assert len(trials) == 2
    by_bound = {t.params["schatten_s1_bound"]: t for t in trials}
    for t in trials:
        assert t.state.name == "PRUNED" and t.user_attrs["end_reason"] == "numerical_instability", t.user_attrs
        assert trial_attr(t, "stability"), t.user_attrs
        assert "NumericalInstabilityError" in t.user_attrs["error_summary"]
    bound = all_trial_attrs(by_bound[1.0e-6])
    # the first check (step 1) already crosses the impossible bound; its measurements are saved with it
    assert "schatten_s1" in bound["stability"]["checks"] and bound["stability"]["step"] == 1, bound
    assert bound["stability"]["s1_max"] > 1.0e-6
    blown = all_trial_attrs(by_bound[1.0e30])
    # whichever check sees the blow-up first: with the output bias and the per-kind rates the weights' mixing
    # operator passes the 1e30 Schatten bound at step 1 before the loss turns non-finite
    assert blown["stability"]["check"] in ("non_finite_loss", "grad_norm", "non_finite_parameter", "det",
                                           "schatten_s1", "schatten_s2"), blown
