"""Heartbeat-stale trials: record why they failed (`worker_lost`) and give their retry a clean slate."""

from __future__ import annotations

import copy
import logging

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from tuner.storage._optuna_compat import storage_backend, trial_id
from tuner.storage.trial_attrs import ATTEMPT_ATTRS, EndReason, retry_details

log = logging.getLogger(__name__)


class WorkerLostRetryCallback(RetryHeartbeatStaleTrialCallback):
    """RetryHeartbeatStaleTrialCallback that records why the stale trial failed and gives its retry a clean slate.

    The failed trial gets `end_reason = worker_lost` and `error_summary = "worker heartbeat lost (no heartbeat for
    N s)"`; the retry (same params, system attrs `failed_trial` / `retry_history` as Optuna writes them) inherits
    the failed trial's user attrs except those in ATTEMPT_ATTRS."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        backend = storage_backend(study)
        age = backend.heartbeat_age_s(trial_id(trial)) if hasattr(backend, "heartbeat_age_s") else None
        summary = "worker heartbeat lost (no heartbeat for " + (
            f"{age:.0f} s)" if age is not None else "the grace period; it never beat)"
        )
        attrs = {"end_reason": EndReason.WORKER_LOST.value, "error_summary": summary}
        if hasattr(backend, "set_finished_trial_user_attrs"):
            backend.set_finished_trial_user_attrs(trial_id(trial), attrs)
        else:
            log.warning(
                "trial %d: %s (storage %s cannot record it on the trial)", trial.number, summary, type(backend).__name__
            )
        log.warning(
            "trial %d failed: %s; re-queueing it (retry history %s)",
            trial.number,
            summary,
            list(trial.system_attrs.get("retry_history", [])) + [trial.number],
        )
        clean = copy.deepcopy(trial)
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
        clean.system_attrs = retry_details(trial.system_attrs)  # its config and estimate, not its curve
        super().__call__(study, clean)
