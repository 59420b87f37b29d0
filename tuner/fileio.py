"""Files several processes share, and files the CLI writes (`--out`): model/fileio.py's atomic write (a reader
sees the old file or the new one, never half of one; its one home) behind checks that it never destroys what it
should not, and its advisory lock that serialises read-modify-write cycles (released when its holder dies).

What a write may replace (OutputError otherwise, one line naming the path and the fix):
- a missing path (parent folders created) or a regular file; an existing file only with `force`
  (the CLI's `--force`);
- never a folder, nor a device, pipe or socket (`/dev/full` stays a device: the temporary-file-then-rename
  write would have put a regular file in its place);
- a symbolic link is followed deliberately: its target is replaced, the link stays a link (renaming onto the link
  itself would have turned it into a file).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from model import fileio as _fileio
from model.fileio import atomic_write as atomic_write
from tuner.errors import OutputError


def _os_problem(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def output_file(path: str | Path, *, force: bool) -> Path:
    """The regular file a write to `path` will replace or create (a symlink resolved to its target).

    Raises OutputError for a folder, a special file, or (without `force`) an existing file."""
    p = Path(path)
    target = Path(os.path.realpath(p))
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise OutputError(f"{p}: cannot be inspected ({_os_problem(exc)}); choose another path") from None
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{p}: is a folder; give the path of a file to write")
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{p}: is not a regular file (a device, pipe or socket); give the path of a regular file")
    if not force:
        raise OutputError(f"{p}: already exists; pass --force to replace it, or choose another path")
    return target


def output_dir(path: str | Path, *, force: bool) -> Path:
    """A folder to write several files into: created when missing; an existing non-empty one only with `force`
    (files of the same names are then replaced). Raises OutputError for a file or an unwritable place."""
    p = Path(path)
    target = Path(os.path.realpath(p))
    if target.exists() and not target.is_dir():
        raise OutputError(f"{p}: exists and is not a folder; give a folder path")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise OutputError(
            f"{p}: folder is not empty; pass --force to write into it (replacing files), or choose another"
        )
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{p}: cannot create the folder ({_os_problem(exc)}); choose a writable path") from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise OutputError(f"{p}: folder is not writable; choose a writable path")
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str, *, force: bool = True) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and os.replace (folders created);
    returns the file written (a symlink's target). What it refuses: the module docstring (OutputError)."""
    target = output_file(path, force=force)
    # keep the replaced file's mode, else what an ordinary open() would give
    mode = stat.S_IMODE(os.stat(target).st_mode) if target.exists() else 0o666 & ~_umask()
    try:
        _fileio.atomic_write_text(target, text, mode=mode)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write there ({_os_problem(exc)}); choose a writable path") from None
    return target


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock guarding `path`, held on the file `path`.lock for the duration of the block."""
    with _fileio.file_lock(path.with_name(path.name + ".lock")):
        yield
