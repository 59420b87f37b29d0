"""A per-study lock across worker processes: held from "is there budget left?" until the trial that answer allows
is RUNNING in storage, so two workers can never both take the last trial (tuner.trial.budget), and while a run
claims its sampler seed index (tuner.storage.samplers.claim_run_seed).

- Postgres: a session-level advisory lock (`pg_try_advisory_lock`, polled so a stop signal is honoured) on a
  connection of its own; the server releases it if the holder's connection dies, so a killed worker never leaves it
  held.
- SQLite: an exclusive `flock` on a file beside the database (`<db>.lock`), one for all the file's studies. Not the
  database file's own write lock: holding that on one connection would block this very process's Optuna writes (the
  trial it is taking) on its other connection, a self-deadlock; and a second descriptor on the database file would
  drop SQLite's own POSIX locks when closed. SQLite is local-only, so every process sharing the file sees the same
  lock file. The kernel releases it when the holder dies.
- Other backends (MySQL): no lock; the budget may then overshoot by the number of workers racing for the last trial.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from tuner.errors import StorageError
from tuner.storage.urls import host_port, mask_url, sqlite_file

POLL_S = 0.05  # how often a waiting worker tries the lock again (holders keep it for well under a second)


def _key(study_id: int) -> int:
    """A signed 64-bit advisory-lock key for one study (namespaced so other applications' keys do not collide)."""
    digest = hashlib.sha256(f"tuner-study-lock:{int(study_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class StudyLock:
    """Exclusive lock on one study of `storage` (a tuner.storage.resilient.ResilientStorage). `acquire(stop)` waits
    for it (False once `stop` is set and the lock is still taken); `release()` is idempotent."""

    def __init__(self, storage: Any, study_id: int):
        self.storage = storage
        self.study_id = int(study_id)
        self._kind = host_port(storage.url)[2]
        self._conn: Any = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None or self._fd is not None

    def acquire(self, stop: threading.Event | None = None) -> bool:
        if self.held:
            return True
        while True:
            if self._try():
                return True
            if stop is not None and stop.is_set():
                return False
            time.sleep(POLL_S)

    def _try(self) -> bool:
        if self._kind == "postgresql":
            return bool(self.storage.retrying("study lock", self._try_pg))
        if self._kind == "sqlite":
            return self._try_file()
        self._fd = -1  # no lock on this backend (see the module docstring); held() is True until release()
        return True

    def _try_pg(self) -> bool:
        import sqlalchemy as sa

        conn = self.storage.engine.connect()
        try:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": _key(self.study_id)}).scalar()
            conn.commit()
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        if got:
            self._conn = conn
            return True
        conn.close()
        return False

    def _try_file(self) -> bool:
        import fcntl

        path = sqlite_file(self.storage.url)
        if path is None:
            self._fd = -1  # a private in-memory database: nobody else to race with
            return True
        lock_path = Path(path + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise StorageError(
                f"storage {mask_url(self.storage.url)}: cannot create the lock file {lock_path} ({e.strerror}); "
                "the folder must be writable by every worker"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        conn, fd = self._conn, self._fd
        self._conn, self._fd = None, None
        if conn is not None:
            import sqlalchemy as sa

            try:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _key(self.study_id)})
                conn.commit()
                conn.close()
            except Exception:  # noqa: BLE001 - a dead connection: the server dropped the lock with the session
                conn.invalidate()
                conn.close()
        if fd is not None and fd >= 0:
            os.close(fd)  # closing the descriptor releases the flock
