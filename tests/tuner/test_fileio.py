"""tuner.fileio: the atomic write leaves no temporary file and replaces whole files, never a folder, device or
symlink (followed), an existing file only with force; the lock serialises read-modify-write cycles of several
processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
from pathlib import Path

import pytest

from tuner.errors import OutputError
from tuner.fileio import atomic_write_text, file_lock, output_dir, output_file


def test_atomic_write_creates_folders_and_replaces_whole_files(tmp_path: Path):
    path = tmp_path / "a" / "b" / "f.json"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.json"]  # no temporary file left behind


def _add_one(path: str, times: int) -> None:
    p = Path(path)
    for _ in range(times):
        with file_lock(p):
            n = int(p.read_text()) if p.exists() else 0
            atomic_write_text(p, str(n + 1))


def test_the_lock_serialises_read_modify_write_across_processes(tmp_path: Path):
    path = tmp_path / "counter.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_add_one, args=(str(path), 50)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert path.read_text() == "150"  # no update lost


def test_an_existing_file_is_replaced_only_with_force(tmp_path: Path):
    path = tmp_path / "f.txt"
    path.write_text("mine")
    path.chmod(0o640)
    with pytest.raises(OutputError, match="already exists; pass --force"):
        atomic_write_text(path, "new", force=False)
    assert path.read_text() == "mine"
    atomic_write_text(path, "new", force=True)
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640  # its mode is kept


def test_folders_and_special_files_are_never_replaced(tmp_path: Path):
    with pytest.raises(OutputError, match="is a folder"):
        atomic_write_text(tmp_path, "x")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="not a regular file"):
        atomic_write_text(fifo, "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    if Path("/dev/full").exists():  # the rename would put a regular file in its place (as root)
        with pytest.raises(OutputError, match="not a regular file"):
            atomic_write_text("/dev/full", "x")
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary file left behind


def test_a_symlink_is_followed_and_stays_a_link(tmp_path: Path):
    target = tmp_path / "real.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    assert atomic_write_text(link, "new") == target
    assert link.is_symlink() and target.read_text() == "new"
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(tmp_path / "sub" / "made.txt")
    atomic_write_text(dangling, "made")
    assert (tmp_path / "sub" / "made.txt").read_text() == "made" and dangling.is_symlink()


def test_output_dir(tmp_path: Path):
    assert output_dir(tmp_path / "new" / "dir", force=False).is_dir()
    (tmp_path / "new" / "dir" / "a.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        output_dir(tmp_path / "new" / "dir", force=False)
    output_dir(tmp_path / "new" / "dir", force=True)
    with pytest.raises(OutputError, match="not a folder"):
        output_dir(tmp_path / "new" / "dir" / "a.txt", force=True)
    with pytest.raises(OutputError, match="is a folder"):
        output_file(tmp_path / "new", force=True)
