"""Run one trial in a warm child process that holds the GPU; classify how it ended.

Process model: the worker (parent) holds the study, the heartbeat and the sampler; a child started with the
multiprocessing *spawn* context holds the GPU. The child pins its GPU (CUDA_VISIBLE_DEVICES) and sets
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before torch initialises CUDA (the estimator models that allocator),
imports torch once, keeps the tokenized data open (memory-mapped, prepared once in a shared cache dir) and serves
trial requests over a duplex pipe until told to exit. It is replaced after a CUDA error, an OOM, a ceiling stop, a
timeout or a crash, so a sticky CUDA error or leaked memory never poisons the next trial, and NVML's per-process
figure is the trial's own.

Messages child -> parent: {"type": "standby"} (imports done), {"type": "ready", device, device_name}, {"type":
"progress", step, tokens, loss, elapsed_s}, {"type": "ceiling", peak_gib, crossed_at}, {"type": "result", "outcome":
{...}}. Parent -> child: a trial request (dict, see `TrialRunner.run`), {"type": "stop"} (end the current trial
cleanly), {"type": "warm", source, vocab_size, cache_dir} (open that data now), {"type": "activate"} (a standby
child takes over), {"type": "exit"}.

Keeping the child warm: the worker starts its first child (`prestart`) before it opens the study, and a child
replaced after a trial is started again at once, not when the next trial asks for it; either is told to open the
data (the study's, or the last trial's). The child imports torch and everything a trial imports, then, on that
message, opens the data and creates its CUDA context, so all of it overlaps the worker's own work (opening the
study, recording the last trial, sampling the next) instead of the next trial's wall time (tuner.trial.phases).
On CUDA the runner also keeps a standby child (imports done, data open, no device touched, so no GPU memory),
started while a trial trains; a replaced child's successor is that standby, activated, so the next trial does not
wait for torch to import (`TrialRunner(standby=...)`).

Outcome kinds: complete, vram_ceiling, oom, numerical_instability, learning_curve, invalid_config, interrupted,
timeout, error. `replace_child` says whether the parent must start a fresh child before the next trial.

A compiled step on CUDA gets a fresh child after every trial: a process that compiled one trial's model keeps part
of it (compile caches, CUDA graph pools, kernels) in the next trial's NVML peak. In the H100 8 GiB study
(`python bench/child_age.py`) compiled trials' NVML peak / estimate rose from median 0.88 on a child's first trial to
0.99 on its fifth; eager studies' stayed flat. User attr `child_trials_before` records a trial's place in its child.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from tuner.errors import TunerError
from tuner.trial.child import child_main
from tuner.trial.outcome import TrialOutcome, TrialRequest

# Ends after which the child is replaced: its CUDA context may be poisoned, or its memory leaked or fragmented.
_REPLACE_AFTER = {"vram_ceiling", "oom", "timeout", "interrupted", "crash"}
# The child must stop this long after the guard's first sample over the ceiling (its clock: CLOCK_MONOTONIC, one
# per host) or is killed; under 1 s by the poll period and the kill's delivery.
CEILING_KILL_AFTER_S = 0.85
STOP_GRACE_S = 10.0  # after a stop request (SIGTERM to the worker), the current step's time to finish
READY_TIMEOUT_S = 300.0  # importing torch on a loaded 2-core machine can take tens of seconds


class ChildStartError(TunerError):
    """The trial child could not start (import failure, no CUDA where expected, ...): a worker problem, not a
    trial's; the worker stops instead of failing every trial the same way."""


class TrialRunner:
    """One warm child process per worker. `run(request)` sends a trial and waits for its outcome.

    Args:
        gpu: physical GPU index (NVML numbering) to pin the child to, or None to let it pick (CPU without CUDA).
        cache_dir: where tokenized data is cached (shared between workers; preparation is locked).
        cpu_threads: torch intra-op threads of a child that trains on CPU (default 1: the tiny CPU models gain
            nothing from more, and several workers on a shared machine would oversubscribe its cores - measured on
            2 shared cores: 1 thread 10 s, 2 threads 67 s for the same run). None keeps torch's default. Ignored
            on a GPU.
        standby: keep a standby child besides the one that trains (None: on CUDA only). It is started while a
            trial trains, imports everything and opens the data but touches no device (it holds no GPU memory);
            when the training child is replaced (after a ceiling stop, an OOM, a timeout, a crash) it takes over at
            once instead of a fresh child importing torch while the next trial waits. It costs host memory (one
            more process with torch loaded) and, once, a core for its start while a trial trains.
        fresh_child: a fresh child for every trial (None: compiled steps on CUDA only; module docstring). The
            standby takes over; the cost, a CUDA context, overlaps the worker's recording and sampling.
    """

    def __init__(
        self,
        gpu: int | None = None,
        cache_dir: str | os.PathLike[str] = ".phase1_cache",
        cpu_threads: int | None = 1,
        standby: bool | None = None,
        fresh_child: bool | None = None,
    ) -> None:
        self.gpu = gpu
        self.cpu_threads = cpu_threads
        self.cache_dir = str(Path(cache_dir).resolve())
        self._ctx = mp.get_context("spawn")
        self._proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self.device: str | None = None  # "cuda" | "cpu", known once the child is ready
        self.device_name: str | None = None
        self.n_started = 0
        self._ready = False  # the current child has said "ready"
        self._last_data: tuple[Any, int] | None = None  # (DataSource, vocab_size) of the last trial: what to warm
        self._spawned_at = 0.0
        self.standby = standby
        self._standby: tuple[BaseProcess, Connection] | None = None  # the standby child and its pipe
        self.n_promoted = 0  # standby children that took over
        self.fresh_child = fresh_child
        self._child_trials = 0  # trials the current child has run (0: it is fresh)

    # --- child lifecycle ----------------------------------------------------------------------------------------
    def ensure_started(self) -> None:
        """Start a child if none is alive, and wait until it has imported torch (a child prestarted after the last
        trial may be ready already, or part of the way; the standby child, if one is kept, takes over a dead one)."""
        if (self._proc is None or not self._proc.is_alive()) and not self._promote_standby():
            self._spawn()
        if not self._ready:
            self._wait_ready()

    def prestart(self, data: tuple[Any, int] | None = None) -> None:
        """Start the next child now, without waiting for it: it imports torch and the model, opens the device and
        opens the data while the worker does something else (records the last trial, samples the next, or - at the
        worker's start - opens the study), so ensure_started finds it ready or nearly.

        data: (model.data.DataSource, vocab_size) to open (default: the last trial's). A child already running is
        kept (and told to open the data)."""
        if data is not None:
            self._last_data = (data[0], int(data[1]))
        if (self._proc is None or not self._proc.is_alive()) and not self._promote_standby():
            self._spawn()
        if self._conn is not None and self._last_data is not None:
            source, vocab_size = self._last_data
            try:
                self._conn.send(
                    {"type": "warm", "source": source, "vocab_size": vocab_size, "cache_dir": self.cache_dir}
                )
            except (OSError, BrokenPipeError):
                pass  # the child died already: ensure_started reports it

    def _spawn(self) -> None:
        self._discard()
        self._proc, self._conn = self._start_process(standby=False)
        self._ready = False
        self._spawned_at = time.monotonic()

    def _start_process(self, *, standby: bool) -> tuple[BaseProcess, Connection]:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=child_main,
            args=(child_conn, self.gpu, os.getpid(), self.cpu_threads, standby),
            name=f"tuner-trial-child-{self.n_started}" + ("-standby" if standby else ""),
            daemon=True,
        )
        proc.start()
        child_conn.close()
        self.n_started += 1
        return proc, parent_conn

    def _keep_standby(self) -> None:
        """Start a standby child if this runner keeps one (see `standby`) and none is alive, and tell it the data."""
        wanted = self.standby if self.standby is not None else self.device == "cuda"
        if not wanted:
            return
        if self._standby is not None and self._standby[0].is_alive():
            return
        self._drop_standby()
        proc, conn = self._start_process(standby=True)
        self._standby = (proc, conn)
        if self._last_data is not None:
            source, vocab_size = self._last_data
            try:
                conn.send({"type": "warm", "source": source, "vocab_size": vocab_size, "cache_dir": self.cache_dir})
            except (OSError, BrokenPipeError):
                pass  # died at once: promotion finds it dead and starts a fresh child instead

    def wait_standby(self, timeout_s: float) -> bool:
        """Wait until the standby child has imported everything (True), or `timeout_s` passes or there is none
        (False). Nothing needs to wait for it (a promoted child that is still importing is waited for as ready);
        tests and benches do, to know what they measure."""
        if self._standby is None:
            return False
        proc, conn = self._standby
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.is_alive():
            if conn.poll(0.05):
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    return False
                if msg.get("type") == "standby":
                    return True
        return False

    def _promote_standby(self) -> bool:
        """Make the standby child (if alive) the training child: it finds the device and says ready. False: none."""
        standby, self._standby = self._standby, None
        if standby is None:
            return False
        proc, conn = standby
        try:
            if not proc.is_alive():
                raise OSError("standby child died")
            conn.send({"type": "activate"})
        except (OSError, BrokenPipeError):
            _kill(proc, conn)
            return False
        self._discard()
        self._proc, self._conn = proc, conn
        self._ready = False
        self._spawned_at = time.monotonic()  # READY_TIMEOUT_S counts from its activation
        self.n_promoted += 1
        return True

    def _drop_standby(self) -> None:
        standby, self._standby = self._standby, None
        if standby is not None:
            _kill(*standby)

    def _wait_ready(self) -> None:
        proc, parent_conn = self._proc, self._conn
        if proc is None or parent_conn is None:
            raise ChildStartError("trial child is not running")
        deadline = self._spawned_at + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if parent_conn.poll(0.1):
                try:
                    msg = parent_conn.recv()
                except (EOFError, OSError):
                    proc.join(1.0)
                    code = proc.exitcode
                    self._discard()
                    raise ChildStartError(
                        f"trial child exited during startup ({_describe_exit(code)}); see its output above"
                    ) from None
                if msg.get("type") == "ready":
                    self.device, self.device_name = msg["device"], msg["device_name"]
                    self._ready = True
                    return
                if msg.get("type") == "startup_error":
                    self._discard()
                    raise ChildStartError(f"trial child could not start: {msg['error']}")
            elif not proc.is_alive():
                code = proc.exitcode
                self._discard()
                raise ChildStartError(f"trial child exited during startup ({_describe_exit(code)})")
        self._discard()
        raise ChildStartError(f"trial child not ready after {READY_TIMEOUT_S:.0f} s")

    @property
    def child_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def close(self) -> None:
        """Ask the child to exit; kill it if it does not within 5 s (at once if it is still starting: it reads no
        message before it is ready). Safe to call twice."""
        if self._proc is None:
            return
        try:
            if self._ready and self._proc.is_alive() and self._conn is not None:
                try:
                    self._conn.send({"type": "exit"})
                except (OSError, BrokenPipeError):
                    pass
                self._proc.join(5.0)
        finally:
            self._discard()
            self._drop_standby()

    def _discard(self) -> None:
        """Kill the child (if any) and forget it."""
        proc, conn = self._proc, self._conn
        self._proc, self._conn = None, None
        self._ready = False
        self._child_trials = 0  # whatever serves next is a new process
        if proc is not None and conn is not None:
            _kill(proc, conn)

    # --- one trial ----------------------------------------------------------------------------------------------
    def run(
        self,
        request: TrialRequest,
        timeout_s: float,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        stop_requested: Callable[[], bool] = lambda: False,
    ) -> TrialOutcome:
        """Run one trial; return how it ended (tuner.trial.outcome.TrialOutcome).

        With `request.pruning` a LearningCurveMonitor records the curve (its own log-spaced eval points) whether or
        not it may prune (`settings.enabled`). The wall clock for `timeout_s` starts when the request is sent (the
        child is already warm).
        """
        self.ensure_started()
        conn, proc = self._conn, self._proc
        if conn is None or proc is None:  # ensure_started raises when no child could start
            raise ChildStartError("trial child is not running")
        conn.send({"type": "trial", "cache_dir": self.cache_dir, "request": request})
        child_trials_before, self._child_trials = self._child_trials, self._child_trials + 1
        self._last_data = (request.data, int(request.config.get("vocab_size", 0)))
        self._keep_standby()  # while the trial trains
        t0 = time.monotonic()
        ceiling_msg: dict[str, Any] | None = None
        crossed_at: float | None = None
        stop_sent_at: float | None = None
        outcome: dict[str, Any] | None = None
        while outcome is None:
            if conn.poll(0.05):
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    outcome = self._crash_outcome(proc)
                    break
                kind = msg.get("type")
                if kind == "progress" and on_progress is not None:
                    on_progress(msg)
                elif kind == "ceiling":
                    ceiling_msg = msg
                    crossed_at = float(msg["crossed_at"])  # the child's monotonic clock: one clock per host
                elif kind == "result":
                    outcome = msg["outcome"]
                continue
            if not proc.is_alive():
                outcome = self._crash_outcome(proc)
                break
            now = time.monotonic()
            if ceiling_msg is not None and crossed_at is not None and now - crossed_at > CEILING_KILL_AFTER_S:
                outcome = {
                    "kind": "vram_ceiling",
                    "peak_gib": ceiling_msg["peak_gib"],
                    "killed": True,
                    "ceiling_stop_s": time.monotonic() - crossed_at,
                    "error_summary": f"child did not stop within {CEILING_KILL_AFTER_S:g} s of crossing "
                    "the ceiling; killed",
                }
                break
            if now - t0 > timeout_s:
                outcome = {
                    "kind": "timeout",
                    "error_summary": f"trial exceeded trial_timeout_s = {timeout_s:g} s; child killed",
                }
                break
            if stop_sent_at is None and stop_requested():
                try:
                    conn.send({"type": "stop"})
                except (OSError, BrokenPipeError):
                    pass
                stop_sent_at = now
            if stop_sent_at is not None and now - stop_sent_at > STOP_GRACE_S:
                outcome = {
                    "kind": "interrupted",
                    "killed": True,
                    "error_summary": f"worker stopping; trial did not stop within {STOP_GRACE_S:.0f} s, child killed",
                }
                break
        outcome.setdefault("wall_s", time.monotonic() - t0)
        # A child killed mid-trial (ceiling, timeout, stop) sent no phases: it was busy from the request to the kill
        if "train_s" not in outcome:
            outcome["train_s"] = time.monotonic() - t0
        if outcome["kind"] == "vram_ceiling" and ceiling_msg is not None:
            outcome.setdefault("peak_gib", ceiling_msg["peak_gib"])
        outcome["child_trials_before"] = child_trials_before
        replace = (
            outcome["kind"] in _REPLACE_AFTER
            or (outcome["kind"] == "error" and self.device == "cuda")
            or self.fresh_child_after(request)
        )
        outcome["replace_child"] = replace
        if replace:
            self._discard()  # killed now; a fresh child serves the next trial
            if not stop_requested():
                self.prestart()  # warm before the next trial asks for it
        return TrialOutcome.from_dict(outcome)

    def fresh_child_after(self, request: TrialRequest) -> bool:
        """Replace the child after `request` whatever its end? (`fresh_child`; None: a compiled step on CUDA)"""
        if self.fresh_child is not None:
            return self.fresh_child
        return self.device == "cuda" and request.step.compile_step

    def _crash_outcome(self, proc: BaseProcess) -> dict[str, Any]:
        proc.join(1.0)
        return {"kind": "crash", "error_summary": f"trial child process died ({_describe_exit(proc.exitcode)})"}


def _kill(proc: BaseProcess, conn: Connection) -> None:
    """Kill a child (if alive), reap it, close its pipe."""
    if proc.is_alive():
        proc.kill()
    proc.join(5.0)
    conn.close()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
