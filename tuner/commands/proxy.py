"""`tuner proxy --storage URL [--host 127.0.0.1] [--port 13000] [--threads 4] [--heartbeat-s 30] [--grace-s 120]`:
Optuna's gRPC storage proxy in front of the study database; workers then take `--storage grpc://HOST:PORT`.

Many workers (e.g. several per GPU) then share the proxy's few database connections (`--threads`, at most that many)
instead of holding a pool each. The workers' heartbeats reach the database through it, and the proxy fails their
stale trials itself (every --heartbeat-s, after --grace-s without a beat; tuner.storage.grpc_proxy). Runs until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

from tuner.commands import add_heartbeat_options

DEFAULT_PORT = 13000  # Optuna's default for run_grpc_proxy_server
DEFAULT_THREADS = 4


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser
    p = subparsers.add_parser(
        "proxy",
        help="serve the study database to many workers through Optuna's gRPC storage proxy",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; the proxy has no authentication, so bind other "
        "addresses only on a trusted network)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    p.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"request threads, and the most database connections the proxy opens (default {DEFAULT_THREADS})",
    )
    add_heartbeat_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    # grpc's C core prints its own multi-line log on a bind failure; the one-line error below says it. Set
    # GRPC_VERBOSITY=ERROR (or DEBUG) to see grpc's own logs.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from tuner.errors import StorageError
    from tuner.storage._optuna_compat import grpc_proxy_server
    from tuner.storage.connect import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, open_storage
    from tuner.storage.grpc_proxy import ReadWriteGate, require_grpc, sweep_stale_trials
    from tuner.storage.urls import is_grpc_url, mask_url, resolve_storage_url

    require_grpc()
    url = resolve_storage_url(getattr(args, "storage", None))
    if is_grpc_url(url):
        raise StorageError(f"tuner proxy needs the database URL in --storage, not another proxy ({url})")
    if not 1 <= args.threads <= 64:
        raise StorageError(f"--threads {args.threads}: give 1 to 64 (each thread may hold one database connection)")
    if not 0 < args.port < 65536:
        raise StorageError(f"--port {args.port}: give a port between 1 and 65535")
    heartbeat_s = HEARTBEAT_INTERVAL_S if args.heartbeat_s is None else args.heartbeat_s
    grace_s = GRACE_PERIOD_S if args.grace_s is None else args.grace_s
    storage = open_storage(url, pool_size=args.threads, heartbeat_interval_s=heartbeat_s, grace_period_s=grace_s)
    gate = ReadWriteGate()
    try:
        server = grpc_proxy_server(storage, args.host, args.port, args.threads, read_gate=gate.reading)
    except RuntimeError as e:  # grpc: "Failed to bind to address ..."
        raise StorageError(
            f"cannot listen on {args.host}:{args.port} ({' '.join(str(e).split())[:120]}); choose another --port "
            "or stop what holds it"
        ) from None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    server.start()
    sweeper = threading.Thread(target=sweep_stale_trials, args=(storage, stop, heartbeat_s, gate), daemon=True)
    sweeper.start()
    print(
        f"storage proxy for {mask_url(url)} on grpc://{args.host}:{args.port} (at most {args.threads} database "
        f"connections); workers: --storage grpc://{args.host}:{args.port}",
        flush=True,
    )
    print(
        f"stale trials (no heartbeat for {grace_s} s) are failed and re-queued here, checked every {heartbeat_s} s",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        server.stop(grace=5).wait()
        sweeper.join(10)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        storage.remove_session()
    print("storage proxy stopped", flush=True)
    return 0
