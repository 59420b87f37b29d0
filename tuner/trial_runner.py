"""Run one trial in a warm child process that holds the GPU; classify how it ended.

Process model: the worker (parent) holds the study, the heartbeat and the sampler; a child started with the
multiprocessing *spawn* context holds the GPU. The child pins its GPU (CUDA_VISIBLE_DEVICES) and sets
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before torch initialises CUDA (the estimator models that allocator),
imports torch once, keeps the tokenized data open (memory-mapped, prepared once in a shared cache dir) and serves
trial requests over a duplex pipe until told to exit. It is replaced after a CUDA error, an OOM, a ceiling stop, a
timeout or a crash, so a sticky CUDA error or leaked memory never poisons the next trial, and NVML's per-process
figure is the trial's own.

Messages child -> parent: {"type": "ready", device, device_name}, {"type": "progress", step, tokens, loss,
elapsed_s}, {"type": "ceiling", peak_gib}, {"type": "result", "outcome": {...}}. Parent -> child: a trial request
(dict, see `TrialRunner.run`), {"type": "stop"} (end the current trial cleanly), {"type": "exit"}.

Outcome kinds: complete, vram_ceiling, oom, numerical_instability, learning_curve, invalid_config, interrupted,
timeout, error. `replace_child` says whether the parent must start a fresh child before the next trial.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from tuner.errors import TunerError

GIB = float(2**30)

# Ends after which the child is replaced: its CUDA context may be poisoned, or its memory leaked or fragmented.
_REPLACE_AFTER = {"vram_ceiling", "oom", "timeout", "interrupted", "crash"}
CEILING_KILL_AFTER_S = 1.0  # the child must stop within this long after reporting a crossing, or it is killed
STOP_GRACE_S = 10.0  # after a stop request (SIGTERM to the worker), how long the current step may take to finish
READY_TIMEOUT_S = 300.0  # importing torch on a loaded 2-core machine can take tens of seconds
PROGRESS_EVERY_S = 0.25


class ChildStartError(TunerError):
    """The trial child could not start (import failure, no CUDA where expected, ...): a worker problem, not a
    trial's; the worker stops instead of failing every trial the same way."""


class TrialStopRequested(Exception):
    """Raised inside the child's step callback when the parent asked the trial to stop (worker shutting down)."""


class InjectedFault(RuntimeError):
    """A failure raised on purpose by the test-only fault hook (a double of the failure, not of the service)."""


@dataclasses.dataclass(frozen=True)
class FaultInjection:
    """Test-only hook the child honours: at optimizer step `at_step` of the trials numbered in `trials` (None: all),
    raise the failure `kind` inside the training step:
      "oom": torch.cuda.OutOfMemoryError (what a real CUDA OOM raises), "error": InjectedFault,
      "nonfinite": model.errors.NumericalInstabilityError, "slow": sleep `sleep_s` in every step from `at_step` on
      (makes a trial long enough to be interrupted; raises nothing).
    Never set by a study file; only tests and `run_worker(fault=...)` pass it (one, or a list: the first that
    applies to a trial is used)."""

    kind: str
    at_step: int = 1
    trials: tuple[int, ...] | None = None
    sleep_s: float = 0.5

    def applies(self, trial_number: int | None) -> bool:
        return self.trials is None or trial_number in self.trials


# =====================================================================================================================
# Parent side
# =====================================================================================================================


class TrialRunner:
    """One warm child process per worker. `run(request)` sends a trial and waits for its outcome.

    Args:
        gpu: physical GPU index (NVML numbering) to pin the child to, or None to let it pick (CPU without CUDA).
        cache_dir: where tokenized data is cached (shared between workers; preparation is locked).
        cpu_threads: torch intra-op threads of a child that trains on CPU (default 1: the tiny CPU models gain
            nothing from more, and several workers on a shared machine would oversubscribe its cores - measured on
            2 shared cores: 1 thread 10 s, 2 threads 67 s for the same run). None keeps torch's default. Ignored
            on a GPU.
    """

    def __init__(self, gpu: int | None = None, cache_dir: str | os.PathLike = ".phase1_cache",
                 cpu_threads: int | None = 1):
        self.gpu = gpu
        self.cpu_threads = cpu_threads
        self.cache_dir = str(Path(cache_dir).resolve())
        self._ctx = mp.get_context("spawn")
        self._proc: mp.process.BaseProcess | None = None
        self._conn = None
        self.device: str | None = None  # "cuda" | "cpu", known once the child is ready
        self.device_name: str | None = None
        self.n_started = 0

    # --- child lifecycle ----------------------------------------------------------------------------------------
    def ensure_started(self) -> None:
        """Start a child if none is alive, and wait until it has imported torch."""
        if self._proc is not None and self._proc.is_alive():
            return
        self._discard()
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=child_main, args=(child_conn, self.gpu, os.getpid(), self.cpu_threads),
                                 name=f"tuner-trial-child-{self.n_started}", daemon=True)
        proc.start()
        child_conn.close()
        self._proc, self._conn = proc, parent_conn
        self.n_started += 1
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if parent_conn.poll(0.1):
                try:
                    msg = parent_conn.recv()
                except (EOFError, OSError):
                    proc.join(1.0)
                    code = proc.exitcode
                    self._discard()
                    raise ChildStartError(f"trial child exited during startup ({_describe_exit(code)}); see its "
                                          "output above") from None
                if msg.get("type") == "ready":
                    self.device, self.device_name = msg["device"], msg["device_name"]
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
        """Ask the child to exit; kill it if it does not within 5 s. Safe to call twice."""
        if self._proc is None:
            return
        try:
            if self._proc.is_alive():
                try:
                    self._conn.send({"type": "exit"})
                except (OSError, BrokenPipeError):
                    pass
                self._proc.join(5.0)
        finally:
            self._discard()

    def _discard(self) -> None:
        """Kill the child (if any) and forget it."""
        proc, conn = self._proc, self._conn
        self._proc, self._conn = None, None
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(5.0)
        if conn is not None:
            conn.close()

    # --- one trial ----------------------------------------------------------------------------------------------
    def run(self, request: dict[str, Any], timeout_s: float, *,
            on_progress: Callable[[dict[str, Any]], None] | None = None,
            stop_requested: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Run one trial; return its outcome dict ({"kind", "result"?, "error_summary"?, "traceback"?, ...}).

        request: {"config": Phase1Config dict, "data": model.data.DataSource, "train_tokens", "eval_tokens",
        "ceiling_gib", "eval_points" (list of token counts, used without a monitor), "pruning": None | {"enabled",
        "min_fraction", "confidence", "front": [(ppl, gib)], "reference_curves": [[{tokens, val_ppl}]],
        "proxy_peak_gib"}, "trial_number", "fault": FaultInjection | None}. With "pruning" a LearningCurveMonitor
        records the curve (its own log-spaced eval points) whether or not it may prune ("enabled").
        The wall clock for `timeout_s` starts when the request is sent (the child is already warm).
        """
        self.ensure_started()
        conn, proc = self._conn, self._proc
        conn.send({"type": "trial", "cache_dir": self.cache_dir, **request})
        t0 = time.monotonic()
        ceiling_msg: dict[str, Any] | None = None
        ceiling_seen_at: float | None = None
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
                    ceiling_msg, ceiling_seen_at = msg, time.monotonic()
                elif kind == "result":
                    outcome = msg["outcome"]
                continue
            if not proc.is_alive():
                outcome = self._crash_outcome(proc)
                break
            now = time.monotonic()
            if ceiling_seen_at is not None and now - ceiling_seen_at > CEILING_KILL_AFTER_S:
                outcome = {"kind": "vram_ceiling", "peak_gib": ceiling_msg["peak_gib"], "killed": True,
                           "error_summary": f"child did not stop within {CEILING_KILL_AFTER_S:.0f} s of crossing "
                                            "the ceiling; killed"}
                break
            if now - t0 > timeout_s:
                outcome = {"kind": "timeout", "error_summary": f"trial exceeded trial_timeout_s = {timeout_s:g} s; "
                                                               "child killed"}
                break
            if stop_sent_at is None and stop_requested():
                try:
                    conn.send({"type": "stop"})
                except (OSError, BrokenPipeError):
                    pass
                stop_sent_at = now
            if stop_sent_at is not None and now - stop_sent_at > STOP_GRACE_S:
                outcome = {"kind": "interrupted", "killed": True,
                           "error_summary": f"worker stopping; trial did not stop within {STOP_GRACE_S:.0f} s, "
                                            "child killed"}
                break
        outcome.setdefault("wall_s", time.monotonic() - t0)
        if outcome["kind"] == "vram_ceiling" and ceiling_msg is not None:
            outcome.setdefault("peak_gib", ceiling_msg["peak_gib"])
        replace = outcome["kind"] in _REPLACE_AFTER or (outcome["kind"] == "error" and self.device == "cuda")
        outcome["replace_child"] = replace
        if replace:
            self._discard()  # killed now; a fresh child starts with the next trial
        return outcome

    def _crash_outcome(self, proc) -> dict[str, Any]:
        proc.join(1.0)
        return {"kind": "crash", "error_summary": f"trial child process died ({_describe_exit(proc.exitcode)})"}


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# =====================================================================================================================
# Child side (runs in the spawned process; nothing above is used there)
# =====================================================================================================================


def child_main(conn, gpu: int | None, parent_pid: int, cpu_threads: int | None = 1) -> None:
    """Entry point of the trial child. Sets the GPU environment before torch loads, then serves requests."""
    # The worker decides when to stop; Ctrl-C / a group SIGTERM must not kill the child mid-step on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    # The estimator models this allocator setting; it must be set before CUDA initialises.
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    try:
        import torch  # the expensive import, once per child

        import model.train  # noqa: F401

        state = _ChildState(conn, gpu, parent_pid)
        if state.device == "cpu" and cpu_threads is not None:
            torch.set_num_threads(int(cpu_threads))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then exit
        conn.send({"type": "startup_error", "error": f"{type(e).__name__}: {e}"})
        return
    conn.send({"type": "ready", "device": state.device, "device_name": state.device_name})
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # parent gone
        kind = msg.get("type")
        if kind == "exit":
            return
        if kind == "trial":
            outcome = state.run_trial(msg)
            try:
                conn.send({"type": "result", "outcome": outcome})
            except (OSError, BrokenPipeError):
                return
        # a late "stop" after the trial already ended is ignored


class _ChildState:
    """What the child keeps warm between trials: torch, the device, open token data per (source, vocab)."""

    def __init__(self, conn, gpu: int | None, parent_pid: int):
        import torch

        self.conn = conn
        self.send_lock = threading.Lock()
        self.parent_pid = parent_pid
        self.nvml_index = gpu if gpu is not None else 0
        self.device_uuid: str | None = None
        if torch.cuda.is_available():
            self.device = "cuda"
            self.device_name = torch.cuda.get_device_name(0)
            uuid = getattr(torch.cuda.get_device_properties(0), "uuid", None)
            self.device_uuid = str(uuid) if uuid is not None else None
        else:
            self.device = "cpu"
            import platform

            self.device_name = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        self._data: dict[Any, Any] = {}

    def send(self, msg: dict[str, Any]) -> None:
        with self.send_lock:  # the guard thread and the step callback both send
            self.conn.send(msg)

    def data(self, source, vocab_size: int, cache_dir: str):
        from model.data import prepare_data

        key = (repr(source), vocab_size, cache_dir)
        if key not in self._data:
            self._data[key] = prepare_data(source, vocab_size, cache_dir)
        return self._data[key]

    def run_trial(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._run_trial(req)
        except BaseException as e:  # noqa: BLE001 - any failure becomes an outcome; the child stays up
            return _error_outcome(e)
        finally:
            self._release()

    def _release(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def _run_trial(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        from model.config import ConfigError, Phase1Config
        from model.errors import NumericalInstabilityError
        from model.train import train_and_evaluate
        from tuner.curve import LearningCurveMonitor, LearningCurvePrune
        from tuner.vram import VramCeilingExceeded, VramGuard

        config = Phase1Config.from_dict(req["config"])
        lns = config.lns_enabled
        # LNS weights are inference-only: train the float model, convert, evaluate the converted one.
        train_config = config.replace(lns_enabled=False) if lns else config
        data = self.data(req["data"], config.vocab_size, req["cache_dir"])
        ceiling = float(req["ceiling_gib"])
        fault = _fault_for(req.get("fault"), req.get("trial_number"))
        guard = None
        if self.device == "cuda":
            guard = VramGuard(ceiling, device_index=self.nvml_index, torch_device=0, device_uuid=self.device_uuid,
                              on_cross=lambda peak, t: self.send({"type": "ceiling", "peak_gib": peak}))

        monitor = None
        curve_note: dict[str, Any] = {}
        pruning = req.get("pruning")
        if pruning is not None:
            proxy = float(pruning.get("proxy_peak_gib") or 0.0)
            try:
                monitor = LearningCurveMonitor(
                    _Settings(pruning["enabled"], pruning["min_fraction"], pruning["confidence"]),
                    req["train_tokens"], [tuple(p) for p in pruning["front"]],
                    (lambda: guard.peak_gib) if guard is not None else (lambda: proxy),
                    reference_curves=pruning.get("reference_curves") or ())
            except ValueError as e:  # a budget under 16 tokens has no log-spaced schedule
                if pruning["enabled"]:
                    raise  # the spec rejects this combination; reaching here is a bug worth a traceback
                curve_note = {"curve_note": f"no learning curve recorded: {e}"}
        eval_points = list(monitor.eval_points) if monitor is not None else list(req.get("eval_points") or [])

        last_sent = [0.0]

        def on_step(info) -> None:
            if guard is not None:
                guard.check()
            if os.getppid() != self.parent_pid:  # the worker died (e.g. SIGKILL): do not train for nobody
                os._exit(3)
            if self.conn.poll():
                msg = self.conn.recv()
                if msg.get("type") in ("stop", "exit"):
                    raise TrialStopRequested("worker asked the trial to stop")
            if fault is not None and info.step >= fault.at_step:
                _raise_fault(fault, info)
            now = time.monotonic()
            if now - last_sent[0] >= PROGRESS_EVERY_S:
                last_sent[0] = now
                self.send({"type": "progress", "step": info.step, "tokens": info.tokens,
                           "loss": float(info.loss), "elapsed_s": float(info.elapsed_s)})

        base = {"device": self.device, "device_name": self.device_name}
        curve_attrs = lambda: monitor.attrs() if monitor is not None else dict(curve_note)  # noqa: E731
        try:
            if guard is not None:
                guard.start()
            try:
                result = train_and_evaluate(
                    train_config, data, train_tokens=int(req["train_tokens"]), eval_tokens=int(req["eval_tokens"]),
                    device=self.device, on_step=on_step, eval_points=eval_points,
                    on_eval=monitor.on_eval if monitor is not None else None, return_model=lns)
                out = _result_dict(result)
                if lns:
                    out.update(_lns_evaluate(result.model, config, data, int(req["eval_tokens"]), self.device))
                    result.model = None
            finally:
                if guard is not None:
                    guard.stop()
        except VramCeilingExceeded as e:
            return {**base, "kind": "vram_ceiling", "peak_gib": e.peak_gib, **_guard_attrs(guard), **curve_attrs(),
                    "error_summary": str(e)}
        except torch.cuda.OutOfMemoryError as e:
            return {**base, "kind": "oom", **_guard_attrs(guard), **_torch_peak(self.device), **curve_attrs(),
                    **_exc_fields(e)}
        except NumericalInstabilityError as e:
            return {**base, "kind": "numerical_instability", "stability": _jsonable(e.diagnostics),
                    **_guard_attrs(guard), **curve_attrs(), **_exc_fields(e)}
        except LearningCurvePrune as e:
            return {**base, "kind": "learning_curve", **_guard_attrs(guard), **curve_attrs(),
                    "error_summary": str(e)}
        except ConfigError as e:
            return {**base, "kind": "invalid_config", "error_summary": str(e)}
        except TrialStopRequested as e:
            return {**base, "kind": "interrupted", **_guard_attrs(guard), "error_summary": str(e)}
        if monitor is not None:  # the curve is the trained float model's: judge its prediction against that PPL
            monitor.final_error(out["val_ppl_float"])
        return {**base, "kind": "complete", "result": out, **_guard_attrs(guard), **curve_attrs()}


@dataclasses.dataclass(frozen=True)
class _Settings:
    enabled: bool
    min_fraction: float
    confidence: float


def _fault_for(fault, trial_number: int | None) -> FaultInjection | None:
    """The first FaultInjection (one, or a list of them) that applies to this trial."""
    if fault is None:
        return None
    for f in (fault if isinstance(fault, (list, tuple)) else [fault]):
        if f.applies(trial_number):
            return f
    return None


def _raise_fault(fault: FaultInjection, info) -> None:
    if fault.kind == "oom":
        import torch

        raise torch.cuda.OutOfMemoryError(f"injected CUDA out of memory at step {info.step} (test fault hook)")
    if fault.kind == "error":
        raise InjectedFault(f"injected failure at step {info.step} (test fault hook)")
    if fault.kind == "nonfinite":
        from model.errors import NumericalInstabilityError

        raise NumericalInstabilityError(f"injected non-finite loss at step {info.step} (test fault hook)",
                                        {"check": "finite_loss", "value": float("nan"), "step": info.step})
    if fault.kind == "slow":
        time.sleep(fault.sleep_s)
        return
    raise ValueError(f"FaultInjection.kind: {fault.kind!r} is not one of oom, error, nonfinite, slow")


def _lns_evaluate(trained, config, data, eval_tokens: int, device: str) -> dict[str, Any]:
    """Convert the trained float model's linears to LNS in place and evaluate the converted model."""
    from model.lns_linear import convert_to_lns
    from model.train import evaluate

    n = convert_to_lns(trained, config)
    val_loss, val_ppl = evaluate(trained, data, eval_tokens, config, device)
    return {"lns_converted_linears": int(n), "val_loss": float(val_loss), "val_ppl": float(val_ppl)}


def _result_dict(result) -> dict[str, Any]:
    """TrainResult -> JSON-ready dict (the model, if any, is left out)."""
    fields = [f.name for f in dataclasses.fields(result)] if dataclasses.is_dataclass(result) else list(vars(result))
    out = {}
    for name in fields:
        if name == "model":
            continue
        out[name] = _jsonable(getattr(result, name))
    out["val_ppl_float"] = out.get("val_ppl")  # the trained float model's; an LNS trial then replaces val_ppl
    return out


def _jsonable(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _jsonable(dataclasses.asdict(v))
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    try:
        f = float(v)  # numpy / torch scalars
        return f if math.isfinite(f) else None
    except (TypeError, ValueError):
        return str(v)


def _guard_attrs(guard) -> dict[str, Any]:
    if guard is None:
        return {}
    return {"nvml_peak_gib": guard.peak_gib, "nvml_samples": guard.n_samples, "nvml_pid_seen": guard.n_seen,
            "nvml_lookup": guard.nvml_lookup, "allocator_fraction": guard.allocator_fraction}


def _torch_peak(device: str) -> dict[str, Any]:
    if device != "cuda":
        return {}
    import torch

    return {"torch_peak_gib": torch.cuda.max_memory_allocated(0) / GIB}


def _exc_fields(e: BaseException) -> dict[str, Any]:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return {"error_summary": f"{type(e).__name__}: {e}"[:500], "traceback": "".join(tb[-12:])[-4000:]}


def _error_outcome(e: BaseException) -> dict[str, Any]:
    return {"kind": "error", **_exc_fields(e)}
