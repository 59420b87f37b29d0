"""NVIDIA MPS for packed workers: is a control daemon reachable here, can one be started, does a CUDA client really
run under it, and stopping the one we started. Without MPS, processes on one GPU time-slice (each gets the whole
GPU in turn); with it their kernels run concurrently. Every worker of a launch sees the same mode; `tuner launch`
prints which ran and the bench records it.

`nvidia-cuda-mps-control` is the daemon's client: `echo get_server_list | nvidia-cuda-mps-control` succeeds only
when a daemon answers on the pipe directory (CUDA_MPS_PIPE_DIRECTORY, default /tmp/nvidia-mps); `-d` starts one,
`quit` stops it. A daemon that answers can still fail its clients (the MPS server starts with the first client, and
many containers do not allow it), so before the workers use MPS a one-line CUDA client is run under it (`probe`);
when it fails, a daemon we started is stopped and the workers are pointed at an empty pipe directory (CUDA then
runs them without MPS), and the reason is printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CONTROL = "nvidia-cuda-mps-control"
MODES = ("auto", "on", "off")  # auto: use a running daemon or start one, else time-slice; on: MPS or refuse
PROBE_TIMEOUT_S = 120.0
_PROBE = "import torch; torch.ones(1, device='cuda').add_(1); torch.cuda.synchronize()"


@dataclass(frozen=True)
class MpsState:
    """mode: "mps" or "time-slicing". started: this launch started the daemon (and must stop it). reason: why.
    env: added to every worker's environment (keeps CUDA clients off a daemon that must not be used)."""

    mode: str
    started: bool
    reason: str
    env: dict[str, str] = field(default_factory=dict)

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


def cuda_probe(gpu: int | None) -> str | None:
    """Run a one-line CUDA client (torch) on `gpu`; None when it worked, else why it did not (one line)."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"a CUDA client under MPS did not finish: {e}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return f"a CUDA client failed under MPS: {last[:200]}"
    return None


def prepare_mps(mode: str, probe: Callable[[], str | None] = lambda: cuda_probe(0)) -> MpsState:
    """Decide MPS for a launch. "off": time-slicing. "auto"/"on": a reachable daemon is used, else one is started
    (`-d`); either must pass `probe` (a CUDA client run under it). "on" raises RuntimeError when that fails, "auto"
    falls back to time-slicing and says why."""
    if mode not in MODES:
        raise ValueError(f"mps mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "off":
        if daemon_reachable():  # a running daemon would be joined by every CUDA client: keep them off it
            return MpsState("time-slicing", False, "--mps off (a running MPS daemon is bypassed)", _no_mps_env())
        return MpsState("time-slicing", False, "--mps off")
    exe = shutil.which(CONTROL)
    if exe is None:
        return _fallback(mode, f"{CONTROL} is not installed")
    started = False
    if not daemon_reachable():
        why = _start(exe)
        if why is not None:
            return _fallback(mode, why)
        started = True
    failed = probe()
    if failed is not None:
        if started:
            _control("quit")
        return _fallback(mode, failed, _no_mps_env())
    return MpsState(
        "mps", started, f"started `{CONTROL} -d` for this launch" if started else "an MPS daemon was already running"
    )


def _start(exe: str) -> str | None:
    """Start a daemon; None when it answers, else why not."""
    try:
        done = subprocess.run([exe, "-d"], capture_output=True, text=True, timeout=15.0)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`{CONTROL} -d` failed: {e}"
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip()[:200] or f"exit code {done.returncode}"
        return f"`{CONTROL} -d` failed: {why}"
    for _ in range(20):  # the daemon forks; give it a moment to open its pipe
        if daemon_reachable():
            return None
        time.sleep(0.25)
    return f"`{CONTROL} -d` exited 0 but no daemon answers"


def _no_mps_env() -> dict[str, str]:
    """A pipe directory with no daemon in it: CUDA clients started with it run without MPS."""
    return {"CUDA_MPS_PIPE_DIRECTORY": tempfile.mkdtemp(prefix="tuner-no-mps-")}


def _fallback(mode: str, reason: str, env: dict[str, str] | None = None) -> MpsState:
    if mode == "on":
        raise RuntimeError(f"--mps on: {reason}; use --mps auto or off (time-slicing)")
    return MpsState("time-slicing", False, reason, env or {})


def stop_mps(state: MpsState) -> None:
    """Stop the daemon if this launch started it (a daemon that was already running is left alone)."""
    if state.started:
        _control("quit")
