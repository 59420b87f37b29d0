"""`tuner launch`: one supervised worker process per GPU (or N CPU workers) on one study.

Each worker is `tuner worker --study NAME [--gpu i]` with CUDA_VISIBLE_DEVICES pinned to its GPU and the storage
URL in TUNER_STORAGE (never in argv, where `ps` would show a password).
The supervisor restarts a worker that exits non-zero (at most `max_restarts` times per slot; a slot that keeps
crashing is given up and reported; exit code 2, a user error, is never restarted; exit 75, the database unreachable
past the outage limit, is always restarted and not counted as a crash: the new worker waits for the database),
leaves a worker that exits 0
finished (the study's shared budget is spent), and forwards SIGTERM/SIGINT to every worker, which end their
current trials as `interrupted` (re-enqueued) and exit 0.
Workers still running `SHUTDOWN_KILL_S` after the signal are killed, so launch exits within 30 s.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from tuner.errors import EXIT_STORAGE_UNAVAILABLE, EXIT_USER_ERROR, TunerError

log = logging.getLogger(__name__)

SHUTDOWN_KILL_S = 25.0  # < 30 s: the promise of `tuner launch` on SIGTERM
POLL_S = 0.2
# The worker command, run by the same interpreter (the console script may not be on PATH).
_WORKER_ENTRY = "import sys; from tuner.cli import main; sys.exit(main())"


def parse_gpus(gpus: str) -> list[int]:
    """'all' -> every GPU NVML sees; '0,1' -> [0, 1]. Raises TunerError with the fix when impossible."""
    from tuner.vram.nvml import NvmlUnavailable, nvml_device_count

    text = gpus.strip().lower()
    if text == "all":
        try:
            n = nvml_device_count()
        except NvmlUnavailable as e:
            raise TunerError(f"--gpus all: {e}; on a machine without GPUs use --workers N") from None
        if n == 0:
            raise TunerError("--gpus all: NVML sees no GPU; on a machine without GPUs use --workers N")
        return list(range(n))
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TunerError(f"--gpus {gpus!r}: expected 'all' or a comma-separated list of GPU indices like 0,1") from None
    if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise TunerError(f"--gpus {gpus!r}: expected distinct non-negative GPU indices like 0,1")
    return ids


@dataclass
class _Slot:
    gpu: int | None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    finished: bool = False
    gave_up: bool = False
    exit_codes: list[int] = field(default_factory=list)


class Launcher:
    """Supervise one worker per slot. `run()` returns 0 when all workers finished (or were stopped by a signal),
    1 when a slot was given up after too many crashes."""

    def __init__(
        self,
        study_name: str,
        storage_url: str,
        gpus: list[int] | None = None,
        workers: int | None = None,
        n_trials: int | None = None,
        max_restarts: int = 3,
        extra_args: list[str] | None = None,
    ):
        if gpus is None and not workers:
            raise TunerError("tuner launch: give --gpus all|0,1 or --workers N")
        self.study_name = study_name
        self.storage_url = storage_url
        self.slots = [_Slot(g) for g in gpus] if gpus is not None else [_Slot(None) for _ in range(int(workers or 0))]
        self.n_trials = n_trials
        self.max_restarts = int(max_restarts)
        self.extra_args = list(extra_args or [])
        self.stop_event = threading.Event()

    def _command(self, slot: _Slot) -> list[str]:
        # The storage URL travels in TUNER_STORAGE, not argv: a password must not show in `ps`.
        cmd = [sys.executable, "-c", _WORKER_ENTRY, "worker", "--study", self.study_name, *self.extra_args]
        if slot.gpu is not None:
            cmd += ["--gpu", str(slot.gpu)]
        if self.n_trials is not None:
            cmd += ["--n-trials", str(self.n_trials)]
        return cmd

    def _start(self, slot: _Slot) -> None:
        env = {**os.environ, "TUNER_STORAGE": self.storage_url}
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(slot.gpu)
        slot.proc = subprocess.Popen(self._command(slot), env=env)
        log.info(
            "launch: worker pid %d started%s", slot.proc.pid, f" on GPU {slot.gpu}" if slot.gpu is not None else ""
        )

    def request_stop(self, signum: int | None = None, frame: object = None) -> None:  # noqa: ARG002
        self.stop_event.set()

    def run(self, install_signal_handlers: bool = True) -> int:
        previous = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self.request_stop)
        try:
            for slot in self.slots:
                self._start(slot)
            while not self.stop_event.is_set():
                if self._supervise_once():
                    break
                self.stop_event.wait(POLL_S)
            if self.stop_event.is_set():
                self._shutdown()
        finally:
            self._kill_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if any(s.gave_up for s in self.slots) else 0

    def _supervise_once(self) -> bool:
        """Reap exited workers, restart crashed ones. True when every slot is finished or given up."""
        for slot in self.slots:
            if slot.finished or slot.gave_up or slot.proc is None:
                continue
            code = slot.proc.poll()
            if code is None:
                continue
            slot.exit_codes.append(code)
            if code == 0:
                slot.finished = True
                continue
            if code == EXIT_USER_ERROR:  # a user error (one line printed by the worker): restarting cannot fix it
                slot.gave_up = True
                log.error("launch: worker exited with a user error (exit code 2); not restarting it")
                continue
            if code == EXIT_STORAGE_UNAVAILABLE:  # the database was down past the outage limit: not a crash
                log.warning(
                    "launch: worker pid %d gave up on an unreachable database (exit %d); starting it again "
                    "(it waits for the database)",
                    slot.proc.pid,
                    code,
                )
                self._start(slot)
                continue
            if slot.restarts >= self.max_restarts:
                slot.gave_up = True
                log.error(
                    "launch: worker%s crashed %d times (exit codes %s); giving up on it",
                    f" on GPU {slot.gpu}" if slot.gpu is not None else "",
                    slot.restarts + 1,
                    slot.exit_codes,
                )
                continue
            slot.restarts += 1
            log.warning(
                "launch: worker pid %d exited with %d; restart %d/%d",
                slot.proc.pid,
                code,
                slot.restarts,
                self.max_restarts,
            )
            self._start(slot)
        return all(s.finished or s.gave_up for s in self.slots)

    def _shutdown(self) -> None:
        """Forward SIGTERM to every live worker; wait up to SHUTDOWN_KILL_S for them to exit."""
        live = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for p in live:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + SHUTDOWN_KILL_S
        for p in live:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(
                    "launch: worker pid %d did not exit within %.0f s of SIGTERM; killing it", p.pid, SHUTDOWN_KILL_S
                )

    def _kill_all(self) -> None:
        for slot in self.slots:
            p = slot.proc
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5.0)
