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
        "prune_summary",
        "observed_peak_gib",
        "nvml_peak_gib",
        "torch_peak_gib",
        "worker",
        "curve",
        "trial_wall_s",
        "tokens_per_s",
        "epochs",
    }
)

# User attr naming a reference trial's model family ("dense"): set when the study enqueues it (tuner.storage.studies),
# kept by retries. A reference is shown beside the Phase 1 trials but never joins their front or an export.
REFERENCE_ATTR = "reference"


def is_reference(trial: Any) -> bool:
    """True for a reference (baseline) trial: any trial-like object with `user_attrs`."""
    return trial.user_attrs.get(REFERENCE_ATTR) is not None
