"""The typed boundary of one trial: what the worker asks the trial child to run (`TrialRequest`), what comes back
(`TrialOutcome`), how each end reason is recorded (`ENDINGS`), and the one memory objective (`peak_vram`).

The child runs in a spawned process; requests and outcomes cross the pipe pickled, so everything here is plain
data (no torch, no optuna objects). All memory figures are GiB (2^30 bytes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tuner.storage.trial_attrs import EndReason
from tuner.study.spec import LearningCurvePruning, StepMode

FEASIBLE_EPS_GIB = 1e-3  # an OOM at the allocator cap has a constraint of at least this (never "exactly feasible")

# How the trial child's run can end. `crash` (the child process died) is recorded as EndReason.ERROR.
OutcomeKind = Literal[
    "complete",
    "vram_ceiling",
    "oom",
    "numerical_instability",
    "learning_curve",
    "invalid_config",
    "interrupted",
    "timeout",
    "error",
    "crash",
    "environment_error",
]

# Measurements of the run that are recorded on the trial as user attrs of the same name, whatever the ending.
MEASURED_ATTRS = (
    "nvml_peak_gib",
    "nvml_samples",
    "nvml_pid_seen",
    "nvml_lookup",
    "allocator_fraction",
    "torch_peak_gib",
    "ceiling_stop_s",
    "child_trials_before",
)
# Fields of a complete run's result recorded as user attrs of the same name.
RESULT_ATTRS = (
    "tokens_per_s",
    "param_counts",
    "train_time_s",
    "steps",
    "val_loss",
    "val_ppl_float",
    "lns_converted_linears",
    "epochs",
    # the measured inference pass after training (tuner.trial.child_outcome.final_inference)
    "eval_tokens_per_s",
    "eval_peak_gib",
    "eval_peak_kind",
    "eval_time_s",
    "eval_nvml_gib",
)


@dataclass(frozen=True)
class PruningRequest:
    """Learning-curve settings for one trial: the spec's switch and thresholds, plus what the study knows now.

    front: feasible (val_ppl, peak_vram_gib) points of the study's complete trials. reference_curves: the `curve`
    attrs ([{tokens, val_ppl}, ...]) of complete trials with the same budget. proxy_peak_gib: the estimate, which
    stands in for the trial's peak where no live memory figure exists (CPU)."""

    settings: LearningCurvePruning
    front: tuple[tuple[float, float], ...] = ()
    reference_curves: tuple[Any, ...] = ()
    proxy_peak_gib: float | None = None


@dataclass(frozen=True)
class TrialRequest:
    """One training run for the trial child.

    config: a Phase1Config as a dict, or a model.dense_config.DenseConfig's (`kind: dense`, a reference trial).
    data: a model.data.DataSource. train_tokens / eval_tokens: token budgets.
    ceiling_gib: the VRAM ceiling. eval_points: token counts to evaluate at when there is no pruning monitor (with
    one, the monitor's own log-spaced points are used). fault: test-only tuner.trial.faults.FaultInjection (one or
    a list). step: how the training step runs (compiled, CUDA-graph replay; tuner.study.spec.StepMode).
    measure_inference: run the measured inference pass after training (model.inference: eval_tokens_per_s,
    eval_peak_gib) for a float model too; an LNS config always gets it (its evaluation is that pass). Off unless an
    objective needs it: the pass is one more validation pass per trial."""

    config: dict[str, Any]
    data: Any
    train_tokens: int
    eval_tokens: int
    ceiling_gib: float
    eval_points: tuple[int, ...] = ()
    pruning: PruningRequest | None = None
    trial_number: int | None = None
    fault: Any = None
    step: StepMode = StepMode.EAGER
    measure_inference: bool = False


@dataclass
class TrialOutcome:
    """How one run ended, with what it measured. `result` (complete runs only) is the trainer's TrainResult as a
    JSON-ready dict; `curve_attrs` holds the learning-curve monitor's attrs (`curve`, `curve_*`)."""

    kind: OutcomeKind
    result: dict[str, Any] | None = None
    device: str | None = None
    device_name: str | None = None
    error_summary: str | None = None
    traceback: str | None = None
    stability: dict[str, Any] | None = None
    peak_gib: float | None = None  # the guard's peak when it stopped the run (vram_ceiling)
    killed: bool = False  # the child was killed (did not stop in time)
    # vram_ceiling: seconds from the guard's first sample over the ceiling to the training loop stopping (the
    # child's clock), or to the kill when the child did not stop (the parent's clock, from the child's message)
    ceiling_stop_s: float | None = None
    nvml_peak_gib: float | None = None
    nvml_samples: int | None = None
    nvml_pid_seen: int | None = None
    nvml_lookup: str | None = None
    allocator_fraction: float | None = None
    torch_peak_gib: float | None = None
    child_trials_before: int | None = None  # trials the child process ran before this one (0: a fresh process)
    wall_s: float = 0.0  # from the request sent to the outcome received (the parent's clock)
    # The child's seconds in this run (tuner.trial.child: _ChildState._phase_seconds): opening the data, the guard
    # and the model build, training steps, validation passes. A child killed mid-run sends none: the parent counts
    # the request-to-kill time as train_s.
    data_s: float = 0.0
    build_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0
    replace_child: bool = False
    curve_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def busy_s(self) -> float:
        """Seconds the device was training or evaluating this trial (train_s + eval_s)."""
        return self.train_s + self.eval_s

    @property
    def reason(self) -> EndReason:
        return EndReason.ERROR if self.kind == "crash" else EndReason(self.kind)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialOutcome:
        """From the flat mapping the child sends; `curve` / `curve_*` keys go to `curve_attrs`. An unknown key is
        an error (the boundary is typed: a new field is added here first)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"curve_attrs"}
        known = {k: v for k, v in d.items() if k in names}
        curve = {k: v for k, v in d.items() if k == "curve" or k.startswith("curve_")}
        unknown = set(d) - set(known) - set(curve)
        if unknown:
            raise ValueError(f"TrialOutcome: unknown field(s) {sorted(unknown)}")
        return cls(**known, curve_attrs=curve)


@dataclass(frozen=True)
class Ending:
    """How one end reason is recorded. state: the Optuna state. infeasible: recorded COMPLETE with values
    (val_ppl = vocab_size) and a positive constraint, so constrained samplers learn where the ceiling lies.
    always: user attr -> outcome field, written even when empty. if_set: outcome fields written when set.
    message: the pruned/failed trial's message ({summary}: the error summary, {reason}: the end reason)."""

    state: Literal["complete", "pruned", "fail"]
    infeasible: bool = False
    always: Mapping[str, str] = field(default_factory=dict)
    if_set: tuple[str, ...] = ()
    message: str = "{summary}"


ENDINGS: dict[EndReason, Ending] = {
    EndReason.COMPLETE: Ending("complete"),
    EndReason.VRAM_CEILING: Ending("complete", infeasible=True),
    EndReason.OOM: Ending("complete", infeasible=True, if_set=("error_summary", "traceback")),
    EndReason.PREDICTED_OVER_CEILING: Ending("complete", infeasible=True),
    EndReason.NUMERICAL_INSTABILITY: Ending(
        "pruned",
        always={"stability": "stability"},
        if_set=("error_summary", "traceback"),
        message="numerical_instability: {summary}",
    ),
    EndReason.LEARNING_CURVE: Ending("pruned", always={"prune_summary": "error_summary"}),
    EndReason.INVALID_CONFIG: Ending(
        "pruned", always={"error_summary": "error_summary"}, message="invalid_config: {summary}"
    ),
    EndReason.TIMEOUT: Ending("pruned", always={"error_summary": "error_summary"}),
    EndReason.INTERRUPTED: Ending("fail", always={"error_summary": "error_summary"}),
    EndReason.ERROR: Ending("fail", if_set=("error_summary", "traceback")),
    EndReason.ENVIRONMENT_ERROR: Ending("fail", always={"error_summary": "error_summary"}),
}


def ending_message(ending: Ending, outcome: TrialOutcome) -> str:
    """The message a pruned or failed trial carries (the reason itself when there is no summary)."""
    if ending.message == "{summary}":
        return outcome.error_summary or outcome.kind
    return ending.message.format(summary=outcome.error_summary, reason=outcome.reason.value)


@dataclass(frozen=True)
class PeakVram:
    """The memory objective of a run (GiB) and what it measures (user attr `peak_vram_kind`; None: unchanged)."""

    gib: float
    kind: str | None = None


def peak_vram(outcome: TrialOutcome, *, device: str, ceiling_gib: float) -> PeakVram:
    """The one definition of a run's peak_vram_gib.

    complete: on GPU the NVML per-process peak; if NVML never listed the process (a container without the host PID
    namespace) torch's peak allocated, labelled; on CPU the trainer's tensor-bytes peak. vram_ceiling: the guard's
    peak (the ceiling if unknown). oom: the allocator is capped at the ceiling, so an OOM asked for more: the
    larger of the observed peaks and ceiling + FEASIBLE_EPS_GIB. Other ends measure nothing (0.0)."""
    if outcome.kind == "complete":
        torch_peak = float((outcome.result or {})["peak_torch_gib"])
        if device != "cuda":
            return PeakVram(torch_peak, "cpu_tensor_bytes")
        if outcome.nvml_pid_seen:
            return PeakVram(float(outcome.nvml_peak_gib or 0.0), "nvml_process")
        return PeakVram(torch_peak, "cuda_max_allocated_nvml_pid_unseen")
    if outcome.kind == "vram_ceiling":
        return PeakVram(float(outcome.peak_gib or ceiling_gib))
    if outcome.kind == "oom":
        return PeakVram(max(observed_peak_gib(outcome), ceiling_gib + FEASIBLE_EPS_GIB))
    return PeakVram(0.0)


def observed_peak_gib(outcome: TrialOutcome) -> float:
    """The larger of the NVML and torch peaks the run reported (0.0 when neither)."""
    return max(float(outcome.nvml_peak_gib or 0.0), float(outcome.torch_peak_gib or 0.0))
