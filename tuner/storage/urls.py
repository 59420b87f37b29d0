"""Storage URLs: which one (flag, $TUNER_STORAGE, the local SQLite file), and printing one with its password masked."""

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
