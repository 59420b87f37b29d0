"""Files several processes share: an atomic write (a reader sees the old file or the new one, never half of one)
and an advisory lock that serialises read-modify-write cycles (released when its holder dies, so never stale).

The one home of both: the data cache (model/data.py) uses them here, tuner/fileio.py re-exports them for the
tuner's stores (calibration, presets) and bench/. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def atomic_write(
    path: Path, write: Callable[[IO[Any]], object], *, binary: bool = False, mode: int | None = None
) -> None:
    """Create `path` through `write(file)` on a temporary file in the same folder, flushed to disk, then moved into
    place with os.replace (folders created). On any failure the temporary file is removed and `path` is untouched.

    The temporary file is opened like any new file (permissions from the umask, or `mode` when given: set before
    the rename, so the file never shows other permissions), under a name no other writer uses, so concurrent
    writers of one path never share a temporary file: the last os.replace wins whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") if binary else open(tmp, "x", encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    """atomic_write of UTF-8 text."""
    atomic_write(path, lambda fh: fh.write(text), mode=mode)


@contextlib.contextmanager
def file_lock(lock_path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive fcntl lock on the file `lock_path` for the duration of the block (folders created).

    on_wait: called once if another process holds the lock, before waiting for it. On a platform without fcntl
    there is no lock: the atomic writes alone still keep every file whole."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
