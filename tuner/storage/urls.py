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


def _split_userinfo(url: str) -> tuple[str, str, str, str] | None:
    """(scheme://, user, password-or-"", rest from the host on) of a URL with credentials, or None.

    The credentials end at the LAST '@' before the query: a password with an unescaped '@' (or '/', ':') is still
    taken whole, so nothing of it is printed (the first '@' would leave `secret@host` in view)."""
    m = re.match(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>.*)\Z", str(url), re.S)
    if not m:
        return None
    rest = m.group("rest")
    head = rest.split("?", 1)[0]
    at = head.rfind("@")
    if at < 0:
        return None
    user, _, pw = head[:at].partition(":")
    return m.group("scheme"), user, pw, rest[at + 1 :]


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for printing (works on URLs SQLAlchemy cannot parse too)."""
    parts = _split_userinfo(url)
    if parts is None:
        return str(url)
    scheme, user, pw, rest = parts
    return f"{scheme}{user}:***@{rest}" if pw else f"{scheme}{user}@{rest}"


def mask_text(text: str, url: str) -> str:
    """`text` with the URL's password removed wherever it appears (driver error messages may echo parts)."""
    text = str(text).replace(url, mask_url(url))
    parts = _split_userinfo(url)
    if parts and parts[2]:  # as a whole token only, so a short password does not garble ordinary words
        for secret in {parts[2], *parts[2].split("@")} - {""}:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return text


def host_port(url: str) -> tuple[str | None, int | None, str]:
    """(host, port, backend) of a storage URL; StorageError (URL masked) when it cannot be parsed, has an unescaped
    '@' in its password, or names a dialect SQLAlchemy does not have (`postgres://`)."""
    from sqlalchemy.engine import make_url

    if is_grpc_url(url):  # a `tuner proxy`, not a database: its own form, backend "grpc"
        host, port = grpc_host_port(url)
        return host, port, "grpc"
    example = "postgresql+psycopg2://user:PASSWORD@127.0.0.1:5432/tuner or sqlite:///tuner.db"
    try:
        u = make_url(url)
    except Exception:  # noqa: BLE001 - reported below with the masked URL
        raise StorageError(f"storage URL {mask_url(url)} cannot be parsed; write e.g. {example}") from None
    parts = _split_userinfo(url)
    if parts is not None and "@" in parts[2]:
        raise StorageError(f"storage URL {mask_url(url)}: the password contains '@'; write it URL-escaped (@ as %40)")
    try:
        u.get_dialect()
    except Exception:  # noqa: BLE001 - NoSuchModuleError and driver import errors: both mean "use another URL"
        scheme = u.drivername
        fix = (
            "use postgresql+psycopg2://"
            if scheme.split("+")[0] in ("postgres", "postgresql", "psql", "pg")
            else f"write e.g. {example}"
        )
        raise StorageError(f"storage URL {mask_url(url)}: unknown database dialect {scheme!r}; {fix}") from None
    backend = u.get_backend_name()
    default_port = {"postgresql": 5432, "mysql": 3306}.get(backend)
    return u.host, (u.port or default_port), backend


def sqlite_file(url: str) -> str | None:
    """The file an `sqlite:///PATH` URL names (also `sqlite:///file:PATH?mode=ro&uri=true`), or None for an
    in-memory database or a URL of another backend."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[1] if "///" in url else ""
    if path.startswith("file:"):
        path, _, query = path[len("file:") :].partition("?")
        if "mode=memory" in query:
            return None
    return None if not path or path == ":memory:" else path


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
