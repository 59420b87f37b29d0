"""Surviving a storage outage (database restart, network blip) and a lost worker, and per-worker sampler seeds.

- `ResilientRDBStorage`: Optuna's RDBStorage whose storage calls, when they fail because the database cannot be
  reached (connection refused / dropped, server shutting down or starting up), are retried with backoff until it
  answers again, for at most `outage_limit_s` (10 min by default); the first failure and the recovery are logged
  with the masked URL. After that bound `StorageUnavailable` is raised. Why a storage subclass and not a retry
  around `study.optimize`: Optuna's `_run_trial` cannot record a trial that finished during the outage (its error
  path itself reads the storage and ends in `UnboundLocalError: updated_state`), so the result would be lost.
  Retrying a write whose commit did reach the server is safe: attribute writes are upserts, a duplicate param row
  is an ignored IntegrityError, and a repeated finishing `set_trial_state_values` is recognised (the trial already
  holds that state and those values). Two rare cases are not: a lost acknowledgement of `create_new_trial` or of a
  WAITING -> RUNNING claim can leave a trial nobody runs (RUNNING without a heartbeat), because Optuna gives the
  caller no way to tell its own commit from another process's.
- `record_heartbeat` never raises (Optuna's heartbeat thread has no error handling and would die, leaving the trial
  to go stale): a failed beat is logged and the next one is tried on time.
- For `grace_period` seconds after an outage this process has seen, it fails no trial as stale: the other workers'
  heartbeats could not be recorded during the outage either, so their silence is no sign that they died.
- `WorkerLostRetryCallback`: RetryHeartbeatStaleTrialCallback that also records on the failed trial
  `end_reason = worker_lost` and `error_summary = "worker heartbeat lost (no heartbeat for N s)"`, and does not
  copy the dead attempt's ending user attrs (`tuner.storage.trial_attrs.ATTEMPT_ATTRS`) into the retry.
- `worker_seed(seed, key)`: a study seed mixed with a worker's id, so parallel workers draw distinct sequences.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from tuner.errors import StorageError
from tuner.storage._optuna_compat import (
    StaleTrialHook,
    base_stale_trial_ids,
    heartbeat_ages_s,
    retry_wrapped,
)
from tuner.storage.urls import mask_text, mask_url

log = logging.getLogger(__name__)

OUTAGE_LIMIT_S = 600.0  # how long storage calls wait for an unreachable database before giving up
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0  # short enough that a worker notices a restarted server within seconds


class StorageUnavailable(StorageError):
    """The database stayed unreachable for longer than the outage limit."""


def is_connection_failure(exc: BaseException) -> bool:
    """True when `exc` (or an exception it was raised from) says the database could not be reached or the
    connection dropped, i.e. trying again later can succeed. Data errors (integrity, too long) are not."""
    import sqlalchemy.exc as sa_exc

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (sa_exc.IntegrityError, sa_exc.DataError, sa_exc.ProgrammingError)):
            return False
        if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)):
            return True
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        e = e.__cause__ or e.__context__
    return False


def _detail(exc: BaseException, url: str) -> str:
    root: BaseException = exc
    while root.__cause__ is not None:
        root = root.__cause__
    orig = getattr(root, "orig", None) or root
    text = " ".join(str(orig).split())[:200]
    return f"{type(orig).__name__}: {mask_text(text, url)}"


@retry_wrapped("_call")
class ResilientRDBStorage(StaleTrialHook):
    """RDBStorage that waits out a database outage (see the module docstring).

    Built by tuner.storage.connect.open_storage."""

    def __init__(self, url: str, *, outage_limit_s: float = OUTAGE_LIMIT_S, **kwargs: Any):
        self._init_resilience(outage_limit_s)
        super().__init__(url, **kwargs)

    def _init_resilience(self, outage_limit_s: float) -> None:
        self.outage_limit_s = float(outage_limit_s)
        self._local = threading.local()
        self._state_lock = threading.Lock()
        self._outage_since: float | None = None  # monotonic time of the first failure of the current outage
        self._last_recovery: float | None = None  # monotonic time the database answered again after an outage
        self._beat_failing = False
        self._stale_hold_logged = False

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        for k in ("_local", "_state_lock"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        limit = state.get("outage_limit_s", OUTAGE_LIMIT_S)
        super().__setstate__(state)
        self._init_resilience(limit)

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

    def _call(self, name: str, base: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if getattr(self._local, "depth", 0):
            return base(self, *args, **kwargs)
        self._local.depth = 1
        try:
            failed_once = False
            delay = BACKOFF_FIRST_S
            while True:
                try:
                    result = base(self, *args, **kwargs)
                except optuna.exceptions.UpdateFinishedTrialError:
                    if failed_once and name == "set_trial_state_values" and self._already_set(*args, **kwargs):
                        self._outage_over()
                        return True  # the attempt that lost its connection had committed
                    raise
                except Exception as exc:
                    if not is_connection_failure(exc):
                        raise
                    failed_once = True
                    since = self._outage_failure(exc, name)
                    left = self.outage_limit_s - (time.monotonic() - since)
                    if left <= 0:
                        raise StorageUnavailable(
                            f"storage {mask_url(self.url)} unreachable for {self.outage_limit_s:.0f} s "
                            f"({_detail(exc, self.url)}); check that the database server is running and reachable, "
                            "then start the worker again (its unfinished trial is retried)"
                        ) from exc
                    self._drop_session()
                    time.sleep(min(delay, left))
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    continue
                if failed_once or self._outage_since is not None:
                    self._outage_over()
                return result
        finally:
            self._local.depth = 0

    def _drop_session(self) -> None:
        try:
            self.scoped_session.remove()  # this thread's broken session; the pool's pre-ping replaces dead links
        except Exception:  # noqa: BLE001 - closing a session on a dead connection may itself fail; nothing to keep
            pass

    def _already_set(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        """After a retried finishing write: does the trial already hold exactly what we asked for?"""
        trial = RDBStorage.get_trial(self, trial_id)
        if trial.state != state:
            return False
        want = None if values is None else [float(v) for v in values]
        have = None if trial.values is None else [float(v) for v in trial.values]
        return want == have if want is not None else True

    # --- heartbeat ---

    def record_heartbeat(self, trial_id: int) -> None:
        """One beat; never raises (it runs in Optuna's heartbeat thread, which dies on an exception)."""
        try:
            RDBStorage.record_heartbeat(self, trial_id)
        except Exception as exc:
            self._drop_session()
            if is_connection_failure(exc):
                self._outage_failure(exc, "heartbeat")
                if not self._beat_failing:
                    log.warning(
                        "heartbeat of trial id %d not recorded (%s); still beating every %s s",
                        trial_id,
                        _detail(exc, self.url),
                        self.heartbeat_interval,
                    )
            else:
                log.warning(
                    "heartbeat of trial id %d not recorded: %s; still beating every %s s",
                    trial_id,
                    _detail(exc, self.url),
                    self.heartbeat_interval,
                    exc_info=not self._beat_failing,
                )
            self._beat_failing = True
            return
        if self._beat_failing:
            self._beat_failing = False
            log.warning("heartbeat of trial id %d recorded again", trial_id)
        if self._outage_since is not None:
            self._outage_over()

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
        ids: list[int] = self._call("stale_trial_ids", base_stale_trial_ids, (study_id,), {})
        return ids

    def heartbeat_age_s(self, trial_id: int) -> float | None:
        """Seconds since the trial's last heartbeat by the database's clock (None: it never beat)."""

        def read(_self: ResilientRDBStorage) -> float | None:
            return heartbeat_ages_s(_self.engine, trial_id_=trial_id).get(trial_id)

        age: float | None = self._call("heartbeat_age_s", read, (), {})
        return age

    def set_finished_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Write user attrs on a trial that has already finished (Optuna refuses that; used only to record why a
        heartbeat-stale trial failed, right after this process failed it)."""

        def write(_self: ResilientRDBStorage) -> None:
            _self._local.allow_finished = True
            try:
                for k, v in attrs.items():
                    RDBStorage.set_trial_user_attr(_self, trial_id, k, v)
            finally:
                _self._local.allow_finished = False

        self._call("set_finished_trial_user_attrs", write, (), {})

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        if getattr(self._local, "allow_finished", False):
            return
        super().check_trial_is_updatable(trial_id, trial_state)
