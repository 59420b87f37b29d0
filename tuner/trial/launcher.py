"""`tuner launch`: supervised worker processes, `per_gpu` on each GPU (or N CPU workers), on one study.

Each worker is `tuner worker --study NAME [--gpu i]` with CUDA_VISIBLE_DEVICES pinned to its GPU and the storage
URL in TUNER_STORAGE (never in argv, where `ps` would show a password). Several workers on one GPU (packing,
tuner.trial.packing) each keep their own ceiling (allocator cap + NVML per process, in their trial children).
Each worker writes its status file (tuner.trial.worker_status, path in its environment) and its output lines are
prefixed with its slot (`[w3 gpu1]`), so the caller can show one line per worker and say who ran which trial.
The supervisor restarts a worker that exits non-zero (at most `max_restarts` times per slot; a slot that keeps
crashing is given up and reported; exit code 2, a user error, is never restarted; exit 75, the database unreachable
past the outage limit, is always restarted and not counted as a crash: the new worker waits for the database),
leaves a worker that exits 0
finished (the study's shared budget is spent, or its --stop-after window is over), and forwards SIGTERM/SIGINT to
every worker, which end their current trials as `interrupted` (re-enqueued) and exit 0.
With a `deadline` (launch's --stop-after, fixed when launch starts) each worker is started, and restarted, with
`--stop-after` set to the time left; once it has passed no worker is started or restarted (a crash after it is
reported, not retried: a new worker could take no trial), so the workers' own windows end the launch with exit 0.
Workers still running `SHUTDOWN_KILL_S` after the signal are killed, so launch exits within 30 s.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tuner.errors import EXIT_STORAGE_UNAVAILABLE, EXIT_USER_ERROR, TunerError
from tuner.trial.worker_status import STATUS_ENV

log = logging.getLogger(__name__)

SHUTDOWN_KILL_S = 25.0  # < 30 s: the promise of `tuner launch` on SIGTERM
POLL_S = 0.2
# The shortest window a worker is started with: --stop-after is printed to the ms and must be > 0 to parse. Less time
# left than this and the slot is closed instead (its worker could take no trial).
MIN_WINDOW_S = 0.001
# Between worker starts. Workers started together ask for their first trial at the same instant, and on SQLite
# (no row locks) two of them can both take the same enqueued WAITING trial (Optuna reads its state, then writes
# RUNNING); the later `tell` then fails with "Cannot tell a COMPLETE trial" and that worker restarts. Spacing the
# starts makes the collision unlikely; it does not remove it (the storage would have to lock the pop).
START_STAGGER_S = 0.5
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
    """One worker position: `index` (w0, w1, ...) on `gpu` (None: CPU). pids: every process that ran in it."""

    gpu: int | None
    index: int = 0
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    finished: bool = False
    gave_up: bool = False
    exit_codes: list[int] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    status_path: Path | None = None

    @property
    def label(self) -> str:
        return f"w{self.index}" + (f" gpu{self.gpu}" if self.gpu is not None else "")


class Launcher:
    """Supervise one worker per slot: `per_gpu` slots on each of `gpus` (one count for all, or one per GPU), or
    `workers` x `per_gpu` CPU slots.
    `run()` returns 0 when all workers finished (or were stopped by a signal, or by the deadline), 1 when a slot was
    given up after too many crashes.

    deadline: a time.monotonic() value (launch's --stop-after): workers get the time left as their --stop-after,
    and none is started or restarted once it has passed (None: no window).

    extra_env: added to every worker's environment (MPS pipe, the reference trial's ceiling). on_line: receives each
    line a worker prints, prefixed with its slot (default: print it). on_tick: called about every POLL_S while
    workers run (a live display)."""

    def __init__(
        self,
        study_name: str,
        storage_url: str,
        gpus: list[int] | None = None,
        workers: int | None = None,
        n_trials: int | None = None,
        max_restarts: int = 3,
        extra_args: list[str] | None = None,
        *,
        per_gpu: int | Sequence[int] = 1,
        extra_env: dict[str, str] | None = None,
        on_line: Callable[[str], None] | None = None,
        on_tick: Callable[[], None] | None = None,
        deadline: float | None = None,
    ):
        if gpus is None and not workers:
            raise TunerError("tuner launch: give --gpus all|0,1 or --workers N")
        devices: list[int | None] = list(gpus) if gpus is not None else [None] * int(workers or 0)
        counts = [int(per_gpu)] * len(devices) if isinstance(per_gpu, int) else [int(n) for n in per_gpu]
        if len(counts) != len(devices) or any(n < 1 for n in counts):
            raise TunerError(f"--per-gpu {per_gpu}: give at least 1 worker for each of {len(devices)} device(s)")
        self.study_name = study_name
        self.storage_url = storage_url
        self.slots = [_Slot(g, k) for k, g in enumerate(d for d, n in zip(devices, counts) for _ in range(n))]
        self.n_trials = n_trials
        self.max_restarts = int(max_restarts)
        self.extra_args = list(extra_args or [])
        self.extra_env = dict(extra_env or {})
        self.on_line = on_line or (lambda line: print(line, flush=True))
        self.on_tick = on_tick
        self.deadline = deadline
        self.stop_event = threading.Event()
        self._status_dir = Path(tempfile.mkdtemp(prefix="tuner-launch-"))
        for slot in self.slots:
            slot.status_path = self._status_dir / f"w{slot.index}.json"
        self._readers: list[threading.Thread] = []
        self.t_start: float | None = None
        self.wall_s = 0.0

    def _command(self, slot: _Slot) -> list[str]:
        # The storage URL travels in TUNER_STORAGE, not argv: a password must not show in `ps`.
        cmd = [sys.executable, "-c", _WORKER_ENTRY, "worker", "--study", self.study_name, *self.extra_args]
        if slot.gpu is not None:
            cmd += ["--gpu", str(slot.gpu)]
        if self.n_trials is not None:
            cmd += ["--n-trials", str(self.n_trials)]
        left = self.time_left_s()
        if left is not None:
            cmd += ["--stop-after", f"{max(left, MIN_WINDOW_S):.3f}"]
        return cmd

    def time_left_s(self) -> float | None:
        """Seconds until the deadline (negative once past), or None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def window_closed(self) -> bool:
        left = self.time_left_s()
        return left is not None and left < MIN_WINDOW_S

    def _start_in_window(self, slot: _Slot, why: str) -> None:
        """Start `slot`'s worker, or, the window being over, close the slot (finished) with one log line."""
        if self.window_closed():
            slot.finished = True
            log.warning("launch: worker %s %s after the --stop-after window ended; not starting it", slot.label, why)
            return
        self._start(slot)

    def _start(self, slot: _Slot) -> None:
        env = {**os.environ, **self.extra_env, "TUNER_STORAGE": self.storage_url}
        if slot.status_path is not None:
            env[STATUS_ENV] = str(slot.status_path)
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(slot.gpu)
        env["PYTHONUNBUFFERED"] = "1"  # lines reach the launcher as they are printed, not at exit
        env["COLUMNS"] = "1000"  # the worker writes into a pipe: rich would wrap its lines at 80 columns
        slot.proc = subprocess.Popen(self._command(slot), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        slot.pids.append(slot.proc.pid)
        reader = threading.Thread(target=self._relay, args=(slot.label, slot.proc.stdout), daemon=True)
        reader.start()
        self._readers.append(reader)
        log.info("launch: %s worker pid %d started", slot.label, slot.proc.pid)

    def _relay(self, label: str, stream: IO[bytes] | None) -> None:
        """Pass a worker's output on, one line at a time, prefixed with its slot. The pipe is drained to its end
        whatever happens to a line (launch's own stdout closed, say): a full pipe would block the worker."""
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            if line:
                try:
                    self.on_line(f"[{label}] {line}")
                except Exception:  # noqa: BLE001 - a display failure must not stop the worker (see above)
                    pass
        stream.close()

    def statuses(self) -> list[tuple[_Slot, object]]:
        """(slot, its tuner.trial.worker_status.WorkerStatus or None) for every slot, read now."""
        from tuner.trial.worker_status import WorkerStatus

        return [(s, WorkerStatus.read(s.status_path) if s.status_path else None) for s in self.slots]

    def request_stop(self, signum: int | None = None, frame: object = None) -> None:  # noqa: ARG002
        self.stop_event.set()

    def run(self, install_signal_handlers: bool = True) -> int:
        previous = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self.request_stop)
        self.t_start = time.monotonic()
        try:
            for k, slot in enumerate(self.slots):
                if k and self.stop_event.wait(START_STAGGER_S):
                    break
                self._start_in_window(slot, "is due to start")
            while not self.stop_event.is_set():
                if self._supervise_once():
                    break
                if self.on_tick is not None:
                    self.on_tick()
                self.stop_event.wait(POLL_S)
            if self.stop_event.is_set():
                self._shutdown()
        finally:
            self._kill_all()
            for reader in self._readers:
                reader.join(5.0)  # the last lines of every worker are printed before the summary
            self.wall_s = time.monotonic() - self.t_start
            shutil.rmtree(self._status_dir, ignore_errors=True)
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
            if self.window_closed():  # a worker restarted now could take no trial: report the exit, close the slot
                self._start_in_window(slot, f"exited with {code}")
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
                    "launch: worker %s crashed %d times (exit codes %s); giving up on it",
                    slot.label,
                    slot.restarts + 1,
                    slot.exit_codes,
                )
                continue
            slot.restarts += 1
            log.warning(
                "launch: worker %s (pid %d) exited with %d; restart %d/%d",
                slot.label,
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
