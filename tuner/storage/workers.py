"""What a study knows about its workers beyond their trials: a worker's exit record and a running trial's progress.

Both are system attributes, which `optuna trials` / `optuna studies` do not print:
- study system attr `tuner:worker_exit:<worker id>` = {"reason": "done" | "interrupted" | "stop_after", "at": ISO
  time}: written by a worker that stops cleanly (its budget spent, SIGTERM/SIGINT, or its --stop-after window
  over). A worker without one that stopped beating was killed or lost (tuner status shows it `stale`).
- trial system attr `tuner:progress` = {"step", "tokens", "loss", "at"}: the running trial's latest progress,
  written at most every PROGRESS_STORE_S seconds, so `tuner status --watch` shows each worker's step. Each is a
  flush point of the trial's held writes (tuner.storage.write_buffer): they go out with it.
Times are the worker's local clock, naive, like Optuna's trial datetimes (`datetime_start`), so status compares
them with those.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from typing import Any

from tuner.storage._optuna_compat import study_id, trial_id
from tuner.storage.write_buffer import buffer_of

WORKER_EXIT_PREFIX = "tuner:worker_exit:"
PROGRESS_ATTR = "tuner:progress"
PROGRESS_STORE_S = 10.0  # one small write per running trial every 10 s at most (the child reports every 0.25 s)


def record_worker_exit(storage: Any, study: Any, worker_id: str, reason: str) -> None:
    """Record that `worker_id` stopped cleanly (`reason`: "done", "interrupted" or "stop_after")."""
    value = {"reason": str(reason), "at": _dt.datetime.now().isoformat(timespec="seconds")}
    storage.set_study_system_attr(study_id(study), WORKER_EXIT_PREFIX + worker_id, value)


def worker_exits(storage: Any, study: Any) -> dict[str, dict[str, Any]]:
    """worker id -> {"reason", "at": datetime} for every worker that recorded a clean stop."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in storage.get_study_system_attrs(study_id(study)).items():
        if key.startswith(WORKER_EXIT_PREFIX) and isinstance(value, dict):
            try:
                at = _dt.datetime.fromisoformat(str(value.get("at")))
            except ValueError:
                continue
            out[key[len(WORKER_EXIT_PREFIX) :]] = {"reason": value.get("reason"), "at": at}
    return out


class ProgressRecorder:
    """Wraps a progress callback: passes every message on, and stores the latest as the trial's `tuner:progress`
    at most every `every_s` seconds (the first message at once)."""

    def __init__(
        self,
        trial: Any,
        forward: Callable[[dict[str, Any]], None] | None = None,
        every_s: float = PROGRESS_STORE_S,
    ) -> None:
        self.trial, self.forward, self.every_s = trial, forward, float(every_s)
        self.last = -float("inf")

    def __call__(self, msg: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            value: dict[str, Any] = {k: msg[k] for k in ("step", "tokens", "loss") if k in msg}
            value["at"] = _dt.datetime.now().isoformat(timespec="seconds")
            tid = trial_id(self.trial)
            self.trial.storage.set_trial_system_attr(tid, PROGRESS_ATTR, value)
            writes = buffer_of(self.trial.storage)
            if writes is not None:  # a flush point: status sees the progress, and the trial's attrs set so far
                writes.flush(tid)
        if self.forward is not None:
            self.forward(msg)


def trial_progress(trial: Any) -> dict[str, Any] | None:
    """A (frozen) trial's latest stored progress, or None."""
    value = trial.system_attrs.get(PROGRESS_ATTR)
    return dict(value) if isinstance(value, dict) else None
