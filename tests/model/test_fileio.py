"""model.fileio: the atomic write replaces whole files or nothing and leaves no temporary file; the lock makes a
second process wait (and say so) until the first releases it."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest

from model.fileio import atomic_write, atomic_write_text, file_lock


def test_text_and_binary_writes_replace_whole_files(tmp_path: Path):
    path = tmp_path / "a" / "f.npy"
    atomic_write(path, lambda fh: np.save(fh, np.arange(5)), binary=True)
    atomic_write(path, lambda fh: np.save(fh, np.arange(3)), binary=True)
    assert np.load(path).tolist() == [0, 1, 2]
    atomic_write_text(tmp_path / "a" / "t.txt", "héllo")
    assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "héllo"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.npy", "t.txt"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def half(fh):
        fh.write("new, but then")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def _hold(lock: str, ready: str, seconds: float) -> None:
    with file_lock(Path(lock)):
        Path(ready).write_text("held")
        time.sleep(seconds)


def test_a_second_holder_waits_and_is_told(tmp_path: Path):
    lock, ready = tmp_path / "x.lock", tmp_path / "ready"
    holder = mp.get_context("spawn").Process(target=_hold, args=(str(lock), str(ready), 1.0))
    holder.start()
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        waited: list[float] = []
        t0 = time.monotonic()
        with file_lock(lock, on_wait=lambda: waited.append(time.monotonic())):
            got = time.monotonic()
        assert len(waited) == 1 and got - t0 >= 0.3  # told once, then waited for the holder
        with file_lock(lock, on_wait=lambda: waited.append(0.0)):
            pass
        assert len(waited) == 1  # a free lock: no waiting, nothing said
    finally:
        holder.join(30)
    assert holder.exitcode == 0
