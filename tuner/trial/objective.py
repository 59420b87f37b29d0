"""The objective: one Optuna trial from sampled parameters to recorded objective values and end reason.

Flow (architecture.md, "The flow of one trial"):
  params = spec.space.suggest(trial) -> config = spec.build_config(params) -> pre-flight estimate -> train in the
  worker's warm child (tuner.trial.runner) under the VRAM guard -> objective values + user attrs + constraint.

How each end is recorded: tuner.trial.recording (by the ENDINGS table of tuner.trial.outcome).

LNS trials (config.lns_enabled): LNS weights are inference-only, so the child trains the same config with
lns_enabled False, converts the trained model with model.lns_linear.convert_to_lns and evaluates the converted
model; val_ppl is the LNS model's, user attr `val_ppl_float` the trained float model's (the PPL with LNS off beside
the one with LNS on), `eval_used_lns` True, `lns_converted_linears` the number of linears converted, peak memory the
training peak. The learning curve is the float model's (LNS exists only after training).

Reference trials (user attr `reference`, enqueued by tuner.storage.studies when the spec has `baseline:`): the
spec's DenseConfig is trained instead of sampled params; the Phase 1 estimator is skipped (`estimate_skipped`); the
guard watches it without stopping it (REFERENCE_WATCH_CEILING_GIB: the reference is a measurement, not a candidate,
so a plain transformer over the study's ceiling still reports its PPL and real peak; the card itself is its limit);
the values, constraint (peak - the study's ceiling) and attrs are recorded as for any trial.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna

from model.config import ConfigError
from tuner.errors import WorkerEnvironmentError
from tuner.storage._optuna_compat import trial_id
from tuner.storage.trial_attrs import (
    ATTEMPT_ATTRS,
    EndReason,
    is_reference,
    retry_details,
    set_trial_attr,
    trial_attr,
)
from tuner.storage.workers import ProgressRecorder
from tuner.study.spec import StepMode, StudySpec
from tuner.trial.outcome import PruningRequest, TrialRequest
from tuner.trial.phases import PhaseClock
from tuner.trial.recording import (
    TrialFailed,
    TrialTakenOver,
    record_infeasible,
    record_interrupted,
    record_outcome,
)

log = logging.getLogger(__name__)

# The guard's ceiling for a reference trial: no ceiling (the allocator cap becomes the whole card, the NVML sampler
# only measures). The study's ceiling still decides its constraint, so an over-ceiling reference is infeasible.
REFERENCE_WATCH_CEILING_GIB = float("inf")


def reference_ceiling_gib() -> float:
    """The guard's ceiling for a reference trial: REFERENCE_WATCH_CEILING_GIB, or the share of the card a packed
    launch gives it (tuner.trial.packing.REFERENCE_CEILING_ENV), so it cannot crowd out the workers beside it."""
    from tuner.trial.packing import REFERENCE_CEILING_ENV

    text = os.environ.get(REFERENCE_CEILING_ENV)
    try:
        value = float(text) if text else REFERENCE_WATCH_CEILING_GIB
    except ValueError:
        return REFERENCE_WATCH_CEILING_GIB
    return value if value > 0 else REFERENCE_WATCH_CEILING_GIB


class Objective:
    """Callable objective for `study.optimize`.

    Args:
        spec: the StudySpec.
        runner: the worker's tuner.trial.runner.TrialRunner (warm child).
        stop_event: set by the worker's signal handler; the current trial stops and is marked interrupted.
        worker_id: recorded as user attr `worker`.
        on_progress: called with the child's progress messages ({"step", "tokens", "loss"}) plus "trial".
        on_trial_start: called with (trial number, params) when a trial starts (progress displays).
        fault: test-only tuner.trial.faults.FaultInjection passed to the child.
        calibration_path: the VRAM-estimator calibration file (None: tuner.vram.calibration.default_path()); read by the
            pre-flight estimate, refined after each completed GPU trial.
    """

    def __init__(
        self,
        spec: StudySpec,
        runner: Any,
        *,
        stop_event: threading.Event | None = None,
        worker_id: str | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        on_trial_start: Callable[[int, dict[str, Any]], None] | None = None,
        fault: Any = None,
        calibration_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.spec = spec
        self.calibration_path = calibration_path
        self._estimate_of_trial: Any = None  # the current trial's tuner.vram.estimate.Estimate (one trial at a time)
        self._clock = PhaseClock(None)  # the current trial's phases (tuner.trial.phases)
        self._last_end: float | None = None  # monotonic time this objective's previous trial was recorded
        self.runner = runner
        self.stop_event = stop_event or threading.Event()
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.on_progress = on_progress
        self.on_trial_start = on_trial_start
        self.fault = fault
        self.last_trial_id: int | None = None  # the trial this objective ran last (the worker reads it on errors)
        self.last_trial_number: int | None = None

    # =================================================================================================================
    def __call__(self, trial: optuna.trial.Trial) -> tuple[float, ...]:
        """Run one trial. Any unexpected exception becomes FAIL + end_reason `error` with its traceback: the worker
        survives its trial whatever happened in it. Two exceptions end the worker's turn instead: an environment
        failure (WorkerEnvironmentError: not the trial's fault; the worker re-queues the trial and stops) and a
        trial another worker has already failed as stale (TrialTakenOver: its late result is dropped)."""
        from tuner.trial.runner import ChildStartError

        self._clock = PhaseClock(getattr(trial, "datetime_start", None))
        self.last_trial_id, self.last_trial_number = trial_id(trial), trial.number
        try:
            return self._run(trial)
        except (optuna.TrialPruned, TrialFailed, WorkerEnvironmentError):
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            raise TrialTakenOver(f"trial {trial.number} was already failed as stale by another worker") from None
        except ChildStartError as e:  # a worker problem, not the trial's
            trial.set_user_attr("end_reason", EndReason.ENVIRONMENT_ERROR.value)
            trial.set_user_attr("error_summary", str(e)[:500])
            raise WorkerEnvironmentError(str(e)) from None
        except Exception as e:
            import traceback

            trial.set_user_attr("end_reason", EndReason.ERROR.value)
            trial.set_user_attr("error_summary", f"{type(e).__name__}: {e}"[:500])
            trial.set_user_attr("traceback", "".join(traceback.format_exception(e)[-12:])[-4000:])
            raise TrialFailed(f"{type(e).__name__}: {e}") from e
        finally:
            self._record_busy(trial)

    def _record_busy(self, trial: Any) -> None:
        """User attrs `gpu_busy_frac` (the device's seconds training or evaluating this trial over the trial's wall
        time in this worker, from its creation at the ask to now: tuner.trial.phases), `phase_s` (where that wall
        time went, seconds per phase) and `idle_before_s` (seconds from this worker's previous trial's end to this
        trial's creation: Optuna's tell, the budget check). gpu_busy_frac is 0.0 for a trial that never trained
        (refused by the estimate, invalid, interrupted before it started)."""
        if getattr(trial, "datetime_start", None) is None:
            return
        self._clock.close()
        attrs = self._clock.attrs()
        if self._last_end is not None:
            attrs["idle_before_s"] = round(max(0.0, self._clock.origin - self._last_end), 3)
        self._last_end = time.monotonic()
        try:
            for key, value in attrs.items():
                set_trial_attr(trial, key, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed this trial as stale (TrialTakenOver): its late figures are dropped with it

    def _run(self, trial: optuna.trial.Trial) -> tuple[float, ...]:
        spec = self.spec
        self._reset_inherited(trial)
        self._estimate_of_trial = None  # a reference trial makes none; never refine from the previous trial's
        trial.set_user_attr("worker", self.worker_id)
        if self.runner.gpu is not None:
            trial.set_user_attr("gpu", self.runner.gpu)
        if is_reference(trial):
            return self._run_reference(trial)
        params = spec.space.suggest(trial)
        if self.on_trial_start is not None:
            self.on_trial_start(trial.number, params)
        if self.stop_event.is_set():
            return record_interrupted(trial, "worker was stopping before the trial started")
        try:
            config = spec.build_config(params)
        except ConfigError as e:
            trial.set_user_attr("end_reason", EndReason.INVALID_CONFIG.value)
            trial.set_user_attr("error_summary", str(e))
            raise optuna.TrialPruned(f"invalid_config: {e}") from None
        set_trial_attr(trial, "config", config.to_dict())
        ceiling = float(spec.vram_ceiling_gib)
        # The child starts (and reports its device) before the estimate: CPU and GPU compare different figures.
        device = self._start_child(trial, spec.training.step)
        predicted = self._estimate(trial, config, device)
        self._clock.enter("report")  # a refused trial's next step is its record
        if predicted is not None and predicted > ceiling * (1.0 + spec.estimate.margin):
            return record_infeasible(
                trial,
                spec,
                config,
                EndReason.PREDICTED_OVER_CEILING,
                peak_gib=predicted,
                note=f"not trained: predicted peak {predicted:.3f} GiB > ceiling {ceiling:g} GiB "
                f"x (1 + margin {spec.estimate.margin:g}); val_ppl = vocab_size "
                "(the uniform model's PPL)",
            )

        return self._train(trial, config, device, self._pruning_request(trial, predicted))

    def _run_reference(self, trial: optuna.trial.Trial) -> tuple[float, ...]:
        """The study's dense baseline (spec.baseline): no sampled params, no Phase 1 estimate, never pruned by the
        learning curve (a reference must finish to be one); trained, measured and recorded like any trial."""
        config = self.spec.baseline
        if config is None:
            raise TrialFailed(f"trial {trial.number} is a reference trial but the study's spec has no `baseline:`")
        if self.on_trial_start is not None:
            self.on_trial_start(trial.number, {"reference": config.kind})
        if self.stop_event.is_set():
            return record_interrupted(trial, "worker was stopping before the trial started")
        set_trial_attr(trial, "config", config.to_dict())
        trial.set_user_attr("estimate_skipped", "dense baseline: the VRAM estimator models the Phase 1 model only")
        trial.set_user_attr("ceiling_enforced", False)
        # Eager whatever the study's step: the reference is the dense model's eager step, what the speedup is
        # measured against (docs/step_time.md), and its compiled or graphed step is not validated.
        device = self._start_child(trial, StepMode.EAGER)
        settings = dataclasses.replace(self.spec.pruning, enabled=False)  # the curve is still recorded
        watch = reference_ceiling_gib()
        if watch != REFERENCE_WATCH_CEILING_GIB:
            trial.set_user_attr("reference_ceiling_gib", watch)  # a packed launch's share of the card for it
        return self._train(trial, config, device, PruningRequest(settings), ceiling_gib=watch, step=StepMode.EAGER)

    def _start_child(self, trial: Any, step: StepMode) -> str:
        """Start the warm child if needed; record the device, what the peak will measure and the training step
        (refused here, before training, when the device cannot run it). Returns the device."""
        self._clock.enter("wait_child")
        self.runner.ensure_started()
        self._clock.enter("estimate")
        device = str(self.runner.device)
        trial.set_user_attr("device", self.runner.device_name)
        trial.set_user_attr("peak_vram_kind", "nvml_process" if device == "cuda" else "cpu_tensor_bytes")
        trial.set_user_attr("step_mode", step.value)
        problem = step.device_problem(device)
        if problem is not None:  # run_worker refuses this before the first trial; a direct caller meets it here
            raise WorkerEnvironmentError(f"study {self.spec.name}: training.{problem}")
        return device

    def _train(
        self,
        trial: Any,
        config: Any,
        device: str,
        pruning: PruningRequest,
        *,
        ceiling_gib: float | None = None,
        step: StepMode | None = None,
    ) -> tuple[float, ...]:
        """Train `config` (a Phase1Config or DenseConfig) in the warm child under the guard and record the outcome.
        ceiling_gib: what the guard enforces (default: the study's ceiling). step: default the study's."""
        spec = self.spec
        request = TrialRequest(
            config=config.to_dict(),
            data=spec.data,
            train_tokens=spec.budget.train_tokens,
            eval_tokens=spec.budget.eval_tokens,
            ceiling_gib=float(spec.vram_ceiling_gib) if ceiling_gib is None else ceiling_gib,
            pruning=pruning,
            trial_number=trial.number,
            fault=self.fault,
            step=spec.training.step if step is None else step,
            measure_inference=spec.measures_inference,
        )
        forward = None
        if self.on_progress is not None:
            forward = lambda msg: self.on_progress({**msg, "trial": trial.number})
        progress = ProgressRecorder(trial, forward)  # also the trial's latest step, for `tuner status`
        self._clock.enter("handoff")
        outcome = self.runner.run(
            request, spec.budget.trial_timeout_s, on_progress=progress, stop_requested=self.stop_event.is_set
        )
        child = {"data": outcome.data_s, "build": outcome.build_s, "train": outcome.train_s, "eval": outcome.eval_s}
        self._clock.enter("report", parts=child)
        values = record_outcome(trial, spec, config, outcome, device)
        if outcome.kind == "complete" and device == "cuda" and outcome.nvml_pid_seen:
            self._refine_calibration(trial, outcome.result or {}, float(outcome.nvml_peak_gib or 0.0))
        return values

    @staticmethod
    def _reset_inherited(trial: Any) -> None:
        """A heartbeat retry (RetryHeartbeatStaleTrialCallback) copies the dead attempt's user attrs; blank the ones
        that describe how that attempt ended so they cannot stick to this one."""
        failed = trial.storage.get_trial_system_attrs(trial_id(trial)).get("failed_trial")
        if failed is not None:
            trial.set_user_attr("retry_of", failed)
        for key in sorted(ATTEMPT_ATTRS):
            if trial.user_attrs.get(key) is not None:
                trial.set_user_attr(key, None)
        system_attrs = trial.storage.get_trial_system_attrs(trial_id(trial))
        kept = retry_details(system_attrs)  # a retry added before the callbacks cleaned its copy
        for key, value in kept.items():
            if system_attrs.get(key) != value:
                trial.storage.set_trial_system_attr(trial_id(trial), key, value)

    def _estimate(self, trial: Any, config: Any, device: str) -> float | None:
        """Predicted peak GiB in the measure the trial is judged by: on GPU the NVML per-process total (tensor +
        allocator + outside), on CPU the tensor-bytes peak (tuner.vram.estimate with device="cpu")."""
        if not self.spec.estimate.enabled:
            return None
        from tuner.vram.calibration import choose_calibration
        from tuner.vram.estimate import estimate
        from tuner.vram.nvml import current_device_key

        if device == "cuda":  # the calibration file and NVML are read here, by the caller: estimate() is pure
            choice = choose_calibration(self.calibration_path, current_device_key())
            est = estimate(
                config,
                choice.calibration,
                device=device,
                calibrated=choice.calibrated,
                calibration_source=choice.source,
            )
        else:
            est = estimate(config, device=device)
        self._estimate_of_trial = est
        predicted = float(est.total_gib)
        set_trial_attr(trial, "estimate", est.to_dict())  # the breakdown, beside the measured peak
        trial.set_user_attr("predicted_peak_gib", predicted)
        trial.set_user_attr("predicted_peak_kind", "nvml_process" if device == "cuda" else "cpu_tensor_bytes")
        trial.set_user_attr("estimate_calibrated", bool(est.calibrated))
        # The estimator models the eager step. A compiled step alone on a GPU peaks lower (docs/step_time.md: 3.37
        # against 5.06 GiB at 8gb), hence the name, but it is no guaranteed bound: in the packed (MPS) H100 study 13
        # of 64 compiled trials measured above it, by up to 23% (bench/results/study_8gb.json); of those that were
        # their process's first trial, as every compiled trial now is (tuner.trial.runner), 3 of 15 by up to 9.3%
        # (bench/results/child_age.json). The guard enforces.
        eager = self.spec.training.step is StepMode.EAGER
        trial.set_user_attr("estimate_kind", "eager" if eager else "eager_upper_bound")
        return predicted

    def _refine_calibration(self, trial: Any, r: dict[str, Any], nvml_peak_gib: float) -> None:
        """Teach the device's calibration from a trial that ran to the end with a per-process NVML peak (the
        calibration refines itself from finished trials on the same device). Ceiling stops and OOMs are not used:
        their peaks are cut short. An uncalibrated estimate has no device entry to refine."""
        est = self._estimate_of_trial
        if est is None or not est.calibrated or not est.calibration_key:
            return
        from tuner.vram.calibration import CalibrationError, refine_stored

        try:
            refine_stored(
                self.calibration_path,
                est.calibration_key,
                est,
                measured_nvml_gib=float(nvml_peak_gib),
                measured_torch_peak_gib=float(r["peak_torch_gib"]),
                measured_reserved_gib=r.get("peak_reserved_gib"),
            )
        except (OSError, CalibrationError) as e:  # a refinement is a bonus; the trial's own result stands
            log.warning("calibration not refined from trial %d: %s", trial.number, e)
            trial.set_user_attr("calibration_refined", False)
            return
        trial.set_user_attr("calibration_refined", True)

    def _pruning_request(self, trial: Any, predicted: float | None) -> PruningRequest:
        """Learning-curve settings for the child. Always sent: the curve, its fit and the prediction are recorded on
        every trial; `enabled` (the spec's pruning switch) only decides whether the child may prune.

        front: every feasible (val_ppl, peak_vram_gib) point of the study's complete trials (a point is dominated by
        the front iff by some feasible point). reference_curves: the `curve` user attrs of complete trials with the
        same budget; with enough of them the child predicts the final PPL with their late exponents
        (tuner.analysis.curve.predict_late_alpha) instead of the trial's own early fit, which is biased low at the
        budget.
        """
        lc = self.spec.pruning
        names = self.spec.metric_names
        # The rule compares (val_ppl, peak) with the front: without both objectives there is nothing to compare.
        comparable = "val_ppl" in names and "peak_vram_gib" in names
        from tuner.storage.constraints import is_feasible

        budget = int(self.spec.budget.train_tokens)
        points, references = [], []
        for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            # The dense reference is another model family: its point and curve say nothing about a Phase 1 trial.
            if t.user_attrs.get("end_reason") != EndReason.COMPLETE.value or is_reference(t):
                continue
            curve = trial_attr(t, "curve")
            if curve and t.user_attrs.get("curve_budget_tokens", budget) == budget:
                references.append(curve)
            if comparable and is_feasible(t):
                points.append((float(t.values[names.index("val_ppl")]), float(t.values[names.index("peak_vram_gib")])))
        settings = dataclasses.replace(lc, enabled=bool(lc.enabled and comparable))
        # CPU has no live memory figure during the run: the estimate stands in for the trial's peak.
        return PruningRequest(
            settings, front=tuple(points), reference_curves=tuple(references), proxy_peak_gib=predicted
        )
