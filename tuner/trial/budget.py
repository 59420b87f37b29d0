"""The study's shared trial budget, and re-queueing interrupted trials.

The take is exact: a worker holds the study lock (tuner.storage.study_lock: a Postgres advisory lock, or a flock
beside the SQLite file) from "is budget left beyond the trials running now?" until its trial is RUNNING in storage
(the objective's first act releases it), so workers starting at the same moment cannot both take the last trial.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.errors import TunerError
from tuner.storage.resilient import OUTAGE_LIMIT_S, is_connection_failure
from tuner.storage.study_lock import StudyLock

log = logging.getLogger(__name__)


COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
WAIT_POLL_S = 1.0


def counted_trials(study: optuna.Study) -> int:
    """Finished trials that count toward the budget: COMPLETE + PRUNED + FAIL, minus FAILs a retry replaced."""
    trials = study.get_trials(deepcopy=False)
    retried: set[int] = set()
    for t in trials:
        retried.update(t.system_attrs.get("retry_history", ()))
    return sum(
        1 for t in trials if t.state in COUNTED_STATES and not (t.state == TrialState.FAIL and t.number in retried)
    )


def deadline_passed(deadline: float | None) -> bool:
    """Whether a --stop-after deadline (a time.monotonic() value; None: no window) has passed."""
    return deadline is not None and time.monotonic() >= deadline


class StudyBudget:
    """Whether this worker may take another trial: the study holds fewer than n_trials counted trials, beyond the
    trials others are running now, and the worker's window (`deadline`, a time.monotonic() value: --stop-after) is
    still open. `take_turn` returns True holding the study lock; `release` (called when the taken trial is RUNNING,
    or if taking it failed) lets the next worker check. `window_ended` is True once take_turn said no because the
    deadline had passed."""

    def __init__(
        self,
        n_trials: int,
        stop_event: threading.Event,
        lock: StudyLock | None = None,
        deadline: float | None = None,
    ):
        self.n_trials = int(n_trials)
        self.stop_event = stop_event
        self.lock = lock
        self.deadline = deadline
        self.window_ended = False

    def past_deadline(self) -> bool:
        return deadline_passed(self.deadline)

    def remaining(self, study: optuna.Study) -> tuple[int, int]:
        """(budget not yet counted, trials running now) for the whole study."""
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        return self.n_trials - counted_trials(study), running

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def take_turn(self, study: optuna.Study) -> bool:
        """True when this worker should start another trial (the study lock is then held until `release`); False
        when the budget is spent, the deadline has passed (checked before the lock and the database, so a worker
        waiting on others' trials or on a database outage stops at it too) or we are stopping.

        A storage error that is a connection failure is temporary here (the database restarting): the wait goes
        on, for at most OUTAGE_LIMIT_S in a row."""

        outage_since: float | None = None
        while not self.stop_event.is_set():
            if self.past_deadline():
                self.window_ended = True
                return False
            try:
                if self.lock is not None and not self.lock.acquire(self.stop_event):
                    return False
                left, running = self.remaining(study)
                if left <= 0:
                    self.release()
                    return False
                if left > running:
                    return True
                self.release()
                # Every remaining trial is running on another worker: wait; if one dies, the heartbeat fails it,
                # its retry is enqueued and the budget opens again.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    optuna.storages.fail_stale_trials(study)
                outage_since = None
            except TunerError:
                self.release()
                raise
            except Exception as exc:
                self.release()
                if not is_connection_failure(exc):
                    raise
                now = time.monotonic()
                if outage_since is None:
                    outage_since = now
                    log.warning(
                        "worker: storage error while waiting for a turn (%s); treating it as temporary "
                        "for up to %.0f s",
                        type(exc).__name__,
                        OUTAGE_LIMIT_S,
                    )
                elif now - outage_since > OUTAGE_LIMIT_S:
                    raise
            self.stop_event.wait(WAIT_POLL_S)
        return False


class RetryInterrupted:
    """optimize() callback: re-enqueue a trial that ended `interrupted` (same params), then stop the worker.

    The retry carries the system attrs RetryHeartbeatStaleTrialCallback writes (`failed_trial`: the original
    trial's number, `retry_history`), so both kinds of retry read the same and the budget counts the replaced trial
    once; unlike that callback it does not copy the user attrs (end_reason, error_summary, ... of the interrupted
    attempt would otherwise stick to the retry)."""

    def __init__(self, stop_event: threading.Event):
        self.stop_event = stop_event

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and trial.user_attrs.get("end_reason") == "interrupted":
            enqueue_retry(study, trial)
        if self.stop_event.is_set():
            study.stop()


def enqueue_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Add a WAITING copy of `trial`'s params that records which trial it replaces."""
    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    system_attrs = {"failed_trial": trial.system_attrs.get("failed_trial", trial.number), "retry_history": history}
    user_attrs: dict[str, Any] = {k: trial.user_attrs[k] for k in ("preset", "reference") if k in trial.user_attrs}
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    )
