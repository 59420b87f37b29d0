"""Storage: URL resolution, engine options, password masking, and the one function that builds a study.

Decisions (architecture.md):
- URL: `--storage` flag, else TUNER_STORAGE, else `sqlite:///<cwd>/tuner.db` (no server needed for the quickstart).
- Every RDB storage has heartbeats and `RetryHeartbeatStaleTrialCallback` (a worker killed mid-trial has its trial
  re-queued as WAITING after the grace period). Heartbeats only beat inside `study.optimize`.
- Postgres: `pool_pre_ping` (Optuna sets it only for MySQL; a long trial otherwise meets a connection the server or
  a NAT dropped while idle), `pool_recycle`, TCP keepalives and a connect timeout; before SQLAlchemy is involved the
  host is resolved and its port dialled with short timeouts, so an unreachable server fails in seconds with a
  message naming host and port (libpq's connect_timeout does not bound DNS resolution).
- A URL is only ever printed through `mask_url`.
- An open storage is a tuner.storage.resilient.ResilientStorage (a wrapper object around Optuna's RDBStorage): it
  waits out a database outage (calls retried with backoff, up to OUTAGE_LIMIT_S), its heartbeat never kills the
  heartbeat thread, and a heartbeat-stale trial is recorded as `end_reason = worker_lost` before its retry is queued.
- A worker opening its storage while the database is down waits for it (`wait_s`, up to the outage limit) instead
  of failing as if the URL were wrong: an outage is not a user error. Commands run by hand fail within 10 s.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from tuner.errors import StorageError, StorageInterrupted, StorageUnavailable
from tuner.storage.callbacks import WorkerLostRetryCallback
from tuner.storage.failures import is_connection_failure, permanent_error
from tuner.storage.grpc_proxy import ProxyStorage, open_proxy_storage
from tuner.storage.resilient import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    OUTAGE_LIMIT_S,
    ResilientStorage,
    StopSignal,
)
from tuner.storage.urls import (
    ENV_VAR,
    host_port,
    is_grpc_url,
    mask_text,
    mask_url,
    resolve_storage_url,
    sqlite_file,
)

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 30  # worker -> storage heartbeat period
GRACE_PERIOD_S = 120  # a RUNNING trial without a heartbeat for this long is stale and re-queued
MAX_RETRY = 3  # times a stale trial is re-queued
PREFLIGHT_S = 5.0  # DNS resolution + TCP dial together, before libpq is involved
CONNECT_TIMEOUT_S = 4  # libpq's connect_timeout (login) once the port answers -> under 10 s in all
POOL_RECYCLE_S = 300  # replace pooled connections older than this (idle-drop by servers, proxies, NAT)


def _preflight(url: str, host: str, port: int) -> None:
    """Resolve and dial host:port with short timeouts (DNS runs in a thread: getaddrinfo has no timeout).
    A name that does not resolve is taken for a typo (StorageError); a port that does not answer for an outage
    (_Unreachable)."""
    result: dict[str, Any] = {}

    def resolve() -> None:
        try:
            result["addrs"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            result["error"] = exc

    deadline = time.monotonic() + PREFLIGHT_S
    t = threading.Thread(target=resolve, daemon=True)
    t.start()
    t.join(PREFLIGHT_S)
    where = f"{host}:{port}"
    fix = f"check the host name and that the database server is running, or set --storage / {ENV_VAR}"
    if t.is_alive():
        raise StorageError(f"storage {mask_url(url)}: resolving host {where} timed out after {PREFLIGHT_S:g} s; {fix}")
    if "error" in result:
        raise StorageError(f"storage {mask_url(url)}: cannot resolve host {where} ({result['error']}); {fix}")
    last: Exception | None = None
    for family, kind, proto, _, addr in result["addrs"]:
        left = deadline - time.monotonic()
        if left <= 0:
            last = TimeoutError()
            break
        try:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(left)
                s.connect(addr)
                return
        except OSError as exc:
            last = exc
    reason = "timed out" if isinstance(last, socket.timeout) else str(last)
    raise _Unreachable(f"storage {mask_url(url)}: cannot connect to {where} ({reason}); {fix}")


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options for a storage URL (see the module docstring for why)."""
    _, _, backend = host_port(url)
    if backend == "postgresql":
        return {
            "pool_pre_ping": True,
            "pool_recycle": POOL_RECYCLE_S,
            "connect_args": {
                "connect_timeout": CONNECT_TIMEOUT_S,
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            },
        }
    if backend == "sqlite":
        # Several local workers share one file: wait for the write lock instead of failing at once.
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True, "pool_recycle": POOL_RECYCLE_S}


def open_storage(
    url: str,
    *,
    heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S,
    grace_period_s: int = GRACE_PERIOD_S,
    max_retry: int | None = MAX_RETRY,
    outage_limit_s: float = OUTAGE_LIMIT_S,
    wait_s: float = 0.0,
    abort: StopSignal | None = None,
    pool_size: int | None = None,
) -> ResilientStorage | ProxyStorage:
    """RDBStorage with heartbeats and stale-trial retry, inside the outage-resilient wrapper.

    wait_s: how long to wait for a database that cannot be reached now (connection refused, timed out or dropped
        while opening): 0 (commands a user runs by hand) raises StorageError within 10 s; a worker passes the outage
        limit, as a running worker waits out an outage, and gets StorageUnavailable (exit 75) after it. A permanent
        error (unknown host, wrong password, missing database, read-only file) is raised at once either way.
    abort: a StopSignal that ends the waiting (StorageInterrupted), and is handed to the storage for its calls.

    Once open, the storage waits out a database outage of up to `outage_limit_s` (tuner.storage.resilient): its calls
    are retried with backoff, a failed heartbeat is logged and the next one tried, and a stale trial's failure
    records `end_reason = worker_lost` before its retry is queued.
    pool_size: at most this many database connections (no overflow); default SQLAlchemy's (5 + 10 overflow).
    `grpc://HOST:PORT`: a `tuner proxy` client instead (tuner.storage.grpc_proxy: it beats every
    heartbeat_interval_s; the proxy applies its own grace period and retries)."""
    if is_grpc_url(url):
        return open_proxy_storage(
            url, outage_limit_s=outage_limit_s, heartbeat_interval_s=heartbeat_interval_s, abort=abort
        )
    if int(grace_period_s) < int(heartbeat_interval_s):
        raise StorageError(
            f"grace period {grace_period_s} s is shorter than the heartbeat interval "
            f"{heartbeat_interval_s} s: live trials would be failed as stale; give a grace period of "
            "several heartbeats, e.g. --heartbeat-s 30 --grace-s 120"
        )
    deadline = time.monotonic() + max(0.0, float(wait_s))
    delay, logged = BACKOFF_FIRST_S, False
    while True:
        try:
            rdb = _open_rdb(url, heartbeat_interval_s, grace_period_s, max_retry, pool_size)
            if logged:
                log.warning("storage %s answers; starting", mask_url(url))
            return ResilientStorage(rdb, outage_limit_s=outage_limit_s, abort=abort)
        except _Unreachable as exc:
            left = deadline - time.monotonic()
            if abort is not None and abort.is_set():
                raise StorageInterrupted(f"{exc}; stopped by a signal while waiting for it", abort.signum) from None
            if wait_s <= 0:
                raise StorageError(str(exc)) from None
            if left <= 0:
                raise StorageUnavailable(
                    f"{exc}; still unreachable after waiting {wait_s:.0f} s: start the worker again once the "
                    "database server is up"
                ) from None
            if not logged:
                logged = True
                log.warning("%s; waiting up to %.0f s for it (an outage is not a user error)", exc, wait_s)
            if abort is not None:
                abort.wait(min(delay, left))
            else:
                time.sleep(min(delay, left))
            delay = min(2 * delay, BACKOFF_MAX_S)


class _Unreachable(Exception):
    """The database cannot be reached now (refused, timed out, dropped): worth waiting for. The message is the
    one-line StorageError text."""


def _open_rdb(
    url: str, heartbeat_interval_s: int, grace_period_s: int, max_retry: int | None, pool_size: int | None = None
) -> Any:
    """One attempt at opening the RDBStorage. Raises _Unreachable (worth waiting for) or StorageError (not)."""
    import optuna
    import sqlalchemy.exc
    from optuna.storages import RDBStorage

    host, port, backend = host_port(url)
    if backend == "sqlite":
        path = sqlite_file(url)
        if path is not None and not Path(path).parent.is_dir():
            raise StorageError(
                f"storage {mask_url(url)}: folder {Path(path).parent} does not exist; create it or choose another file"
            )
    elif host and port:
        _preflight(url, host, port)
    pool = {} if pool_size is None else {"pool_size": int(pool_size), "max_overflow": 0}
    last: Exception | None = None
    for attempt in range(4):
        try:
            with warnings.catch_warnings():
                # heartbeat_interval and the retry callback are marked experimental; that is not news to a user.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs={**engine_kwargs(url), **pool},
                    heartbeat_interval=int(heartbeat_interval_s),
                    grace_period=int(grace_period_s),
                    heartbeat_stale_trial_callback=WorkerLostRetryCallback(max_retry=max_retry),
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            # Two processes creating the tables of a fresh database at once: the loser retries and finds them.
            last = exc
            time.sleep(0.2 * (attempt + 1))
        except sqlalchemy.exc.OperationalError as exc:
            detail = " ".join(str(exc.orig if exc.orig is not None else exc).split())
            where = f" at {host}:{port}" if host else ""
            fix = permanent_error(exc, url)
            if fix is not None:
                raise fix from None
            message = (
                f"storage {mask_url(url)}{where}: {mask_text(detail, url)}; check that a database "
                f"server answers there and the user, password and database name, or set --storage / {ENV_VAR}"
            )
            raise (_Unreachable(message) if is_connection_failure(exc) else StorageError(message)) from None
        except sqlalchemy.exc.DatabaseError as exc:  # not an outage: the file itself is broken
            detail = mask_text(" ".join(str(exc.orig if exc.orig is not None else exc).split()), url)
            remedy = (
                "the file is not a usable SQLite database (corrupted or truncated?): restore it from a backup or "
                "choose another file"
                if backend == "sqlite"
                else "check the database"
            )
            raise StorageError(f"storage {mask_url(url)}: {detail}; {remedy}") from None
        except (ValueError, ImportError, RuntimeError) as exc:
            raise StorageError(f"storage {mask_url(url)}: {mask_text(str(exc), url)}") from None
    raise StorageError(f"storage {mask_url(url)}: could not create the tables ({mask_text(str(last), url)})")


def storage_from_flag(
    flag: str | None, *, must_exist: bool = False, **kwargs: Any
) -> tuple[str, ResilientStorage | ProxyStorage]:
    """(url, storage) for a CLI `--storage` value, resolved and opened. `must_exist`: a read-only command's SQLite
    file must be there already (opening would create an empty one, leaving a stray file behind a typo)."""
    url = resolve_storage_url(flag)
    if must_exist and host_port(url)[2] == "sqlite":
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:" and not Path(path).is_file():
            raise StorageError(
                f"storage {mask_url(url)}: no such SQLite file; pass the --storage the study was created in "
                f"(or set {ENV_VAR}), or create one with `tuner create STUDY.yaml`"
            )
    return url, open_storage(url, **kwargs)
