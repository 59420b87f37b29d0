"""MPS for packed workers (tuner.trial.mps): detection, start, fallback and stop, against a stand-in
`nvidia-cuda-mps-control` (a shell script that keeps a daemon flag file the way the real one keeps its pipe), and
without any control binary on PATH (this machine's case)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tuner.trial import mps

FAKE = """#!/bin/sh
# stand-in for nvidia-cuda-mps-control: -d starts a "daemon" (a flag file); commands on stdin need it running
FLAG="{flag}"
if [ "$1" = "-d" ]; then
  {start}
fi
read cmd
[ -f "$FLAG" ] || {{ echo "Cannot find MPS control daemon process" >&2; exit 1; }}
case "$cmd" in
  get_server_list) exit 0 ;;
  quit) rm -f "$FLAG"; exit 0 ;;
esac
exit 1
"""


def _works() -> None:
    return None  # the CUDA client ran under MPS


def _never() -> str | None:
    raise AssertionError("no daemon: nothing to probe")


def _fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, can_start: bool, running: bool = False) -> Path:
    flag = tmp_path / "daemon.flag"
    if running:
        flag.touch()
    start = 'touch "$FLAG"; exit 0' if can_start else 'echo "permission denied" >&2; exit 1'
    exe = tmp_path / "bin" / mps.CONTROL
    exe.parent.mkdir()
    exe.write_text(FAKE.format(flag=flag, start=start))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{exe.parent}:/usr/bin:/bin")
    return flag


def test_without_the_control_binary_auto_time_slices_and_on_refuses(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    state = mps.prepare_mps("auto", probe=_never)
    assert state.mode == "time-slicing" and not state.started and "not installed" in state.reason
    assert state.env == {}
    with pytest.raises(RuntimeError, match="--mps on: .*not installed; use --mps auto or off"):
        mps.prepare_mps("on", probe=_never)
    assert mps.prepare_mps("off").mode == "time-slicing"


def test_auto_starts_a_daemon_and_stops_only_the_one_it_started(monkeypatch, tmp_path):
    flag = _fake(tmp_path, monkeypatch, can_start=True)
    state = mps.prepare_mps("auto", probe=_works)
    assert state.active and state.started and flag.exists() and state.env == {}
    mps.stop_mps(state)
    assert not flag.exists()


def test_a_daemon_whose_client_fails_is_stopped_and_bypassed(monkeypatch, tmp_path):
    flag = _fake(tmp_path, monkeypatch, can_start=True)
    state = mps.prepare_mps("auto", probe=lambda: "a CUDA client failed under MPS: cudaErrorMpsConnectionFailed")
    assert state.mode == "time-slicing" and not state.started and "MpsConnectionFailed" in state.reason
    assert not flag.exists()  # the daemon it started is stopped again
    pipe = state.env["CUDA_MPS_PIPE_DIRECTORY"]
    assert Path(pipe).is_dir() and not any(Path(pipe).iterdir())  # no daemon there: CUDA runs without MPS
    with pytest.raises(RuntimeError, match="--mps on: a CUDA client failed"):
        mps.prepare_mps("on", probe=lambda: "a CUDA client failed under MPS: boom")


def test_a_running_daemon_is_used_and_left_running(monkeypatch, tmp_path):
    flag = _fake(tmp_path, monkeypatch, can_start=False, running=True)
    state = mps.prepare_mps("auto", probe=_works)
    assert state.active and not state.started
    mps.stop_mps(state)
    assert flag.exists()
    # --mps off keeps the workers off the running daemon (an empty pipe directory) and leaves it running
    off = mps.prepare_mps("off")
    assert not off.active and "CUDA_MPS_PIPE_DIRECTORY" in off.env and flag.exists()


def test_a_daemon_that_cannot_start_falls_back_with_its_reason(monkeypatch, tmp_path):
    _fake(tmp_path, monkeypatch, can_start=False)
    state = mps.prepare_mps("auto", probe=_never)
    assert state.mode == "time-slicing" and "permission denied" in state.reason
    with pytest.raises(RuntimeError, match="permission denied"):
        mps.prepare_mps("on", probe=_never)
    with pytest.raises(ValueError):
        mps.prepare_mps("sometimes")


def test_the_cuda_probe_reports_a_failing_client_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the probe would pass")
    why = mps.cuda_probe(0)
    assert why is not None and why.startswith("a CUDA client failed under MPS: ") and "\n" not in why
