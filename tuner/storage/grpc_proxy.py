"""Optuna's gRPC storage proxy: `tuner proxy` serves a study's database to many workers through a few database
connections; a worker opens `grpc://HOST:PORT` instead of the database URL.

Why: every worker process holds its own SQLAlchemy pool (and its heartbeat thread another connection), so 32
workers on one Postgres hold 32-64 connections and as many concurrent transactions. Behind one proxy they share the
proxy's pool (`--threads` connections at most, default 4), and Optuna's client keeps a per-process cache of
finished trials, so a worker reads only what changed.

Heartbeats (Optuna 5.0's `GrpcStorageProxy` is a plain `BaseStorage` and the gRPC API has no heartbeat calls):
- A client (`ProxyStorage`) beats like a direct worker, every `--heartbeat-s` (default 30 s), as a write of the
  trial system attr `tuner:heartbeat`; the tuner's proxy records that write as a row of the database's heartbeat
  table instead (tuner.storage._optuna_compat.grpc_proxy_server), by the database's clock.
- The proxy, not the workers, fails stale trials: every `--heartbeat-s` it runs Optuna's stale-trial check on
  every study with its `--grace-s` (default 120 s) and tuner.storage.callbacks.WorkerLostRetryCallback, so a
  worker killed mid-trial has its trial failed `worker_lost` and re-queued, as without the proxy. A worker's
  `--grace-s` is therefore refused with a grpc:// storage (the proxy's applies); keep the workers'
  `--heartbeat-s` well under the proxy's `--grace-s`.
- A proxy other than `tuner proxy` (Optuna's own `run_grpc_proxy_server`) stores the beats as a plain system attr
  and fails nothing: a killed worker's trial then stays RUNNING.
Outages: the proxy's own storage (tuner.storage.resilient) waits out a database restart, so workers just see slower
calls. The proxy itself going away: `ProxyStorage` retries calls that failed with UNAVAILABLE (no server) with
backoff for up to the outage limit, then raises StorageUnavailable (one line, the worker exits 2).
`tuner status`'s heartbeat ages need the database: through a proxy they are not shown.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, GrpcStorageProxy

from tuner.errors import StorageError, StorageInterrupted
from tuner.storage._optuna_compat import ProxyHeartbeat
from tuner.storage.resilient import BACKOFF_FIRST_S, BACKOFF_MAX_S, OUTAGE_LIMIT_S, StopSignal, StorageUnavailable
from tuner.storage.urls import grpc_host_port

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 5.0  # a worker's first contact: the proxy must answer within this
INSTALL_HINT = "pip install 'phase1-tuner[proxy]' (grpcio, protobuf)"


def require_grpc() -> None:
    """StorageError with the install command when grpcio or protobuf is missing."""
    missing = [m for m in ("grpc", "google.protobuf") if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        raise StorageError(
            f"the gRPC storage proxy needs grpcio and protobuf ({', '.join(missing)} missing); {INSTALL_HINT}"
        )


def _unavailable(exc: BaseException) -> bool:
    import grpc

    return isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE


def _retried(name: str, base: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(base)
    def method(self: ProxyStorage, *args: Any, **kwargs: Any) -> Any:
        delay, since = BACKOFF_FIRST_S, None
        while True:
            try:
                result = base(self, *args, **kwargs)
            except Exception as exc:
                if not _unavailable(exc):
                    raise
                now = time.monotonic()
                if since is None:
                    since = now
                    log.warning(
                        "storage proxy %s not answering (in %s); retrying for up to %.0f s",
                        self.url,
                        name,
                        self.outage_limit_s,
                    )
                if now - since >= self.outage_limit_s:
                    raise StorageUnavailable(
                        f"storage proxy {self.url} did not answer for {self.outage_limit_s:.0f} s; start "
                        "`tuner proxy` again (or point --storage at the database), then start the worker again"
                    ) from None
                pause = min(delay, self.outage_limit_s - (now - since))
                if self.abort is not None:
                    if self.abort.wait(pause):
                        raise StorageInterrupted(
                            f"storage proxy {self.url} not answering; stopped by a signal while waiting for it",
                            self.abort.signum,
                        ) from None
                else:
                    time.sleep(pause)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if since is not None:
                log.warning("storage proxy %s is back after %.1f s", self.url, time.monotonic() - since)
            return result

    return method


class ProxyStorage(ProxyHeartbeat, GrpcStorageProxy):
    """Optuna's gRPC proxy client with the tuner's storage surface: `url`, `remove_session()`, heartbeats through
    the tuner's proxy, and calls that wait for a proxy that is restarting (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        outage_limit_s: float = OUTAGE_LIMIT_S,
        heartbeat_interval_s: int | None = None,
        abort: StopSignal | None = None,
    ) -> None:
        host, port = grpc_host_port(url)
        self.url = url
        self.outage_limit_s = float(outage_limit_s)
        # the worker's stop signal, as on the resilient database storage (tuner.trial.worker reads it); a call
        # waiting for a restarting proxy ends when it is set
        self.abort = abort
        self.heartbeat_interval = None if heartbeat_interval_s is None else int(heartbeat_interval_s)
        self._beat_failing = False
        with warnings.catch_warnings():  # "experimental": the limits that matter are in this module's docstring
            warnings.simplefilter("ignore", ExperimentalWarning)
            super().__init__(host=host, port=port)

    def remove_session(self) -> None:
        """Nothing to release per thread (RDBStorage's API; the worker calls it when it ends)."""

    def record_heartbeat(self, trial_id: int) -> None:
        """One beat; never raises (Optuna's heartbeat thread dies on an exception, and the trial would go stale)."""
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:  # noqa: BLE001 - logged; the next beat is tried on time
            if not self._beat_failing:
                log.warning(
                    "heartbeat of trial id %d not recorded through %s (%s); still beating",
                    trial_id,
                    self.url,
                    type(exc).__name__,
                )
            self._beat_failing = True
            return
        if self._beat_failing:
            self._beat_failing = False
            log.warning("heartbeat of trial id %d recorded again", trial_id)


class ReadWriteGate:
    """Many readers or one writer. The proxy's trial reads are readers; its stale-trial sweep is the writer, so no
    worker reads the study between a stale trial's FAIL and its retry's creation (two commits): a worker counting
    its budget then would see the trial failed and no retry, count the budget spent, and stop."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._writing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


def sweep_stale_trials(storage: Any, stop: threading.Event, every_s: float, gate: ReadWriteGate) -> None:
    """The proxy's heartbeat check, until `stop` is set: every `every_s` seconds, Optuna's stale-trial check on every
    study of `storage` (an RDB storage opened with the grace period and tuner.storage.callbacks'
    WorkerLostRetryCallback: a stale trial is failed `worker_lost` and its retry queued), with the proxy's trial
    reads held off (`gate`) while a study has stale trials. A failed sweep is logged and tried again next time."""
    import optuna

    while not stop.wait(every_s):
        try:
            for summary in storage.get_all_studies():
                if not storage.stale_trial_ids(storage.get_study_id_from_name(summary.study_name)):
                    continue  # nothing to fail: no need to hold the readers off
                with warnings.catch_warnings(), gate.writing():
                    warnings.simplefilter("ignore")  # experimental / "heartbeat outside optimize"
                    study = optuna.load_study(study_name=summary.study_name, storage=storage)
                    optuna.storages.fail_stale_trials(study)
        except Exception as exc:  # noqa: BLE001 - the proxy keeps serving; the next sweep tries again
            log.warning("stale-trial check failed (%s: %s); next one in %.0f s", type(exc).__name__, exc, every_s)


# Every storage call of the client (the BaseStorage methods it implements; not close / wait_server_ready).
for _name, _base in list(vars(GrpcStorageProxy).items()):
    if callable(_base) and not _name.startswith("_") and _name in vars(BaseStorage):
        setattr(ProxyStorage, _name, _retried(_name, _base))


def open_proxy_storage(
    url: str,
    *,
    outage_limit_s: float = OUTAGE_LIMIT_S,
    heartbeat_interval_s: int | None = None,
    abort: StopSignal | None = None,
) -> ProxyStorage:
    """A client of the `tuner proxy` at `grpc://HOST:PORT` beating every `heartbeat_interval_s` (None: no beats);
    StorageError (one line) when grpc is missing or no proxy answers within READY_TIMEOUT_S."""
    require_grpc()
    storage = ProxyStorage(url, outage_limit_s=outage_limit_s, heartbeat_interval_s=heartbeat_interval_s, abort=abort)
    try:
        storage.wait_server_ready(timeout=READY_TIMEOUT_S)
    except ConnectionError:
        host, port = grpc_host_port(url)
        raise StorageError(
            f"no storage proxy answers at {url} within {READY_TIMEOUT_S:g} s; start one with "
            f"`tuner proxy --storage DATABASE_URL --host {host} --port {port}` or check the address"
        ) from None
    return storage
