"""`tuner dashboard [--host 127.0.0.1] [--port 8080] [--allow-remote]`: optuna-dashboard on the same storage.

optuna-dashboard has no authentication and lets whoever reaches it edit and delete studies, so it binds the
loopback address; another host is refused unless `--allow-remote` is given (reach it from elsewhere through an SSH
tunnel instead: `ssh -L 8080:127.0.0.1:8080 HOST`). The port is bound before anything is printed: a bad port or
one in use is a one-line error, never a "listening" line followed by a traceback.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import socket
import sys
from typing import Any

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser
    p = subparsers.add_parser(
        "dashboard",
        help="serve optuna-dashboard for the storage (127.0.0.1 only, unless --allow-remote)",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1); a non-loopback address needs --allow-remote",
    )
    p.add_argument("--port", type=_port, default=8080, help="TCP port, 1-65535 (default 8080)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host: the dashboard has NO authentication and anyone who reaches it can "
        "delete studies (prefer an SSH tunnel)",
    )
    return p


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the loopback names (never for 0.0.0.0 or ::, which bind every interface)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int, app: Any) -> Any:
    """A wsgiref server for `app` bound to host:port (raises TunerError when it cannot bind)."""
    from wsgiref.simple_server import WSGIServer, make_server

    from tuner.errors import TunerError

    class _Server(WSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        return make_server(host.strip("[]"), port, app, server_class=_Server)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        fix = "pick a free port with --port N" if exc.errno == errno.EADDRINUSE else "check --host and --port"
        raise TunerError(f"dashboard: cannot listen on {host}:{port} ({reason}); {fix}") from None


def run(args: argparse.Namespace) -> int:
    from tuner.errors import TunerError
    from tuner.storage.connect import storage_from_flag
    from tuner.storage.urls import mask_url

    if not is_loopback(args.host) and not args.allow_remote:
        raise TunerError(
            f"dashboard: --host {args.host} would expose the dashboard, which has no authentication (anyone who "
            "reaches it can delete studies); keep 127.0.0.1 and use an SSH tunnel (ssh -L 8080:127.0.0.1:8080 "
            "HOST), or pass --allow-remote"
        )
    import optuna_dashboard

    url, storage = storage_from_flag(args.storage)
    server = bind(args.host, args.port, optuna_dashboard.wsgi(storage))  # a bad or busy port fails here, first
    if not is_loopback(args.host):
        print(
            f"warning: --allow-remote: the dashboard on {args.host}:{args.port} has no authentication; anyone who "
            "can reach it can edit and delete studies",
            file=sys.stderr,
        )
    shown = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host  # an IPv6 address in a URL
    print(f"optuna-dashboard for {mask_url(url)} on http://{shown}:{args.port}/ (Ctrl-C stops it)", flush=True)
    _publish_curves(storage)  # after the line above: the port is bound, requests wait in its backlog meanwhile
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _publish_curves(storage: Any) -> None:
    """The learning-curve figure of every study, which the dashboard draws (tuner.analysis.dashboard_curves)."""
    from tuner.analysis.dashboard_curves import publish_all

    try:
        publish_all(storage)
    except Exception as e:  # noqa: BLE001 - a missing figure must not keep the dashboard from serving
        print(f"warning: learning curves not published for the dashboard: {e}", file=sys.stderr)
