"""Storage URLs: which one (flag, $TUNER_STORAGE, the local SQLite file), printing one with its password masked, and
`grpc://HOST:PORT` (a `tuner proxy` in front of the database)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from tuner.errors import StorageError

ENV_VAR = "TUNER_STORAGE"
DEFAULT_DB_FILE = "tuner.db"


def resolve_storage_url(flag: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The storage URL: the flag, else $TUNER_STORAGE, else the embedded SQLite file `tuner.db` in the cwd."""
    env = os.environ if environ is None else environ
    if flag:
        return flag
    if env.get(ENV_VAR):
        return env[ENV_VAR]
    return f"sqlite:///{Path.cwd() / DEFAULT_DB_FILE}"


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for printing (works on URLs SQLAlchemy cannot parse too)."""
    return re.sub(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<pw>[^@\s]*)@", r"\g<head>:***@", str(url))


def mask_text(text: str, url: str) -> str:
    """`text` with the URL's password removed wherever it appears (driver error messages may echo parts)."""
    text = str(text).replace(url, mask_url(url))
    m = re.search(r"://[^:/@\s]*:(?P<pw>[^@\s]+)@", url)
    if m and m.group("pw"):  # as a whole token only, so a short password does not garble ordinary words
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(m.group('pw'))}(?![A-Za-z0-9])", "***", text)
    return text


def host_port(url: str) -> tuple[str | None, int | None, str]:
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception:  # noqa: BLE001 - reported below with the masked URL
        raise StorageError(
            f"storage URL {mask_url(url)} cannot be parsed; write e.g. "
            "postgresql+psycopg2://user:PASSWORD@127.0.0.1:5432/tuner or sqlite:///tuner.db"
        ) from None
    backend = u.get_backend_name()
    default_port = {"postgresql": 5432, "mysql": 3306}.get(backend)
    return u.host, (u.port or default_port), backend


GRPC_SCHEME = "grpc://"  # Optuna's gRPC storage proxy (`tuner proxy`), not a database


def is_grpc_url(url: str) -> bool:
    return str(url).startswith(GRPC_SCHEME)


def grpc_host_port(url: str) -> tuple[str, int]:
    """(host, port) of a `grpc://HOST:PORT` URL; StorageError naming the expected form otherwise."""
    rest = str(url)[len(GRPC_SCHEME) :].rstrip("/")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")  # [::1]:13000
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest or "@" in rest:
        raise StorageError(
            f"storage URL {mask_url(url)} is not grpc://HOST:PORT; write e.g. grpc://127.0.0.1:13000 "
            "(the address `tuner proxy` listens on)"
        )
    return host, int(port)
