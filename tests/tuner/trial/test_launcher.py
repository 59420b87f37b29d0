"""The launcher's supervisor (tuner.trial.launcher) with stand-in worker processes: plain Python one-liners that
exit with a chosen code, so restarts, give-ups and the storage URL's route (environment, never argv) are checked
without starting real workers."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from tuner.errors import TunerError
from tuner.trial.launcher import START_STAGGER_S, Launcher, _Slot, parse_gpus
from tuner.trial.worker_status import STATUS_ENV


class _ScriptedLauncher(Launcher):
    """A Launcher whose workers run `script` (Python source) instead of `tuner worker`."""

    def __init__(self, script: str, **kwargs: object) -> None:
        super().__init__("unit", "postgresql+psycopg2://u:secret@127.0.0.1/db", **kwargs)  # type: ignore[arg-type]
        self.script = script

    def _command(self, slot: _Slot) -> list[str]:
        return [sys.executable, "-c", self.script]


def test_parse_gpus():
    assert parse_gpus("0,1") == [0, 1] and parse_gpus(" 3 ") == [3]
    for bad in ("", "a,b", "0,0", "-1"):
        with pytest.raises(TunerError, match="--gpus"):
            parse_gpus(bad)


def test_needs_gpus_or_workers():
    with pytest.raises(TunerError, match="--gpus all|0,1 or --workers N"):
        Launcher("unit", "sqlite:///x.db")


def test_worker_command_carries_no_storage_url():
    cmd = Launcher("unit", "postgresql+psycopg2://u:secret@h/db", gpus=[1], n_trials=5)._command(_Slot(1))
    assert "secret" not in " ".join(cmd)
    assert cmd[-4:] == ["--gpu", "1", "--n-trials", "5"] and "worker" in cmd


def test_finished_workers_end_the_launch():
    launcher = _ScriptedLauncher("raise SystemExit(0)", workers=2)
    assert launcher.run(install_signal_handlers=False) == 0
    assert all(s.finished and s.exit_codes == [0] for s in launcher.slots)


def test_a_crashing_worker_is_restarted_then_given_up():
    launcher = _ScriptedLauncher("raise SystemExit(1)", workers=1, max_restarts=2)
    assert launcher.run(install_signal_handlers=False) == 1
    (slot,) = launcher.slots
    assert slot.gave_up and slot.restarts == 2 and slot.exit_codes == [1, 1, 1]


def test_a_user_error_is_never_restarted():
    launcher = _ScriptedLauncher("raise SystemExit(2)", workers=1, max_restarts=3)
    assert launcher.run(install_signal_handlers=False) == 1
    assert launcher.slots[0].exit_codes == [2] and launcher.slots[0].restarts == 0


def test_workers_get_the_storage_url_in_their_environment(tmp_path: Path):
    out = tmp_path / "env.txt"
    script = f"import os, pathlib; pathlib.Path({str(out)!r}).write_text(os.environ['TUNER_STORAGE'])"
    assert _ScriptedLauncher(script, workers=1).run(install_signal_handlers=False) == 0
    assert out.read_text() == "postgresql+psycopg2://u:secret@127.0.0.1/db"


def test_per_gpu_slots_labels_and_counts():
    launcher = Launcher("unit", "sqlite:///x.db", gpus=[0, 1], per_gpu=[2, 1])
    assert [s.label for s in launcher.slots] == ["w0 gpu0", "w1 gpu0", "w2 gpu1"]
    assert [s.label for s in Launcher("unit", "sqlite:///x.db", workers=1, per_gpu=2).slots] == ["w0", "w1"]
    for bad in ([2], [1, 0]):
        with pytest.raises(TunerError, match="--per-gpu"):
            Launcher("unit", "sqlite:///x.db", gpus=[0, 1], per_gpu=bad)


def test_worker_lines_are_prefixed_with_their_slot_and_each_gets_a_status_file(tmp_path: Path):
    lines: list[str] = []
    script = (
        "import os, pathlib; print('hello from', os.getpid(), flush=True); "
        f"pathlib.Path(os.environ['{STATUS_ENV}']).write_text('{{}}')"
    )
    launcher = _ScriptedLauncher(script, workers=1, per_gpu=2)
    launcher.on_line = lines.append
    assert launcher.run(install_signal_handlers=False) == 0
    for slot in launcher.slots:
        (pid,) = slot.pids
        assert f"[{slot.label}] hello from {pid}" in lines
    assert len({s.status_path for s in launcher.slots}) == 2
    assert launcher.wall_s >= START_STAGGER_S  # the second worker started after the first


def test_a_failing_display_never_blocks_a_worker():
    def broken(line: str) -> None:
        raise BrokenPipeError("stdout closed")

    # 200 kB of output: more than a pipe holds, so an undrained pipe would block the worker
    launcher = _ScriptedLauncher("import sys\nfor i in range(4000): print('x' * 50)", workers=1)
    launcher.on_line = broken
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(launcher.run(install_signal_handlers=False)), daemon=True)
    runner.start()
    runner.join(60)
    if runner.is_alive():  # blocked: end the worker so the test fails instead of hanging
        launcher.request_stop()
        runner.join(40)
    assert codes == [0] and launcher.slots[0].exit_codes == [0]


def test_an_outage_exit_is_restarted_without_counting_as_a_crash(tmp_path: Path):
    """Exit 75 (the database stayed unreachable past the outage limit) is not a user error and not a crash: the
    worker is started again each time, even past --max-restarts, until it finishes."""
    count = tmp_path / "starts"
    script = (
        f"import pathlib, sys; p = pathlib.Path({str(count)!r}); n = int(p.read_text() or 0) if p.exists() else 0; "
        "p.write_text(str(n + 1)); sys.exit(75 if n < 3 else 0)"
    )
    launcher = _ScriptedLauncher(script, workers=1, max_restarts=1)
    assert launcher.run(install_signal_handlers=False) == 0
    (slot,) = launcher.slots
    assert slot.exit_codes == [75, 75, 75, 0] and slot.finished and slot.restarts == 0


def test_each_worker_gets_the_time_left_in_the_window():
    launcher = Launcher("unit", "sqlite:///x.db", workers=1, deadline=time.monotonic() + 100.0)
    cmd = launcher._command(launcher.slots[0])
    i = cmd.index("--stop-after")
    assert 99.0 < float(cmd[i + 1]) <= 100.0
    assert "--stop-after" not in Launcher("unit", "sqlite:///x.db", workers=1)._command(_Slot(None))


def test_no_restart_and_no_late_start_after_the_window():
    """Slot w0's worker crashes after the deadline: it is not restarted (a new worker could take no trial) and the
    launch still ends 0; slot w1 was due to start after the deadline (the start stagger) and never starts."""
    launcher = _ScriptedLauncher(
        "import time; time.sleep(0.6); raise SystemExit(1)",
        workers=2,
        max_restarts=3,
        deadline=time.monotonic() + 0.2,
    )
    assert launcher.run(install_signal_handlers=False) == 0
    w0, w1 = launcher.slots
    assert w0.exit_codes == [1] and w0.restarts == 0 and w0.finished and not w0.gave_up
    assert w1.pids == [] and w1.finished
