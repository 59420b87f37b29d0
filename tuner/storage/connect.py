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
- An open storage is a tuner.storage.resilient.ResilientRDBStorage: it waits out a database outage (calls retried with
  backoff, up to OUTAGE_LIMIT_S), its heartbeat never kills the heartbeat thread, and a heartbeat-stale trial is
  recorded as `end_reason = worker_lost` before its retry is queued.
"""

from __future__ import annotations

import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from tuner.errors import StorageError
from tuner.storage.callbacks import WorkerLostRetryCallback
from tuner.storage.grpc_proxy import ProxyStorage, open_proxy_storage
from tuner.storage.resilient import OUTAGE_LIMIT_S, ResilientRDBStorage
from tuner.storage.urls import (
    ENV_VAR,
    host_port,
    is_grpc_url,
    mask_text,
    mask_url,
    resolve_storage_url,
)

HEARTBEAT_INTERVAL_S = 30  # worker -> storage heartbeat period
GRACE_PERIOD_S = 120  # a RUNNING trial without a heartbeat for this long is stale and re-queued
MAX_RETRY = 3  # times a stale trial is re-queued
PREFLIGHT_S = 5.0  # DNS resolution + TCP dial together, before libpq is involved
CONNECT_TIMEOUT_S = 4  # libpq's connect_timeout (login) once the port answers -> under 10 s in all
POOL_RECYCLE_S = 300  # replace pooled connections older than this (idle-drop by servers, proxies, NAT)


def _preflight(url: str, host: str, port: int) -> None:
    """Resolve and dial host:port with short timeouts (DNS runs in a thread: getaddrinfo has no timeout)."""
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
    raise StorageError(f"storage {mask_url(url)}: cannot connect to {where} ({reason}); {fix}")


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
    pool_size: int | None = None,
) -> ResilientRDBStorage | ProxyStorage:
    """RDBStorage with heartbeats and stale-trial retry. Raises StorageError (masked URL, host:port) within 10 s.

    Once open, the storage waits out a database outage of up to `outage_limit_s` (tuner.storage.resilient): its calls
    are retried with backoff, a failed heartbeat is logged and the next one tried, and a stale trial's failure
    records `end_reason = worker_lost` before its retry is queued.
    pool_size: at most this many database connections (no overflow); default SQLAlchemy's (5 + 10 overflow).
    `grpc://HOST:PORT`: a `tuner proxy` client instead (tuner.storage.grpc_proxy: it beats every
    heartbeat_interval_s; the proxy applies its own grace period and retries)."""
    import optuna
    import sqlalchemy.exc

    if is_grpc_url(url):
        return open_proxy_storage(url, outage_limit_s=outage_limit_s, heartbeat_interval_s=heartbeat_interval_s)

    if int(grace_period_s) < int(heartbeat_interval_s):
        raise StorageError(
            f"grace period {grace_period_s} s is shorter than the heartbeat interval "
            f"{heartbeat_interval_s} s: live trials would be failed as stale; give a grace period of "
            "several heartbeats, e.g. --heartbeat-s 30 --grace-s 120"
        )
    host, port, backend = host_port(url)
    if backend == "sqlite":
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:" and not Path(path).parent.is_dir():
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
                return ResilientRDBStorage(
                    url,
                    outage_limit_s=outage_limit_s,
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
            raise StorageError(
                f"storage {mask_url(url)}{where}: {mask_text(detail, url)}; check that a database "
                f"server answers there and the user, password and database name, or set --storage / "
                f"{ENV_VAR}"
            ) from None
        except (ValueError, ImportError, RuntimeError) as exc:
            raise StorageError(f"storage {mask_url(url)}: {mask_text(str(exc), url)}") from None
    raise StorageError(f"storage {mask_url(url)}: could not create the tables ({mask_text(str(last), url)})")


def storage_from_flag(flag: str | None, **kwargs: Any) -> tuple[str, ResilientRDBStorage | ProxyStorage]:
    """(url, storage) for a CLI `--storage` value, resolved and opened."""
    url = resolve_storage_url(flag)
    return url, open_storage(url, **kwargs)
