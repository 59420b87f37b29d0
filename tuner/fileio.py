"""Files several processes share: the atomic write and the advisory lock of model/fileio.py (their one home),
re-exported so tuner modules import them from inside tuner/."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from model import fileio as _fileio
from model.fileio import atomic_write as atomic_write
from model.fileio import atomic_write_text as atomic_write_text


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock guarding `path`, held on the file `path`.lock for the duration of the block."""
    with _fileio.file_lock(path.with_name(path.name + ".lock")):
        yield
