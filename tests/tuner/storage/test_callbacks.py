"""tuner.storage.callbacks: a heartbeat-stale trial is recorded as `worker_lost` with the age of its last beat, and
its retry keeps the trial's own attrs but none of the dead attempt's (ATTEMPT_ATTRS)."""

from __future__ import annotations

import logging
import re
import time

import optuna
import pytest
from optuna.trial import TrialState

from tuner.storage.callbacks import WorkerLostRetryCallback
from tuner.storage.connect import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings(  # heartbeats outside study.optimize and fail_stale_trials are deliberate here
    "ignore:Heartbeat of storage:UserWarning", "ignore::optuna.exceptions.ExperimentalWarning"
)

DEAD_ATTEMPT = {"end_reason": "error", "error_summary": "old attempt", "worker": "h:1", "config": {"a": 1}}


def _study(storage):
    return optuna.create_study(storage=storage, directions=["minimize"], study_name="s")


def test_stale_trial_is_recorded_as_worker_lost_and_its_retry_starts_clean(storage_url):
    storage = open_storage(storage_url, heartbeat_interval_s=1, grace_period_s=2)
    assert isinstance(storage.get_heartbeat_stale_trial_callback(), WorkerLostRetryCallback)
    study = _study(storage)
    study.enqueue_trial({"x": 0.5}, user_attrs={"preset": "tiny"})
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    for k, v in DEAD_ATTEMPT.items():
        trial.set_user_attr(k, v)
    storage.record_heartbeat(trial._trial_id)
    time.sleep(3.5)
    optuna.storages.fail_stale_trials(study)
    fresh = optuna.load_study(study_name="s", storage=open_storage(storage_url))
    failed, retry = fresh.trials
    assert failed.state == TrialState.FAIL and failed.user_attrs["end_reason"] == "worker_lost"
    m = re.fullmatch(r"worker heartbeat lost \(no heartbeat for (\d+) s\)", failed.user_attrs["error_summary"])
    assert m and 3 <= int(m.group(1)) <= 10, failed.user_attrs["error_summary"]
    assert retry.state == TrialState.WAITING and retry.params == {"x": 0.5}
    assert retry.system_attrs["failed_trial"] == failed.number and retry.system_attrs["retry_history"] == [0]
    assert retry.user_attrs == {"preset": "tiny", "config": {"a": 1}}  # ending attrs of the dead attempt dropped


def test_a_storage_that_cannot_record_it_still_gets_a_clean_retry(caplog):
    """The callback on a storage without `set_finished_trial_user_attrs` (Optuna's in-memory one): the reason is
    logged instead of recorded, and the retry is still enqueued without the dead attempt's attrs."""
    study = optuna.create_study(directions=["minimize"])
    study.enqueue_trial({"x": 0.25}, user_attrs={"preset": "tiny"})
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    for k, v in DEAD_ATTEMPT.items():
        trial.set_user_attr(k, v)
    study.tell(trial, state=TrialState.FAIL)
    with caplog.at_level(logging.WARNING, logger="tuner.storage.callbacks"):
        WorkerLostRetryCallback()(study, study.trials[0])
    assert "cannot record it on the trial" in caplog.text and "re-queueing it (retry history [0])" in caplog.text
    assert "the grace period; it never beat" in caplog.text  # no heartbeat age to report
    retry = study.trials[1]
    assert retry.state == TrialState.WAITING and retry.params == {"x": 0.25}
    assert retry.user_attrs == {"preset": "tiny", "config": {"a": 1}}
