"""NVIDIA MPS for packed workers: is a control daemon reachable here, can one be started, and stopping the one we
started. Without MPS, processes on one GPU time-slice (each gets the whole GPU in turn); with it their kernels run
concurrently. Every worker of a launch sees the same mode; `tuner launch` prints which ran and the bench records it.

`nvidia-cuda-mps-control` is the daemon's client: `echo get_server_list | nvidia-cuda-mps-control` succeeds only
when a daemon answers on the pipe directory (CUDA_MPS_PIPE_DIRECTORY, default /tmp/nvidia-mps); `-d` starts one
(needs a driver that allows it: many containers do not), `quit` stops it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass

CONTROL = "nvidia-cuda-mps-control"
MODES = ("auto", "on", "off")  # auto: use a running daemon or start one, else time-slice; on: MPS or refuse


@dataclass(frozen=True)
class MpsState:
    """mode: "mps" or "time-slicing". started: this launch started the daemon (and must stop it). reason: why."""

    mode: str
    started: bool
    reason: str

    @property
    def active(self) -> bool:
        return self.mode == "mps"


def _control(command: str, timeout_s: float = 10.0) -> subprocess.CompletedProcess[str] | None:
    """Send `command` to the daemon through the control binary; None when the binary is missing or hangs."""
    exe = shutil.which(CONTROL)
    if exe is None:
        return None
    try:
        return subprocess.run([exe], input=command + "\n", capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None


def daemon_reachable() -> bool:
    """True when an MPS control daemon answers here."""
    done = _control("get_server_list")
    return done is not None and done.returncode == 0


def prepare_mps(mode: str) -> MpsState:
    """Decide MPS for a launch. "off": time-slicing. "auto"/"on": a reachable daemon is used; else one is started
    (`-d`) and checked; "on" raises RuntimeError when neither works, "auto" falls back to time-slicing and says why."""
    if mode not in MODES:
        raise ValueError(f"mps mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "off":
        if daemon_reachable():  # CUDA clients join a running daemon whatever we ask: say what will run
            return MpsState("mps", False, "--mps off, but an MPS daemon is running here and the workers join it")
        return MpsState("time-slicing", False, "--mps off")
    exe = shutil.which(CONTROL)
    if exe is None:
        return _fallback(mode, f"{CONTROL} is not installed")
    if daemon_reachable():
        return MpsState("mps", False, "an MPS daemon was already running")
    try:
        started = subprocess.run([exe, "-d"], capture_output=True, text=True, timeout=15.0)
    except (OSError, subprocess.TimeoutExpired) as e:
        return _fallback(mode, f"`{CONTROL} -d` failed: {e}")
    if started.returncode != 0:
        why = (started.stderr or started.stdout).strip()[:200] or f"exit code {started.returncode}"
        return _fallback(mode, f"`{CONTROL} -d` failed: {why}")
    for _ in range(20):  # the daemon forks; give it a moment to open its pipe
        if daemon_reachable():
            return MpsState("mps", True, f"started `{CONTROL} -d` for this launch")
        time.sleep(0.25)
    return _fallback(mode, f"`{CONTROL} -d` exited 0 but no daemon answers")


def _fallback(mode: str, reason: str) -> MpsState:
    if mode == "on":
        raise RuntimeError(f"--mps on: {reason}; use --mps auto or off (time-slicing)")
    return MpsState("time-slicing", False, reason)


def stop_mps(state: MpsState) -> None:
    """Stop the daemon if this launch started it (a daemon that was already running is left alone)."""
    if state.started:
        _control("quit")
