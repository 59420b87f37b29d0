"""Surviving a storage outage (database restart, network blip): a storage wrapper object that retries each call.

`ResilientStorage` implements Optuna's BaseStorage (and its heartbeat interface) by composition: it holds Optuna's
own RDBStorage inside Optuna's trial cache (what `optuna.create_study` would build from the RDBStorage) and forwards
every call to it through one retry loop. Nothing of Optuna is subclassed or patched: the private names it needs
are read in tuner.storage._optuna_compat only.

- A call that fails because the database cannot be reached (connection refused / dropped, server shutting down or
  starting up: `is_connection_failure`) is retried with backoff until it answers again, for at most
  `outage_limit_s` (10 min by default); the first failure and the recovery are logged with the masked URL. After
  that bound `StorageUnavailable` (exit 75: not a user error; `tuner launch` restarts the worker) is raised. Why a
  storage wrapper and not a retry around `study.optimize`: Optuna's `_run_trial` cannot record a trial that finished
  during the outage (its error path itself reads the storage), so the result would be lost.
  Retrying a write whose commit did reach the server is safe: attribute writes are upserts, a duplicate param row
  is an ignored IntegrityError, and a repeated finishing `set_trial_state_values` is recognised (the trial already
  holds that state and those values). Two rare cases are not: a lost acknowledgement of `create_new_trial` or of a
  WAITING -> RUNNING claim can leave a trial nobody runs (RUNNING without a heartbeat), because Optuna gives the
  caller no way to tell its own commit from another process's.
- A permanent error (a read-only or corrupt SQLite file, a wrong password, a missing database) is not an outage:
  it is raised at once as a one-line StorageError (`permanent_error`), never retried.
- `abort` (a StopSignal the worker's SIGTERM/SIGINT handler sets): a call waiting out an outage gives up at once
  with StorageInterrupted (exit 128 + signal), so a signal is honoured within seconds even while the database is
  down; the unfinished trial is failed by the heartbeat and retried elsewhere.
- `record_heartbeat` never raises (Optuna's heartbeat thread has no error handling and would die, leaving the trial
  to go stale): a failed beat is logged and the next one is tried on time.
- For `grace_period` seconds after an outage this process has seen, it fails no trial as stale: the other workers'
  heartbeats could not be recorded during it either, so their silence is no sign that they died.
- The attrs and intermediate values of a trial its worker holds (`writes.hold`) are kept in `writes`
  (tuner.storage.write_buffer) and written in one transaction at its flush points: its stored progress, its
  heartbeat, its state change, the worker's stop. Every other write goes straight through.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Container, Sequence
from typing import Any, TypeVar

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import StorageInterrupted, StorageUnavailable
from tuner.storage._optuna_compat import (
    FrozenStudy,
    HeartbeatStorage,
    cached_storage,
    heartbeat_ages_s,
    rdb_stale_trial_ids,
    write_finished_trial_user_attrs,
    write_trial_writes,
)
from tuner.storage.failures import detail as _detail
from tuner.storage.failures import is_connection_failure, permanent_error
from tuner.storage.urls import mask_url
from tuner.storage.write_buffer import TrialWriteBuffer, TrialWrites

log = logging.getLogger(__name__)

OUTAGE_LIMIT_S = 600.0  # how long storage calls wait for an unreachable database before giving up
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0  # short enough that a worker notices a restarted server within seconds
T = TypeVar("T")

__all__ = ["OUTAGE_LIMIT_S", "ResilientStorage", "StopSignal", "StorageUnavailable", "is_connection_failure"]


class StopSignal(threading.Event):
    """An Event that remembers which signal set it (the worker's SIGTERM/SIGINT handler): the exit code is 128 +
    `signum` when the process gives up a storage call because of it."""

    signum: int = signal.SIGTERM

    def set_by(self, signum: int) -> None:
        self.signum = int(signum)
        self.set()


class ResilientStorage(BaseStorage, HeartbeatStorage):
    """A storage that waits out a database outage (see the module docstring). Built by
    tuner.storage.connect.open_storage around the RDBStorage it opened.

    backend: the RDBStorage (its URL, engine, heartbeat interval and grace period are this storage's).
    outage_limit_s: how long one call waits for an unreachable database. abort: set to give up waiting at once."""

    def __init__(self, backend: RDBStorage, *, outage_limit_s: float = OUTAGE_LIMIT_S, abort: StopSignal | None = None):
        self.backend = backend
        self._inner = cached_storage(backend)
        self.outage_limit_s = float(outage_limit_s)
        self.abort = abort
        self._state_lock = threading.Lock()
        self._outage_since: float | None = None  # monotonic time of the first failure of the current outage
        self._last_recovery: float | None = None  # monotonic time the database answered again after an outage
        self._beat_failing = False
        self._stale_hold_logged = False
        # Held trial writes (see the module docstring); a held trial's attrs are read from the database once.
        self.writes = TrialWriteBuffer(
            read=lambda tid: self._call("get_trial", lambda: self._inner.get_trial(tid)),
            write=lambda tid, w: write_trial_writes(
                self.backend, tid, w.user_attrs, w.system_attrs, w.intermediate_values
            ),
            retried=self._call,
        )

    # --- what callers read off an RDBStorage ---
    @property
    def url(self) -> str:
        return str(self.backend.url)

    @property
    def engine(self) -> Any:
        return self.backend.engine

    @property
    def heartbeat_interval(self) -> int | None:
        return self.backend.heartbeat_interval

    @property
    def grace_period(self) -> int | None:
        return self.backend.grace_period

    def remove_session(self) -> None:
        self.backend.remove_session()

    # --- outage bookkeeping (shared by the main thread and the heartbeat thread) ---
    def _outage_failure(self, exc: BaseException, what: str) -> float:
        """Note a connection failure; returns the monotonic start of the outage."""
        now = time.monotonic()
        with self._state_lock:
            first = self._outage_since is None
            if first:
                self._outage_since = now
            since = now if self._outage_since is None else self._outage_since
        if first:
            log.warning(
                "storage %s unreachable (%s, in %s); retrying with backoff for up to %.0f s",
                mask_url(self.url),
                _detail(exc, self.url),
                what,
                self.outage_limit_s,
            )
        return since

    def _outage_over(self) -> None:
        with self._state_lock:
            since, self._outage_since = self._outage_since, None
            if since is not None:
                self._last_recovery = time.monotonic()
                self._stale_hold_logged = False
        if since is not None:
            log.warning("storage %s is back after %.1f s; carrying on", mask_url(self.url), time.monotonic() - since)

    def _call(self, name: str, fn: Callable[[], T]) -> T:
        """`fn()` (one storage call), retried through an outage; permanent errors raised at once as one line."""
        failed_once = False
        delay = BACKOFF_FIRST_S
        while True:
            try:
                result = fn()
            except optuna.exceptions.UpdateFinishedTrialError:
                raise
            except Exception as exc:
                permanent = permanent_error(exc, self.url)
                if permanent is not None:
                    raise permanent from exc
                if not is_connection_failure(exc):
                    raise
                failed_once = True
                since = self._outage_failure(exc, name)
                left = self.outage_limit_s - (time.monotonic() - since)
                if self.abort is not None and self.abort.is_set():
                    sig = signal.Signals(self.abort.signum).name
                    raise StorageInterrupted(
                        f"{sig} received while storage {mask_url(self.url)} was unreachable; stopped without waiting "
                        "for it (the unfinished trial is retried once its heartbeat lapses)",
                        self.abort.signum,
                    ) from None
                if left <= 0:
                    raise StorageUnavailable(
                        f"storage {mask_url(self.url)} unreachable for {self.outage_limit_s:.0f} s "
                        f"({_detail(exc, self.url)}); check that the database server is running and reachable, "
                        "then start the worker again (its unfinished trial is retried)"
                    ) from exc
                self.backend.remove_session()  # this thread's broken session; pre-ping replaces dead pool links
                if self.abort is not None:
                    self.abort.wait(min(delay, left))  # a signal ends the wait at once
                else:
                    time.sleep(min(delay, left))
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if failed_once or self._outage_since is not None:
                self._outage_over()
            return result

    def retrying(self, name: str, fn: Callable[[], T]) -> T:
        """Run `fn()` (a database operation of the caller's own, e.g. the study lock) through the retry loop."""
        return self._call(name, fn)

    # --- BaseStorage, forwarded to Optuna's cached RDB storage through the retry loop ---
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self._call("create_new_study", lambda: self._inner.create_new_study(directions, study_name))

    def delete_study(self, study_id: int) -> None:
        self._call("delete_study", lambda: self._inner.delete_study(study_id))

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call("set_study_user_attr", lambda: self._inner.set_study_user_attr(study_id, key, value))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call("set_study_system_attr", lambda: self._inner.set_study_system_attr(study_id, key, value))

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._call("get_study_id_from_name", lambda: self._inner.get_study_id_from_name(study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._call("get_study_name_from_id", lambda: self._inner.get_study_name_from_id(study_id))

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._call("get_study_directions", lambda: self._inner.get_study_directions(study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call("get_study_user_attrs", lambda: self._inner.get_study_user_attrs(study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call("get_study_system_attrs", lambda: self._inner.get_study_system_attrs(study_id))

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._call("get_all_studies", self._inner.get_all_studies)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._call("create_new_trial", lambda: self._inner.create_new_trial(study_id, template_trial))

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution
    ) -> None:
        self._call(
            "set_trial_param",
            lambda: self._inner.set_trial_param(trial_id, param_name, param_value_internal, distribution),
        )

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._call(
            "get_trial_id_from_study_id_trial_number",
            lambda: self._inner.get_trial_id_from_study_id_trial_number(study_id, trial_number),
        )

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._call("get_trial_number_from_id", lambda: self._inner.get_trial_number_from_id(trial_id))

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._call("get_trial_param", lambda: self._inner.get_trial_param(trial_id, param_name))

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        if not (self.writes.holds(trial_id) and state.is_finished()):
            return self._set_state_values(trial_id, state, values, None)
        try:  # a finished trial has every write that was set on it: they go in the same transaction
            return self.writes.finish(trial_id, lambda held: self._set_state_values(trial_id, state, values, held))
        finally:  # recorded, or finished by another worker (stale: UpdateFinishedTrialError), whose late writes go
            self.writes.release(trial_id)

    def _set_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None, held: TrialWrites | None
    ) -> bool:
        attempt = {"n": 0}

        def finish() -> bool:
            attempt["n"] += 1
            try:
                if held:  # the trial's held writes and its end in one transaction
                    h, end = held, (state, values)
                    write_trial_writes(self.backend, trial_id, h.user_attrs, h.system_attrs, h.intermediate_values, end)
                    return True
                return self._inner.set_trial_state_values(trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A retry after a lost acknowledgement: the first attempt had committed exactly this.
                if attempt["n"] > 1 and self._already_set(trial_id, state, values):
                    return True
                raise

        return self._call("set_trial_state_values", finish)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        if self.writes.set_intermediate_value(trial_id, step, intermediate_value):
            return
        self._call(
            "set_trial_intermediate_value",
            lambda: self._inner.set_trial_intermediate_value(trial_id, step, intermediate_value),
        )

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if self.writes.set_user_attr(trial_id, key, value):
            return
        self._call("set_trial_user_attr", lambda: self._inner.set_trial_user_attr(trial_id, key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if self.writes.set_system_attr(trial_id, key, value):
            return
        self._call("set_trial_system_attr", lambda: self._inner.set_trial_system_attr(trial_id, key, value))

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        held = self.writes.user_attrs(trial_id)
        if held is not None:
            return held
        return self._call("get_trial_user_attrs", lambda: self._inner.get_trial_user_attrs(trial_id))

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        held = self.writes.system_attrs(trial_id)
        if held is not None:
            return held
        return self._call("get_trial_system_attrs", lambda: self._inner.get_trial_system_attrs(trial_id))

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self._call("get_trial_params", lambda: self._inner.get_trial_params(trial_id))

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self.writes.overlay(self._call("get_trial", lambda: self._inner.get_trial(trial_id)))

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        trials = self._call("get_all_trials", lambda: self._inner.get_all_trials(study_id, deepcopy, states))
        return [self.writes.overlay(t) for t in trials] if self.writes.held_ids() else trials

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        return self._call("get_n_trials", lambda: self._inner.get_n_trials(study_id, state))

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._call("get_best_trial", lambda: self._inner.get_best_trial(study_id))

    def _already_set(self, trial_id: int, state: TrialState, values: Sequence[float] | None) -> bool:
        """After a retried finishing write: does the trial already hold exactly what we asked for?"""
        trial = self.backend.get_trial(trial_id)
        if trial.state != state:
            return False
        want = None if values is None else [float(v) for v in values]
        have = None if trial.values is None else [float(v) for v in trial.values]
        return want == have if want is not None else True

    # --- heartbeat ---
    def get_heartbeat_interval(self) -> int | None:
        return self.backend.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.backend.get_heartbeat_stale_trial_callback()

    def record_heartbeat(self, trial_id: int) -> None:
        """One beat, then the trial's held writes (one attempt each); never raises (it runs in Optuna's heartbeat
        thread, which dies on an exception)."""
        try:
            self.backend.record_heartbeat(trial_id)
        except Exception as exc:  # noqa: BLE001 - the heartbeat thread must survive any failed beat
            self.backend.remove_session()
            if is_connection_failure(exc):
                self._outage_failure(exc, "heartbeat")
            if not self._beat_failing:
                log.warning(
                    "heartbeat of trial id %d not recorded (%s); still beating every %s s",
                    trial_id,
                    _detail(exc, self.url),
                    self.heartbeat_interval,
                )
            self._beat_failing = True
            return
        if self._beat_failing:
            self._beat_failing = False
            log.warning("heartbeat of trial id %d recorded again", trial_id)
        if self._outage_since is not None:
            self._outage_over()
        self.writes.flush_on_beat(trial_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_period if self.grace_period is not None else 2 * (self.heartbeat_interval or 0)
        last = self._last_recovery
        if last is not None and time.monotonic() - last < grace:
            if not self._stale_hold_logged:
                self._stale_hold_logged = True
                log.warning(
                    "not failing stale trials for %.0f s after the storage outage: other workers' "
                    "heartbeats could not be recorded during it either",
                    grace - (time.monotonic() - last),
                )
            return []
        return self._call("stale_trial_ids", lambda: rdb_stale_trial_ids(self.backend, study_id))

    def heartbeat_age_s(self, trial_id: int) -> float | None:
        """Seconds since the trial's last heartbeat by the database's clock (None: it never beat)."""
        return self._call("heartbeat_age_s", lambda: heartbeat_ages_s(self.engine, trial_id_=trial_id).get(trial_id))

    def set_finished_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Write user attrs on a trial that has already finished (Optuna refuses that; used only to record why a
        heartbeat-stale trial failed, right after this process failed it)."""
        self._call(
            "set_finished_trial_user_attrs", lambda: write_finished_trial_user_attrs(self.engine, trial_id, attrs)
        )
