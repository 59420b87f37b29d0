"""Optuna's gRPC storage proxy: `tuner proxy` serves a study's database to many workers through a few database
connections; a worker opens `grpc://HOST:PORT` instead of the database URL.

Why: every worker process holds its own SQLAlchemy pool (and its heartbeat thread another connection), so 32
workers on one Postgres hold 32-64 connections and as many concurrent transactions. Behind one proxy they share the
proxy's pool (`--threads` connections at most, default 4), and Optuna's client keeps a per-process cache of
finished trials, so a worker reads only what changed.

What the proxy does not carry, and what the tuner does about it (Optuna 5.0: `GrpcStorageProxy` is a `BaseStorage`,
not a `BaseHeartbeat`, and the gRPC API has no heartbeat calls):
- Heartbeats: a worker through the proxy records none, so a worker killed mid-trial (SIGKILL, lost machine) leaves
  its trial RUNNING; nothing fails it and no retry is queued. SIGTERM/SIGINT are unaffected (the trial ends
  `interrupted` and is re-enqueued by the worker itself). `--heartbeat-s` / `--grace-s` with a grpc:// storage are
  refused with one line (tuner.commands.open_worker_storage); `open_proxy_storage` logs the limitation once.
- Database outages: the proxy's own storage (tuner.storage.resilient) waits them out, so workers just see slower
  calls. The proxy itself going away: `ProxyStorage` retries calls that failed with UNAVAILABLE (no server) with
  backoff for up to the outage limit, then raises StorageUnavailable (one line, the worker exits 2).
- `tuner status`'s heartbeat ages need the database: through a proxy they are not shown.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, GrpcStorageProxy

from tuner.errors import StorageError
from tuner.storage.resilient import BACKOFF_FIRST_S, BACKOFF_MAX_S, OUTAGE_LIMIT_S, StorageUnavailable
from tuner.storage.urls import grpc_host_port

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 5.0  # a worker's first contact: the proxy must answer within this
INSTALL_HINT = "pip install 'phase1-tuner[proxy]' (grpcio, protobuf)"
PROXY_LIMITS = (
    "workers through a gRPC proxy record no heartbeats: a worker killed mid-trial leaves its trial RUNNING "
    "(not retried); SIGTERM still ends and re-queues it"
)


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
                time.sleep(min(delay, self.outage_limit_s - (now - since)))
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if since is not None:
                log.warning("storage proxy %s is back after %.1f s", self.url, time.monotonic() - since)
            return result

    return method


class ProxyStorage(GrpcStorageProxy):
    """Optuna's gRPC proxy client with the tuner's storage surface: `url`, `remove_session()`, and calls that wait
    for a proxy that is restarting (see the module docstring)."""

    def __init__(self, url: str, *, outage_limit_s: float = OUTAGE_LIMIT_S):
        host, port = grpc_host_port(url)
        self.url = url
        self.outage_limit_s = float(outage_limit_s)
        with warnings.catch_warnings():  # "experimental": the limits that matter are in this module's docstring
            warnings.simplefilter("ignore", ExperimentalWarning)
            super().__init__(host=host, port=port)

    def remove_session(self) -> None:
        """Nothing to release per thread (RDBStorage's API; the worker calls it when it ends)."""


# Every storage call of the client (the BaseStorage methods it implements; not close / wait_server_ready).
for _name, _base in list(vars(GrpcStorageProxy).items()):
    if callable(_base) and not _name.startswith("_") and _name in vars(BaseStorage):
        setattr(ProxyStorage, _name, _retried(_name, _base))


def open_proxy_storage(url: str, *, outage_limit_s: float = OUTAGE_LIMIT_S) -> ProxyStorage:
    """A client of the `tuner proxy` at `grpc://HOST:PORT`; StorageError (one line) when grpc is missing or no proxy
    answers within READY_TIMEOUT_S."""
    require_grpc()
    storage = ProxyStorage(url, outage_limit_s=outage_limit_s)
    try:
        storage.wait_server_ready(timeout=READY_TIMEOUT_S)
    except ConnectionError:
        host, port = grpc_host_port(url)
        raise StorageError(
            f"no storage proxy answers at {url} within {READY_TIMEOUT_S:g} s; start one with "
            f"`tuner proxy --storage DATABASE_URL --host {host} --port {port}` or check the address"
        ) from None
    log.info(PROXY_LIMITS)
    return storage
