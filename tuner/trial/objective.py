"""The objective: one Optuna trial from sampled parameters to recorded objective values and end reason.

Flow (architecture.md, "The flow of one trial"):
  params = spec.space.suggest(trial) -> config = spec.build_config(params) -> pre-flight estimate -> train in the
  worker's warm child (tuner.trial.runner) under the VRAM guard -> objective values + user attrs + constraint.

How each end is recorded (user attr `end_reason` is always set):
  complete                COMPLETE, measured values, constraint = peak - ceiling (<= 0 feasible; on CPU a measured
                          peak over the ceiling is known only after the run: end_reason `vram_ceiling`,
                          `ceiling_detected: after_run`, still COMPLETE with the measured values).
  vram_ceiling, oom       COMPLETE but infeasible (constraint > 0) so TPE, NSGA-II and GP all learn the boundary;
                          val_ppl = vocab_size (the uniform model's PPL) unless measured; `objective_note` says so.
  predicted_over_ceiling  COMPLETE, infeasible, zero GPU time: peak = the prediction.
  numerical_instability   PRUNED, `stability` diagnostics saved.
  learning_curve          PRUNED, the curve and its fit saved.
  invalid_config          PRUNED (a config the spec's corner check let through; the sampler should not waste
                          more trials there, and a PRUNED trial is never mistaken for a measured point).
  timeout                 PRUNED (the configuration is valid, just slower than trial_timeout_s).
  interrupted             FAIL; the worker's callback re-enqueues the same params (see tuner.trial.worker), the retry
                          records the trial it replaces (system attrs failed_trial / retry_history).
  error                   FAIL with `error_summary` + `traceback` (also a child crash).
Objective values are returned in the spec's metric order (val_ppl, peak_vram_gib, params, tokens_per_s).

LNS trials (config.lns_enabled): LNS weights are inference-only, so the child trains the same config with
lns_enabled False, converts the trained model with model.lns_linear.convert_to_lns and evaluates the converted
model; val_ppl is the LNS model's, user attr `val_ppl_float` the trained float model's (the PPL with LNS off beside
the one with LNS on), `eval_used_lns` True, `lns_converted_linears` the number of linears converted, peak memory the
training peak. The learning curve is the float model's (LNS exists only after training).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Callable

import optuna

from model.config import ConfigError
from tuner.storage._optuna_compat import trial_id
from tuner.storage.constraints import set_trial_constraint

log = logging.getLogger(__name__)

FEASIBLE_EPS_GIB = 1e-3  # an OOM at the allocator cap has a constraint of at least this (never "exactly feasible")


# User attrs that describe one attempt's ending (blanked on a retry that inherited them).
_ATTEMPT_ATTRS = ("end_reason", "error_summary", "traceback", "objective_note", "stop_summary", "ceiling_detected",
                  "child_replaced", "prune_summary", "observed_peak_gib", "nvml_peak_gib", "torch_peak_gib")


class TrialFailed(Exception):
    """Ends a trial as FAIL after its attributes were recorded; the worker passes it in `catch`."""


class TrialInterrupted(TrialFailed):
    """The worker is stopping (SIGTERM/SIGINT): the trial ends FAIL with end_reason `interrupted` and is retried."""


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

    def __init__(self, spec, runner, *, stop_event: threading.Event | None = None, worker_id: str | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None,
                 on_trial_start: Callable[[int, dict[str, Any]], None] | None = None, fault=None,
                 calibration_path: str | os.PathLike | None = None):
        self.spec = spec
        self.calibration_path = calibration_path
        self._estimate_of_trial: Any = None  # the current trial's tuner.vram.estimate.Estimate (one trial at a time)
        self.runner = runner
        self.stop_event = stop_event or threading.Event()
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.on_progress = on_progress
        self.on_trial_start = on_trial_start
        self.fault = fault

    # =================================================================================================================
    def __call__(self, trial: optuna.trial.Trial) -> tuple[float, ...]:
        """Run one trial. Any unexpected exception becomes FAIL + end_reason `error` with its traceback: the worker
        survives its trial whatever happened in it."""
        from tuner.trial.runner import ChildStartError

        try:
            return self._run(trial)
        except (optuna.TrialPruned, TrialFailed):
            raise
        except ChildStartError as e:  # a worker problem: recorded on the trial, then the worker stops (FAIL)
            trial.set_user_attr("end_reason", "error")
            trial.set_user_attr("error_summary", str(e)[:500])
            raise
        except Exception as e:
            import traceback

            trial.set_user_attr("end_reason", "error")
            trial.set_user_attr("error_summary", f"{type(e).__name__}: {e}"[:500])
            trial.set_user_attr("traceback", "".join(traceback.format_exception(e)[-12:])[-4000:])
            raise TrialFailed(f"{type(e).__name__}: {e}") from e

    def _run(self, trial: optuna.trial.Trial) -> tuple[float, ...]:
        spec = self.spec
        self._reset_inherited(trial)
        trial.set_user_attr("worker", self.worker_id)
        if self.runner.gpu is not None:
            trial.set_user_attr("gpu", self.runner.gpu)
        params = spec.space.suggest(trial)
        if self.on_trial_start is not None:
            self.on_trial_start(trial.number, params)
        if self.stop_event.is_set():
            return self._interrupted(trial, "worker was stopping before the trial started")
        try:
            config = spec.build_config(params)
        except ConfigError as e:
            trial.set_user_attr("end_reason", "invalid_config")
            trial.set_user_attr("error_summary", str(e))
            raise optuna.TrialPruned(f"invalid_config: {e}")
        trial.set_user_attr("config", config.to_dict())
        ceiling = float(spec.vram_ceiling_gib)

        # The child starts (and reports its device) before the estimate: CPU and GPU compare different figures.
        self.runner.ensure_started()
        device = self.runner.device
        trial.set_user_attr("device", self.runner.device_name)
        trial.set_user_attr("peak_vram_kind", "nvml_process" if device == "cuda" else "cpu_tensor_bytes")

        predicted = self._estimate(trial, config, device)
        if predicted is not None and predicted > ceiling * (1.0 + spec.estimate.margin):
            return self._infeasible(trial, config, "predicted_over_ceiling", peak_gib=predicted,
                                    note=f"not trained: predicted peak {predicted:.3f} GiB > ceiling {ceiling:g} GiB "
                                         f"x (1 + margin {spec.estimate.margin:g}); val_ppl = vocab_size "
                                         "(the uniform model's PPL)")

        request = {
            "config": config.to_dict(), "data": spec.data, "train_tokens": spec.budget.train_tokens,
            "eval_tokens": spec.budget.eval_tokens, "ceiling_gib": ceiling, "eval_points": [],
            "pruning": self._pruning_request(trial, predicted), "trial_number": trial.number, "fault": self.fault,
        }
        progress = None
        if self.on_progress is not None:
            progress = lambda msg: self.on_progress({**msg, "trial": trial.number})  # noqa: E731
        outcome = self.runner.run(request, spec.budget.trial_timeout_s, on_progress=progress,
                                  stop_requested=self.stop_event.is_set)
        return self._record(trial, config, outcome, device)

    # =================================================================================================================
    def _record(self, trial, config, outcome: dict[str, Any], device: str) -> tuple[float, ...]:
        kind = outcome["kind"]
        ceiling = float(self.spec.vram_ceiling_gib)
        for key in ("nvml_peak_gib", "nvml_samples", "nvml_pid_seen", "nvml_lookup", "allocator_fraction",
                    "torch_peak_gib"):
            if outcome.get(key) is not None:
                trial.set_user_attr(key, outcome[key])
        for key, value in outcome.items():  # every learning-curve attr the monitor wrote (LearningCurveMonitor.attrs)
            if (key == "curve" or key.startswith("curve_")) and value is not None:
                trial.set_user_attr(key, value)
        trial.set_user_attr("trial_wall_s", round(float(outcome.get("wall_s", 0.0)), 3))
        if outcome.get("replace_child"):
            trial.set_user_attr("child_replaced", True)

        if kind == "complete":
            r = outcome["result"]
            peak = self._peak_from_result(trial, r, outcome, device)
            for key in ("tokens_per_s", "param_counts", "train_time_s", "steps", "val_loss", "val_ppl_float",
                        "lns_converted_linears"):
                if r.get(key) is not None:
                    trial.set_user_attr(key, r[key])
            # The val_ppl objective is the evaluated model's: the LNS-converted one when the config asks for LNS.
            trial.set_user_attr("eval_used_lns", bool(config.lns_enabled))
            trial.set_user_attr("torch_peak_gib", r.get("peak_torch_gib"))
            counts = r.get("param_counts") or _expected_param_counts(config)
            trial.set_user_attr("params_total", params_total(counts))
            diag = r.get("diagnostics") or {}
            trial.set_user_attr("effective_rank", diag.get("effective_rank"))
            trial.set_user_attr("gate_sparsity", diag.get("gate_sparsity"))
            trial.set_user_attr("stability", {k: v for k, v in diag.items()
                                              if k not in ("effective_rank", "gate_sparsity")})
            if "curve" not in trial.user_attrs and r.get("curve") is not None:
                trial.set_user_attr("curve", r["curve"])
            if device == "cuda" and outcome.get("nvml_pid_seen"):
                self._refine_calibration(trial, r, peak)
            over = peak > ceiling
            trial.set_user_attr("end_reason", "vram_ceiling" if over else "complete")
            if over:  # only on CPU: the GPU guard stops the run instead
                trial.set_user_attr("ceiling_detected", "after_run")
            set_trial_constraint(trial, peak - ceiling)
            return self._values(val_ppl=r["val_ppl"], peak=peak, params=params_total(counts),
                                tokens_per_s=r.get("tokens_per_s") or 0.0)

        if kind == "vram_ceiling":
            peak = float(outcome.get("peak_gib") or ceiling)
            trial.set_user_attr("ceiling_detected", "killed" if outcome.get("killed") else "guard_stop")
            return self._infeasible(trial, config, "vram_ceiling", peak_gib=peak,
                                    note=f"stopped at {peak:.3f} GiB > ceiling {ceiling:g} GiB before the end; "
                                         "val_ppl = vocab_size (the uniform model's PPL)",
                                    summary=outcome.get("error_summary"))
        if kind == "oom":
            observed = max(float(outcome.get("nvml_peak_gib") or 0.0), float(outcome.get("torch_peak_gib") or 0.0))
            # The allocator is capped at the ceiling: an OOM means the run asked for more than the ceiling.
            peak = max(observed, ceiling + FEASIBLE_EPS_GIB)
            self._set_error(trial, outcome)
            return self._infeasible(trial, config, "oom", peak_gib=peak,
                                    note=f"CUDA out of memory at the allocator cap (ceiling {ceiling:g} GiB); "
                                         f"peak_vram_gib = max(observed {observed:.3f}, ceiling + "
                                         f"{FEASIBLE_EPS_GIB:g}); val_ppl = vocab_size (the uniform model's PPL)")
        if kind == "numerical_instability":
            trial.set_user_attr("end_reason", "numerical_instability")
            trial.set_user_attr("stability", outcome.get("stability") or {})
            self._set_error(trial, outcome)
            raise optuna.TrialPruned(f"numerical_instability: {outcome.get('error_summary')}")
        if kind == "learning_curve":
            trial.set_user_attr("end_reason", "learning_curve")
            trial.set_user_attr("prune_summary", outcome.get("error_summary"))
            raise optuna.TrialPruned(outcome.get("error_summary") or "learning_curve")
        if kind == "invalid_config":
            trial.set_user_attr("end_reason", "invalid_config")
            trial.set_user_attr("error_summary", outcome.get("error_summary"))
            raise optuna.TrialPruned(f"invalid_config: {outcome.get('error_summary')}")
        if kind == "timeout":
            trial.set_user_attr("end_reason", "timeout")
            trial.set_user_attr("error_summary", outcome.get("error_summary"))
            raise optuna.TrialPruned(outcome.get("error_summary") or "timeout")
        if kind == "interrupted":
            return self._interrupted(trial, outcome.get("error_summary") or "interrupted")
        # error, crash
        trial.set_user_attr("end_reason", "error")
        self._set_error(trial, outcome)
        raise TrialFailed(outcome.get("error_summary") or kind)

    # --- helpers ------------------------------------------------------------------------------------------------------
    @staticmethod
    def _reset_inherited(trial) -> None:
        """A heartbeat retry (RetryHeartbeatStaleTrialCallback) copies the dead attempt's user attrs; blank the ones
        that describe how that attempt ended so they cannot stick to this one."""
        failed = trial.storage.get_trial_system_attrs(trial_id(trial)).get("failed_trial")
        if failed is not None:
            trial.set_user_attr("retry_of", failed)
        for key in _ATTEMPT_ATTRS:
            if trial.user_attrs.get(key) is not None:
                trial.set_user_attr(key, None)

    def _values(self, *, val_ppl: float, peak: float, params: float, tokens_per_s: float) -> tuple[float, ...]:
        table = {"val_ppl": float(val_ppl), "peak_vram_gib": float(peak), "params": float(params),
                 "tokens_per_s": float(tokens_per_s)}
        return tuple(table[m] for m in self.spec.metric_names)

    def _infeasible(self, trial, config, reason: str, *, peak_gib: float, note: str,
                    summary: str | None = None) -> tuple[float, ...]:
        ceiling = float(self.spec.vram_ceiling_gib)
        counts = _expected_param_counts(config)
        trial.set_user_attr("end_reason", reason)
        trial.set_user_attr("objective_note", note)
        trial.set_user_attr("params_total", params_total(counts))
        trial.set_user_attr("param_counts", dict(counts))
        if reason in ("vram_ceiling", "predicted_over_ceiling"):
            trial.set_user_attr("observed_peak_gib" if reason == "vram_ceiling" else "predicted_peak_gib", peak_gib)
        if summary and "error_summary" not in trial.user_attrs:
            trial.set_user_attr("stop_summary", summary)
        set_trial_constraint(trial, max(peak_gib - ceiling, FEASIBLE_EPS_GIB))
        return self._values(val_ppl=float(config.vocab_size), peak=peak_gib, params=params_total(counts),
                            tokens_per_s=0.0)

    def _interrupted(self, trial, summary: str):
        trial.set_user_attr("end_reason", "interrupted")
        trial.set_user_attr("error_summary", summary)
        raise TrialInterrupted(summary)

    @staticmethod
    def _set_error(trial, outcome: dict[str, Any]) -> None:
        if outcome.get("error_summary"):
            trial.set_user_attr("error_summary", outcome["error_summary"])
        if outcome.get("traceback"):
            trial.set_user_attr("traceback", outcome["traceback"])

    def _peak_from_result(self, trial, r: dict[str, Any], outcome: dict[str, Any], device: str) -> float:
        """The memory objective: NVML per-process peak on GPU; the trainer's CPU tensor-bytes peak on CPU."""
        if device != "cuda":
            return float(r["peak_torch_gib"])
        if outcome.get("nvml_pid_seen"):
            return float(outcome["nvml_peak_gib"])
        # NVML lists host PIDs; in a container without the host PID namespace our PID is never listed. Say so on
        # the trial and use the allocator's figure, labelled, rather than report 0.
        log.warning("NVML never listed the trial process (PID namespace?); peak_vram_gib is torch's peak allocated")
        trial.set_user_attr("peak_vram_kind", "cuda_max_allocated_nvml_pid_unseen")
        return float(r["peak_torch_gib"])

    def _estimate(self, trial, config, device: str) -> float | None:
        """Predicted peak GiB in the measure the trial is judged by: on GPU the NVML per-process total (tensor +
        allocator + outside), on CPU the tensor-bytes peak (tuner.vram.estimate with device="cpu")."""
        if not self.spec.estimate.enabled:
            return None
        from tuner.vram.calibration import choose_calibration
        from tuner.vram.estimate import estimate
        from tuner.vram.nvml import current_device_key

        if device == "cuda":  # the calibration file and NVML are read here, by the caller: estimate() is pure
            choice = choose_calibration(self.calibration_path, current_device_key())
            est = estimate(config, choice.calibration, device=device, calibrated=choice.calibrated,
                           calibration_source=choice.source)
        else:
            est = estimate(config, device=device)
        self._estimate_of_trial = est
        predicted = float(est.total_gib)
        trial.set_user_attr("estimate", est.to_dict())  # the breakdown, beside the measured peak
        trial.set_user_attr("predicted_peak_gib", predicted)
        trial.set_user_attr("predicted_peak_kind", "nvml_process" if device == "cuda" else "cpu_tensor_bytes")
        trial.set_user_attr("estimate_calibrated", bool(est.calibrated))
        return predicted

    def _refine_calibration(self, trial, r: dict[str, Any], nvml_peak_gib: float) -> None:
        """Teach the device's calibration from a trial that ran to the end with a per-process NVML peak (issue 6: the
        calibration refines itself from finished trials on the same device). Ceiling stops and OOMs are not used:
        their peaks are cut short. An uncalibrated estimate has no device entry to refine."""
        est = self._estimate_of_trial
        if est is None or not est.calibrated or not est.calibration_key:
            return
        from tuner.vram.calibration import CalibrationError, refine_stored

        try:
            refine_stored(self.calibration_path, est.calibration_key, est, measured_nvml_gib=float(nvml_peak_gib),
                          measured_torch_peak_gib=float(r["peak_torch_gib"]),
                          measured_reserved_gib=r.get("peak_reserved_gib"))
        except (OSError, CalibrationError) as e:  # a refinement is a bonus; the trial's own result stands
            log.warning("calibration not refined from trial %d: %s", trial.number, e)
            trial.set_user_attr("calibration_refined", False)
            return
        trial.set_user_attr("calibration_refined", True)

    def _pruning_request(self, trial, predicted: float | None) -> dict[str, Any]:
        """Learning-curve settings for the child. Always sent: the curve, its fit and the prediction are recorded on
        every trial (issue 7); `enabled` (the spec's pruning switch) only decides whether the child may prune.

        front: every feasible (val_ppl, peak_vram_gib) point of the study's complete trials (a point is dominated by
        the front iff by some feasible point). reference_curves: the `curve` user attrs of complete trials with the
        same budget; with enough of them the child predicts the final PPL with their late exponents
        (tuner.analysis.curve.predict_late_alpha) instead of the trial's own early fit, which is biased low at the budget.
        """
        lc = self.spec.pruning
        names = self.spec.metric_names
        # The rule compares (val_ppl, peak) with the front: without both objectives there is nothing to compare.
        comparable = "val_ppl" in names and "peak_vram_gib" in names
        from tuner.storage.constraints import is_feasible

        budget = int(self.spec.budget.train_tokens)
        points, references = [], []
        for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if t.user_attrs.get("end_reason") != "complete":
                continue
            curve = t.user_attrs.get("curve")
            if curve and t.user_attrs.get("curve_budget_tokens", budget) == budget:
                references.append(curve)
            if comparable and is_feasible(t):
                points.append((float(t.values[names.index("val_ppl")]),
                               float(t.values[names.index("peak_vram_gib")])))
        return {"enabled": bool(lc.enabled and comparable), "min_fraction": lc.min_fraction,
                "confidence": lc.confidence, "front": points, "reference_curves": references,
                # CPU has no live memory figure during the run: the estimate stands in for the trial's peak.
                "proxy_peak_gib": predicted}


def _expected_param_counts(config) -> dict[str, int]:
    """Parameter counts per component from the model's formulas, for trials that never build the model."""
    from model.lm import expected_param_counts

    return {k: int(v) for k, v in expected_param_counts(config).items() if k != "total"}


def params_total(counts: dict[str, int]) -> int:
    """Total parameters from per-component counts (a "total" entry, if present, is not added again)."""
    return int(sum(v for k, v in counts.items() if k != "total"))
