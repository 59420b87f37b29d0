"""The trial child: the spawned process that holds the GPU, keeps torch and the data warm, and trains one trial
per request."""

from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from model.train_records import RunTimes
from tuner.trial.child_outcome import (
    error_outcome,
    exc_fields,
    final_inference,
    guard_attrs,
    jsonable,
    result_dict,
    torch_peak,
)
from tuner.trial.faults import fault_for, raise_fault
from tuner.trial.outcome import TrialRequest

PROGRESS_EVERY_S = 0.25


class TrialStopRequested(Exception):
    """Raised inside the child's step callback when the parent asked the trial to stop (worker shutting down)."""


def _import_trial_modules() -> None:
    """Import what a trial imports lazily (the model's components, the guard, the curve monitor) before the child
    says it is ready: a prestarted child does it while the worker is busy elsewhere, not in a trial's build.
    torch._dynamo is among them: torch imports it lazily at the first call of a function wrapped to disable it
    (parameter init, the optimizer), which cost the first trial of every fresh child 2-4 s of "build" on CPU."""
    import torch._dynamo  # noqa: F401

    import model.dense
    import model.fast
    import model.lm
    import model.lns_linear
    import model.optim
    import model.stability  # noqa: F401
    import tuner.analysis.curve_monitor
    import tuner.vram.guard  # noqa: F401


def child_main(
    conn: Connection, gpu: int | None, parent_pid: int, cpu_threads: int | None = 1, standby: bool = False
) -> None:
    """Entry point of the trial child. Sets the GPU environment before torch loads, then serves requests.

    standby: start as the worker's standby child: import everything, open data on "warm", touch no device (so it
    holds no GPU memory), and only on {"type": "activate"} find the device, say "ready" and serve trials."""
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

        _import_trial_modules()
        state = _ChildState(conn, gpu, parent_pid, find_device=not standby)
        if standby:
            if not state.stand_by():
                return  # dismissed (or the worker is gone) before it was needed
            state.find_device()
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
        if kind == "warm":  # a prestarted child opens the data before the next trial asks for it
            try:
                state.data(msg["source"], int(msg["vocab_size"]), msg["cache_dir"])
            except Exception:  # noqa: BLE001 - the trial that needs the data reports the error itself
                pass
            state.open_device()
            continue
        if kind == "trial":
            outcome = state.run_trial(msg["request"], msg["cache_dir"])
            try:
                conn.send({"type": "result", "outcome": outcome})
            except (OSError, BrokenPipeError):
                return
            # After the result, not before: the worker records the trial while this runs, and the next request
            # is read only once the memory is released. A child that cannot clean up (a sticky CUDA error) ends
            # here: the worker starts a fresh one for the next trial.
            try:
                state.release()
            except Exception:  # noqa: BLE001 - see above
                return
        # a late "stop" after the trial already ended is ignored


class _ChildState:
    """What the child keeps warm between trials: torch, the device, open token data per (source, vocab)."""

    def __init__(self, conn: Connection, gpu: int | None, parent_pid: int, *, find_device: bool = True) -> None:
        self.conn = conn
        self.send_lock = threading.Lock()
        self.parent_pid = parent_pid
        self._trainer_t0: float | None = None  # this trial's trainer start (monotonic s)
        self._build_lead_s = 0.0  # from the trainer start to train_and_evaluate's call (the guard's start)
        self._data_s = 0.0
        self._times = RunTimes()
        self.nvml_index = gpu if gpu is not None else 0
        self.device_uuid: str | None = None
        self.device = "cpu"
        self.device_name = ""
        self._data: dict[Any, Any] = {}
        if find_device:
            self.find_device()

    def find_device(self) -> None:
        """CUDA if torch sees a GPU, else the CPU; the name and UUID the parent records."""
        import torch

        if torch.cuda.is_available():
            self.device = "cuda"
            self.device_name = torch.cuda.get_device_name(0)
            uuid = getattr(torch.cuda.get_device_properties(0), "uuid", None)
            self.device_uuid = str(uuid) if uuid is not None else None
        else:
            self.device = "cpu"
            import platform

            self.device_name = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"

    def stand_by(self) -> bool:
        """A standby child's wait: say {"type": "standby"} (imports done), open data on "warm" (no device is
        touched), until "activate" (True) or "exit" or the worker gone (False)."""
        try:
            self.conn.send({"type": "standby"})
        except (OSError, BrokenPipeError):
            return False
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                return False
            kind = msg.get("type")
            if kind == "activate":
                return True
            if kind == "exit":
                return False
            if kind == "warm":
                try:
                    self.data(msg["source"], int(msg["vocab_size"]), msg["cache_dir"])
                except Exception:  # noqa: BLE001 - the trial that needs the data reports the error itself
                    pass

    def send(self, msg: dict[str, Any]) -> None:
        with self.send_lock:  # the guard thread and the step callback both send
            self.conn.send(msg)

    def data(self, source: Any, vocab_size: int, cache_dir: str) -> Any:
        from model.data import prepare_data

        key = (repr(source), vocab_size, cache_dir)
        if key not in self._data:
            self._data[key] = prepare_data(source, vocab_size, cache_dir)
        else:
            # Data opened earlier (a warm-up, a previous trial) is used only while its source is still there: data
            # gone mid-study ends the trial `environment_error` whichever trial of the child meets it (cheap: no
            # text is read)
            source.check()
        return self._data[key]

    def run_trial(self, req: TrialRequest, cache_dir: str) -> dict[str, Any]:
        """Run one trial; the outcome as the flat mapping tuner.trial.outcome.TrialOutcome.from_dict reads."""
        self._data_s = 0.0
        self._trainer_t0 = None  # set when the trainer starts (after the data is open)
        self._times = RunTimes()
        try:
            out = self._run_trial(req, cache_dir)
        except BaseException as e:  # noqa: BLE001 - any failure becomes an outcome; the child stays up
            out = error_outcome(e)
        return {**out, **self._phase_seconds(time.monotonic())}

    def _phase_seconds(self, now: float) -> dict[str, float]:
        """The trial's seconds in this child: data_s (opening the token data), build_s (the guard and the model up to
        its first step), train_s (steps), eval_s (validation passes, the LNS evaluation included). A run stopped
        while building counts whole as build_s."""
        if self._trainer_t0 is None:
            return {"data_s": self._data_s, "build_s": 0.0, "train_s": 0.0, "eval_s": 0.0}
        total = now - self._trainer_t0
        built = self._times.build_s
        if built is None:
            return {"data_s": self._data_s, "build_s": total, "train_s": 0.0, "eval_s": 0.0}
        build = min(total, self._build_lead_s + built)
        evals = min(total - build, self._times.eval_s)
        return {"data_s": self._data_s, "build_s": build, "train_s": total - build - evals, "eval_s": evals}

    def open_device(self) -> None:
        """Create the CUDA context now (a no-op on CPU), so the next trial's build does not: it is this process's
        own and stays for its life, so the guard's per-process figure includes it whenever it is created."""
        if self.device != "cuda":
            return
        import torch

        torch.empty(1, device="cuda")
        torch.cuda.empty_cache()  # the trial starts with an empty allocator, as without this

    def release(self) -> None:
        """Free what the last trial left (garbage, the allocator's cache, the peak counters); the caller runs it
        after sending the result and before reading the next request."""
        import gc

        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def _run_trial(self, req: TrialRequest, cache_dir: str) -> dict[str, Any]:
        import torch

        from model.config import ConfigError, Phase1Config
        from model.corpus import DataError
        from model.dense_config import DenseConfig
        from model.errors import NumericalInstabilityError
        from model.train import train_and_evaluate
        from tuner.analysis.curve_monitor import (
            LearningCurveMonitor,
            LearningCurvePrune,
        )
        from tuner.vram.guard import VramCeilingExceeded, VramGuard

        # A reference trial sends a DenseConfig (kind "dense"); the trainer takes either.
        dense = req.config.get("kind") == "dense"
        config: DenseConfig | Phase1Config
        config = DenseConfig.from_dict(req.config) if dense else Phase1Config.from_dict(req.config)
        lns = isinstance(config, Phase1Config) and config.lns_enabled
        # LNS weights are inference-only: train the float model, convert, evaluate the converted one.
        train_config = config.replace(lns_enabled=False) if lns else config
        t_data = time.monotonic()
        try:
            data = self.data(req.data, config.vocab_size, cache_dir)
        except (DataError, OSError) as e:  # the worker's data or cache, not this configuration: see environment.py
            return {"kind": "environment_error", **exc_fields(e)}
        finally:
            self._data_s = time.monotonic() - t_data
        ceiling = float(req.ceiling_gib)
        fault = fault_for(req.fault, req.trial_number)
        guard = None

        def report_crossing(peak_gib: float, crossed_at: float) -> None:
            """Tell the parent (tuner.trial.runner), which kills this child if it has not stopped in time."""
            self.send({"type": "ceiling", "peak_gib": peak_gib, "crossed_at": crossed_at})

        if self.device == "cuda":
            guard = VramGuard(
                ceiling,
                device_index=self.nvml_index,
                torch_device=0,
                device_uuid=self.device_uuid,
                on_cross=report_crossing,
            )

        monitor = None
        curve_note: dict[str, Any] = {}
        pruning = req.pruning
        if pruning is not None:
            proxy = float(pruning.proxy_peak_gib or 0.0)
            try:
                monitor = LearningCurveMonitor(
                    pruning.settings,
                    req.train_tokens,
                    [(float(p[0]), float(p[1])) for p in pruning.front],
                    (lambda: guard.peak_gib) if guard is not None else (lambda: proxy),
                    reference_curves=pruning.reference_curves or (),
                )
            except ValueError as e:  # a budget under 16 tokens has no log-spaced schedule
                if pruning.settings.enabled:
                    raise  # the spec rejects this combination; reaching here is a bug worth a traceback
                curve_note = {"curve_note": f"no learning curve recorded: {e}"}
        eval_points = list(monitor.eval_points) if monitor is not None else list(req.eval_points)

        last_sent = [0.0]
        fault_sent = [False]

        def on_step(info: Any) -> None:
            if guard is not None:
                guard.check()
            if os.getppid() != self.parent_pid:  # the worker died (e.g. SIGKILL): do not train for nobody
                os._exit(3)
            if self.conn.poll():
                msg = self.conn.recv()
                if msg.get("type") in ("stop", "exit"):
                    raise TrialStopRequested("worker asked the trial to stop")
            if fault is not None and info.step >= fault.at_step:
                if fault.kind == "ceiling" and not fault_sent[0]:
                    fault_sent[0] = True
                    report_crossing(ceiling + 0.5, time.monotonic())
                raise_fault(fault, info)
            now = time.monotonic()
            if now - last_sent[0] >= PROGRESS_EVERY_S:
                last_sent[0] = now
                self.send(
                    {
                        "type": "progress",
                        "step": info.step,
                        "tokens": info.tokens,
                        "loss": float(info.loss),
                        "elapsed_s": float(info.elapsed_s),
                    }
                )

        base = {"device": self.device, "device_name": self.device_name}

        def curve_attrs() -> dict[str, Any]:
            return monitor.attrs() if monitor is not None else dict(curve_note)

        try:
            self._trainer_t0 = time.monotonic()
            if guard is not None:
                guard.start()
            self._build_lead_s = time.monotonic() - self._trainer_t0
            try:
                result = train_and_evaluate(
                    train_config,
                    data,
                    train_tokens=int(req.train_tokens),
                    eval_tokens=int(req.eval_tokens),
                    device=self.device,
                    on_step=on_step,
                    eval_points=eval_points,
                    on_eval=monitor.on_eval if monitor is not None else None,
                    return_model=lns or req.measure_inference,  # for the measured inference pass below
                    times=self._times,
                    compile_step=req.step.compile_step,
                    cuda_graph_step=req.step.cuda_graph_step,
                )
                out = result_dict(result)
                if lns or req.measure_inference:  # the model as evaluated (LNS-converted for LNS), on its own
                    t_eval, compiled, n_eval = time.monotonic(), req.step.compile_step, int(req.eval_tokens)
                    out.update(final_inference(result, config, data, n_eval, self.device, guard, compiled=compiled))
                    self._times.eval_s += time.monotonic() - t_eval
            finally:
                if guard is not None:
                    guard.stop()
        except VramCeilingExceeded as e:
            crossed_at = guard.crossed_at if guard is not None else None
            return {
                **base,
                "kind": "vram_ceiling",
                "peak_gib": e.peak_gib,
                "ceiling_stop_s": None if crossed_at is None else time.monotonic() - crossed_at,
                **guard_attrs(guard),
                **curve_attrs(),
                "error_summary": str(e),
            }
        except torch.cuda.OutOfMemoryError as e:
            return {
                **base,
                "kind": "oom",
                **guard_attrs(guard),
                **torch_peak(self.device),
                **curve_attrs(),
                **exc_fields(e),
            }
        except NumericalInstabilityError as e:
            return {
                **base,
                "kind": "numerical_instability",
                "stability": jsonable(e.diagnostics),
                **guard_attrs(guard),
                **curve_attrs(),
                **exc_fields(e),
            }
        except LearningCurvePrune as e:
            return {**base, "kind": "learning_curve", **guard_attrs(guard), **curve_attrs(), "error_summary": str(e)}
        except ConfigError as e:
            return {**base, "kind": "invalid_config", "error_summary": str(e)}
        except TrialStopRequested as e:
            return {**base, "kind": "interrupted", **guard_attrs(guard), "error_summary": str(e)}
        if monitor is not None:  # the curve is the trained float model's: judge its prediction against that PPL
            monitor.final_error(out["val_ppl_float"])
        return {**base, "kind": "complete", "result": out, **guard_attrs(guard), **curve_attrs()}
