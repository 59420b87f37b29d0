"""tuner.fileio: the atomic write leaves no temporary file and replaces whole files; the lock serialises
read-modify-write cycles of several processes."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from tuner.fileio import atomic_write_text, file_lock


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
