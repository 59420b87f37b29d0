"""Which storage errors are an outage (wait and retry) and which are permanent (fail at once with one line).

An outage: the database cannot be reached or the connection dropped (refused, reset, server shutting down or
starting up): trying again later can succeed. Permanent: an OperationalError whose message names a problem no wait
can cure (`_PERMANENT`: a read-only or corrupt SQLite file, a refused password, a missing database). SQLite reports
every file problem as an OperationalError; only "locked"/"busy" there means another process is writing (and the
engine's busy timeout already waits for that). Data errors (integrity, too long) are neither: they are raised as
they are.
"""

from __future__ import annotations

from tuner.errors import StorageError
from tuner.storage.urls import mask_text, mask_url

# Driver messages of OperationalErrors that no wait can cure (lower case, matched as substrings). SQLite reports
# every file problem as an OperationalError; only "locked"/"busy" there means another process is writing.
_PERMANENT = {
    "readonly database": "the database file (or its folder) is read-only; make it writable or choose another file",
    "unable to open database file": "the database file cannot be opened; check the path and its permissions",
    "file is not a database": "the file is not an SQLite database; point --storage at a tuner database or a new file",
    "database disk image is malformed": "the SQLite file is corrupt; restore it from a copy or start a new file",
    "disk i/o error": "the disk reported an I/O error on the database file; check the disk and the file",
    "password authentication failed": "the password was refused; fix the user and password in the URL",
    "does not exist": "the database or user named in the URL does not exist; create it or fix the URL",
    "no pg_hba.conf entry": "the server refuses this client (pg_hba.conf); allow it there or connect as another user",
}


def _permanent_fix(exc: BaseException) -> str | None:
    """The fix for an OperationalError in `exc`'s chain that no wait can cure (see _PERMANENT), else None."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ == "OperationalError":  # SQLAlchemy's and the drivers' (sqlite3, psycopg2)
            text = str(getattr(e, "orig", None) or e).lower()
            for needle, fix in _PERMANENT.items():
                if needle in text:
                    return fix
        e = e.__cause__ or e.__context__
    return None


def permanent_error(exc: BaseException, url: str) -> StorageError | None:
    """A one-line StorageError when `exc` is a database error that retrying cannot fix, else None."""
    fix = _permanent_fix(exc)
    return None if fix is None else StorageError(f"storage {mask_url(url)}: {detail(exc, url)}; {fix}")


def is_connection_failure(exc: BaseException) -> bool:
    """True when `exc` (or an exception it was raised from) says the database could not be reached or the
    connection dropped, i.e. trying again later can succeed. Data errors (integrity, too long) and permanent
    errors (`permanent_error`: read-only file, wrong password) are not."""
    import sqlalchemy.exc as sa_exc

    if _permanent_fix(exc) is not None:
        return False
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (sa_exc.IntegrityError, sa_exc.DataError, sa_exc.ProgrammingError)):
            return False
        if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)):
            return True
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        e = e.__cause__ or e.__context__
    return False


def detail(exc: BaseException, url: str) -> str:
    root: BaseException = exc
    while root.__cause__ is not None:
        root = root.__cause__
    orig = getattr(root, "orig", None) or root
    text = " ".join(str(orig).split())[:200]
    return f"{type(orig).__name__}: {mask_text(text, url)}"
