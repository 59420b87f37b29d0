"""What a trial records about how it ended: the end reasons, and the user attributes that belong to one attempt.

Stored on every trial as user attr `end_reason` (the value of an `EndReason`). The storage layer needs them too (the
heartbeat callback records `worker_lost` and keeps a retry from inheriting the dead attempt's ending), so they live
here, below tuner.trial.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class EndReason(str, Enum):
    """Why a trial ended (user attr `end_reason`); tuner.trial.outcome.ENDINGS says how each one is recorded."""

    COMPLETE = "complete"
    VRAM_CEILING = "vram_ceiling"
    OOM = "oom"
    PREDICTED_OVER_CEILING = "predicted_over_ceiling"
    NUMERICAL_INSTABILITY = "numerical_instability"
    LEARNING_CURVE = "learning_curve"
    INVALID_CONFIG = "invalid_config"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    ERROR = "error"
    WORKER_LOST = "worker_lost"
    ENVIRONMENT_ERROR = "environment_error"  # the worker's data or cache unusable: re-queued, not counted


# User attrs describing one attempt: how it ended and what it measured. A retry (heartbeat or interrupt) must not
# inherit them: the heartbeat callback leaves them out of the retry's copy, and the objective blanks any that a
# retry still carries before it runs.
ATTEMPT_ATTRS: frozenset[str] = frozenset(
    {
        "end_reason",
        "error_summary",
        "traceback",
        "objective_note",
        "stop_summary",
        "ceiling_detected",
        "child_replaced",
        "child_trials_before",
        "prune_summary",
        "observed_peak_gib",
        "nvml_peak_gib",
        "torch_peak_gib",
        "ceiling_stop_s",
        "worker",
        "curve",
        "trial_wall_s",
        "gpu_busy_frac",
        "phase_s",
        "idle_before_s",
        "tokens_per_s",
        "epochs",
        "peak_vram_gib",
        "eval_tokens_per_s",
        "eval_peak_gib",
        "eval_peak_kind",
        "eval_time_s",
        "eval_nvml_gib",
    }
)

# User attr naming a reference trial's model family ("dense"): set when the study enqueues it (tuner.storage.studies),
# kept by retries. A reference is shown beside the Phase 1 trials but never joins their front or an export.
REFERENCE_ATTR = "reference"


def is_reference(trial: Any) -> bool:
    """True for a reference (baseline) trial: any trial-like object with `user_attrs`."""
    return trial.user_attrs.get(REFERENCE_ATTR) is not None


# Long per-trial data (a config, an estimate breakdown, learning curves, diagnostics) lives in ONE trial system attr,
# `tuner:details` = {key: value}, not in user attrs: `optuna trials` prints every user attr of every trial (119 KB
# for a 15-trial quickstart when these were user attrs) and never the system attrs. Read them with trial_attr(),
# which also finds them as user attrs on trials recorded before this change.
DETAILS_ATTR = "tuner:details"
DETAIL_KEYS: frozenset[str] = frozenset(
    {"config", "estimate", "curve", "curve_predictions", "curve_prediction", "stability", "param_counts"}
)
# The details a retry keeps (same params, so the same config and estimate); the others describe one attempt.
RETRY_KEEPS_DETAILS: frozenset[str] = frozenset({"config", "estimate"})


def set_trial_attr(trial: Any, key: str, value: Any) -> None:
    """Set a tuner trial attribute: a DETAIL_KEYS key into the `tuner:details` system attr, anything else as a user
    attr. `trial`: a running optuna.Trial (written now) or a FrozenTrial about to be added (edited in place)."""
    if key not in DETAIL_KEYS:
        trial.set_user_attr(key, value)
        return
    from optuna.trial import FrozenTrial

    if isinstance(trial, FrozenTrial):
        details = dict(trial.system_attrs.get(DETAILS_ATTR) or {})
        details[key] = value
        trial.system_attrs = {**trial.system_attrs, DETAILS_ATTR: details}
        return
    from tuner.storage._optuna_compat import trial_id

    tid = trial_id(trial)
    details = dict(trial.storage.get_trial_system_attrs(tid).get(DETAILS_ATTR) or {})
    details[key] = value
    trial.storage.set_trial_system_attr(tid, DETAILS_ATTR, details)


def trial_attr(trial: Any, key: str, default: Any = None) -> Any:
    """A tuner trial attribute wherever it was stored: `tuner:details` first, then the user attrs."""
    if key in DETAIL_KEYS:
        from optuna.trial import FrozenTrial

        if isinstance(trial, FrozenTrial) or not hasattr(trial, "storage"):
            system_attrs = getattr(trial, "system_attrs", {})
        else:  # a running Trial caches its system attrs; set_trial_attr writes through the storage
            from tuner.storage._optuna_compat import trial_id

            system_attrs = trial.storage.get_trial_system_attrs(trial_id(trial))
        details = system_attrs.get(DETAILS_ATTR) or {}
        if key in details:
            return details[key]
    return trial.user_attrs.get(key, default)


def retry_details(system_attrs: dict[str, Any]) -> dict[str, Any]:
    """The system attrs a retry of a trial should start from: its `tuner:details` cut to RETRY_KEEPS_DETAILS and
    no stored progress (tuner.storage.workers.PROGRESS_ATTR); everything else as it is."""
    out = {k: v for k, v in system_attrs.items() if k != "tuner:progress"}
    details = out.get(DETAILS_ATTR)
    if isinstance(details, dict):
        out[DETAILS_ATTR] = {k: v for k, v in details.items() if k in RETRY_KEEPS_DETAILS}
    return out


def all_trial_attrs(trial: Any) -> dict[str, Any]:
    """A (frozen) trial's user attrs and its `tuner:details` in one mapping (details win), for readers that want
    everything the tuner recorded on a trial."""
    return {**trial.user_attrs, **(getattr(trial, "system_attrs", {}).get(DETAILS_ATTR) or {})}
