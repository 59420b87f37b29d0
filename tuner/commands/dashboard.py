"""`tuner dashboard [--host 127.0.0.1] [--port N]`: optuna-dashboard on the same storage (loopback by default)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser
    p = subparsers.add_parser("dashboard", help="serve optuna-dashboard for the storage (127.0.0.1 by default)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; the dashboard can edit studies, so expose it with care)",
    )
    p.add_argument("--port", type=int, default=8080)
    return p


def run(args: argparse.Namespace) -> int:
    import optuna_dashboard

    from tuner.storage.connect import storage_from_flag
    from tuner.storage.urls import mask_url

    url, storage = storage_from_flag(args.storage)
    print(f"optuna-dashboard for {mask_url(url)} on http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: binding {args.host} exposes the dashboard (and study edits) beyond this machine", file=sys.stderr
        )
    _publish_curves(storage)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return 0


def _publish_curves(storage: Any) -> None:
    """The learning-curve figure of every study, which the dashboard draws (tuner.analysis.dashboard_curves)."""
    from tuner.analysis.dashboard_curves import publish_all

    try:
        publish_all(storage)
    except Exception as e:  # noqa: BLE001 - a missing figure must not keep the dashboard from serving
        print(f"warning: learning curves not published for the dashboard: {e}", file=sys.stderr)
