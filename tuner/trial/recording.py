"""Recording a finished run on its Optuna trial: user attrs, constraint and objective values, by the ENDINGS table.

How each end is recorded (user attr `end_reason` is always set; tuner.trial.outcome.ENDINGS is the table):
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
  interrupted             FAIL; the worker's callback re-enqueues the same params (tuner.trial.budget), the retry
                          records the trial it replaces (system attrs failed_trial / retry_history).
  error                   FAIL with `error_summary` + `traceback` (also a child crash).
  environment_error       FAIL (the data or cache could not be used on this worker: not the trial's fault); the
                          worker re-queues the same params, so it does not count against n_trials, and stops.
Objective values are returned in the spec's metric order (tuner.study.spec.METRICS). The eval_* metrics are the
measured inference pass after training: a complete trial without them fails (never a made-up figure); an infeasible
end never evaluated, so it carries no eval_* attrs and, as for tokens_per_s, placeholder values (eval_tokens_per_s 0,
eval_peak_gib the end's peak) that its positive constraint already marks infeasible; `objective_note` says so.
Whatever the end, a recorded learning curve is also stored as the trial's intermediate values (report_curve), except
on a pruned trial of a multi-objective study: Optuna 5.0's TPE scores pruned trials by their last intermediate value
through `study.direction`, which raises for several objectives, so every later `ask` of the study would fail (seen
on the H100 with learning-curve pruning). Such a trial keeps its curve in the `curve` user attr only.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna

from tuner.errors import WorkerEnvironmentError
from tuner.storage._optuna_compat import trial_id
from tuner.storage.constraints import set_trial_constraint
from tuner.storage.trial_attrs import EndReason, set_trial_attr, trial_attr
from tuner.study.spec import INFERENCE_METRICS, StudySpec
from tuner.trial.outcome import (
    ENDINGS,
    FEASIBLE_EPS_GIB,
    MEASURED_ATTRS,
    RESULT_ATTRS,
    TrialOutcome,
    ending_message,
    observed_peak_gib,
    peak_vram,
)

log = logging.getLogger(__name__)


class TrialFailed(Exception):
    """Ends a trial as FAIL after its attributes were recorded; the worker passes it in `catch`."""


class TrialTakenOver(TrialFailed):
    """The trial was failed as heartbeat-stale by another worker while this one still ran it (paused, cut off):
    nothing more is recorded on it; the worker drops the late result and goes on."""


class TrialInterrupted(TrialFailed):
    """The worker is stopping (SIGTERM/SIGINT): the trial ends FAIL with end_reason `interrupted` and is retried."""


def record_outcome(trial: Any, spec: StudySpec, config: Any, outcome: TrialOutcome, device: str) -> tuple[float, ...]:
    """Record `outcome` on `trial`; return the objective values, or raise TrialPruned / TrialFailed /
    TrialInterrupted as the reason's ENDINGS entry says."""
    ceiling = float(spec.vram_ceiling_gib)
    for key in MEASURED_ATTRS:
        if getattr(outcome, key) is not None:
            set_trial_attr(trial, key, getattr(outcome, key))
    for key, value in outcome.curve_attrs.items():  # every learning-curve attr the monitor wrote
        if value is not None:
            set_trial_attr(trial, key, value)
    reason = outcome.reason
    ending = ENDINGS[reason]
    if ending.state != "pruned" or len(spec.objectives) == 1:
        report_curve(trial, outcome.curve_attrs.get("curve") or (outcome.result or {}).get("curve") or [])
    set_trial_attr(trial, "trial_wall_s", round(float(outcome.wall_s), 3))
    if outcome.replace_child:
        set_trial_attr(trial, "child_replaced", True)
    if reason is EndReason.COMPLETE:
        return _record_complete(trial, spec, config, outcome, device)
    for attr, source in ending.always.items():
        value = getattr(outcome, source)
        set_trial_attr(trial, attr, value if value is not None or attr != "stability" else {})
    for key in ending.if_set:
        if getattr(outcome, key):
            set_trial_attr(trial, key, getattr(outcome, key))
    if ending.infeasible:
        peak = peak_vram(outcome, device=device, ceiling_gib=ceiling).gib
        if reason is EndReason.VRAM_CEILING:
            set_trial_attr(trial, "ceiling_detected", "killed" if outcome.killed else "guard_stop")
            note = (
                f"stopped at {peak:.3f} GiB > ceiling {ceiling:g} GiB before the end; "
                "val_ppl = vocab_size (the uniform model's PPL)"
            )
        else:  # oom
            note = (
                f"CUDA out of memory at the allocator cap (ceiling {ceiling:g} GiB); peak_vram_gib = "
                f"max(observed {observed_peak_gib(outcome):.3f}, ceiling + {FEASIBLE_EPS_GIB:g}); "
                "val_ppl = vocab_size (the uniform model's PPL)"
            )
        summary = outcome.error_summary if reason is EndReason.VRAM_CEILING else None
        return record_infeasible(trial, spec, config, reason, peak_gib=peak, note=note, summary=summary)
    set_trial_attr(trial, "end_reason", reason.value)
    message = ending_message(ending, outcome)
    if ending.state == "pruned":
        raise optuna.TrialPruned(message)
    if reason is EndReason.INTERRUPTED:
        return record_interrupted(trial, outcome.error_summary or "interrupted")
    if reason is EndReason.ENVIRONMENT_ERROR:  # not the trial's fault: the worker re-queues it and stops
        raise WorkerEnvironmentError(message)
    raise TrialFailed(message)


def report_curve(trial: Any, points: Any) -> int:
    """Store the learning curve as the trial's intermediate values: val_ppl at step = training tokens, so
    optuna-dashboard draws it. Returns how many points were stored.

    Optuna's `Trial.report` refuses multi-objective studies (NotImplementedError, optuna 5.0), so the values go
    through the storage's public `set_trial_intermediate_value`, exactly what `report` writes; `should_prune` is
    never consulted (pruning is tuner.analysis.curve_monitor's, in the child). Points without a finite val_ppl
    or with tokens < 0 are skipped."""
    import math

    stored = 0
    for p in points or []:
        try:
            tokens, ppl = int(p["tokens"]), float(p["val_ppl"])
        except (KeyError, TypeError, ValueError):
            continue
        if tokens < 0 or not math.isfinite(ppl):
            continue
        trial.storage.set_trial_intermediate_value(trial_id(trial), tokens, ppl)
        stored += 1
    return stored


def _record_complete(trial: Any, spec: StudySpec, config: Any, outcome: TrialOutcome, device: str) -> tuple[float, ...]:
    ceiling = float(spec.vram_ceiling_gib)
    r = outcome.result or {}
    measured = peak_vram(outcome, device=device, ceiling_gib=ceiling)
    peak = measured.gib
    if measured.kind == "cuda_max_allocated_nvml_pid_unseen":
        # NVML lists host PIDs; in a container without the host PID namespace our PID is never listed. Say so on
        # the trial and use the allocator's figure, labelled, rather than report 0.
        log.warning("NVML never listed the trial process (PID namespace?); peak_vram_gib is torch's peak allocated")
        set_trial_attr(trial, "peak_vram_kind", measured.kind)
    for key in RESULT_ATTRS:
        if r.get(key) is not None:
            set_trial_attr(trial, key, r[key])
    # The val_ppl objective is the evaluated model's: the LNS-converted one when the config asks for LNS.
    set_trial_attr(trial, "eval_used_lns", bool(getattr(config, "lns_enabled", False)))  # a DenseConfig has no LNS
    epochs = r.get("epochs")
    if epochs is not None and float(epochs) > 1.0:  # the trainer warns in the child; say it where the worker logs
        log.warning(
            "trial %d repeated its training data: %.2f epochs (train_tokens exceeds the training split)",
            trial.number,
            float(epochs),
        )
    set_trial_attr(trial, "torch_peak_gib", r.get("peak_torch_gib"))
    set_trial_attr(trial, "peak_vram_gib", peak)  # the training peak, also where it is not an objective (export)
    counts = r.get("param_counts") or expected_param_counts(config)
    set_trial_attr(trial, "params_total", params_total(counts))
    diag = r.get("diagnostics") or {}
    set_trial_attr(trial, "effective_rank", diag.get("effective_rank"))
    set_trial_attr(trial, "gate_sparsity", diag.get("gate_sparsity"))
    set_trial_attr(trial, "stability", {k: v for k, v in diag.items() if k not in ("effective_rank", "gate_sparsity")})
    if trial_attr(trial, "curve") is None and r.get("curve") is not None:
        set_trial_attr(trial, "curve", r["curve"])
    unmeasured = [m for m in spec.metric_names if m in INFERENCE_METRICS and r.get(m) is None]
    if unmeasured:  # the request asked for them (spec.measures_inference): their absence is a fault, not a value
        message = f"{unmeasured[0]} was not measured (no inference pass after training); the trial cannot be scored"
        set_trial_attr(trial, "end_reason", EndReason.ERROR.value)
        set_trial_attr(trial, "error_summary", message)
        raise TrialFailed(message)
    over = peak > ceiling
    set_trial_attr(trial, "end_reason", (EndReason.VRAM_CEILING if over else EndReason.COMPLETE).value)
    if over:  # on CPU, or a reference trial on a GPU (the guard only watches it); else the guard stops the run
        set_trial_attr(trial, "ceiling_detected", "after_run")
    set_trial_constraint(trial, peak - ceiling)
    return objective_values(
        spec,
        val_ppl=r["val_ppl"],
        peak=peak,
        params=params_total(counts),
        tokens_per_s=r.get("tokens_per_s") or 0.0,
        eval_tokens_per_s=r.get("eval_tokens_per_s") or 0.0,
        eval_peak_gib=r.get("eval_peak_gib") or 0.0,
    )


def record_infeasible(
    trial: Any,
    spec: StudySpec,
    config: Any,
    reason: EndReason,
    *,
    peak_gib: float,
    note: str,
    summary: str | None = None,
) -> tuple[float, ...]:
    """An over-ceiling end recorded COMPLETE with val_ppl = vocab_size and a positive constraint."""
    ceiling = float(spec.vram_ceiling_gib)
    counts = expected_param_counts(config)
    set_trial_attr(trial, "end_reason", reason.value)
    if spec.measures_inference:
        note += f"; never evaluated: eval_tokens_per_s = 0, eval_peak_gib = {peak_gib:.3f} (this end's peak)"
    set_trial_attr(trial, "objective_note", note)
    set_trial_attr(trial, "params_total", params_total(counts))
    set_trial_attr(trial, "param_counts", dict(counts))
    if reason is EndReason.VRAM_CEILING:
        set_trial_attr(trial, "observed_peak_gib", peak_gib)
    elif reason is EndReason.PREDICTED_OVER_CEILING:
        set_trial_attr(trial, "predicted_peak_gib", peak_gib)
    if summary and "error_summary" not in trial.user_attrs:
        set_trial_attr(trial, "stop_summary", summary)
    set_trial_constraint(trial, max(peak_gib - ceiling, FEASIBLE_EPS_GIB))
    return objective_values(
        spec,
        val_ppl=float(config.vocab_size),
        peak=peak_gib,
        params=params_total(counts),
        tokens_per_s=0.0,
        eval_tokens_per_s=0.0,
        eval_peak_gib=peak_gib,
    )


def record_interrupted(trial: Any, summary: str) -> tuple[float, ...]:
    """End the trial FAIL `interrupted` (the worker re-enqueues its params)."""
    set_trial_attr(trial, "end_reason", EndReason.INTERRUPTED.value)
    set_trial_attr(trial, "error_summary", summary)
    raise TrialInterrupted(summary)


def objective_values(
    spec: StudySpec,
    *,
    val_ppl: float,
    peak: float,
    params: float,
    tokens_per_s: float,
    eval_tokens_per_s: float = 0.0,
    eval_peak_gib: float = 0.0,
) -> tuple[float, ...]:
    """The objective values in the spec's metric order."""
    table = {
        "val_ppl": float(val_ppl),
        "peak_vram_gib": float(peak),
        "params": float(params),
        "tokens_per_s": float(tokens_per_s),
        "eval_tokens_per_s": float(eval_tokens_per_s),
        "eval_peak_gib": float(eval_peak_gib),
    }
    return tuple(table[m] for m in spec.metric_names)


def expected_param_counts(config: Any) -> dict[str, int]:
    """Parameter counts per component from the model's formulas, for trials that never build the model (a
    DenseConfig's from model.dense_config, a Phase1Config's from model.lm)."""
    if getattr(config, "kind", None) == "dense":
        from model.dense_config import dense_param_counts as model_counts
    else:
        from model.lm import expected_param_counts as model_counts  # type: ignore[assignment]

    return {k: int(v) for k, v in model_counts(config).items() if k != "total"}


def params_total(counts: dict[str, int]) -> int:
    """Total parameters from per-component counts (a "total" entry, if present, is not added again)."""
    return int(sum(v for k, v in counts.items() if k != "total"))
