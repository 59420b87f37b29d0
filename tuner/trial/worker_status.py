"""A worker's live status for `tuner launch`'s per-worker lines: the worker writes one small JSON file (the path in
STATUS_ENV, set by the launcher), the launcher reads them all once a second.

File contents (WorkerStatus): worker id, GPU, pid, the current trial and its step/tokens, and how many trials this
process finished by state. Written atomically (a reader never sees half a file), at most every WRITE_EVERY_S for
progress and at once for a trial's start and end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATUS_ENV = "TUNER_WORKER_STATUS"
WRITE_EVERY_S = 1.0


@dataclass
class WorkerStatus:
    """What one worker process is doing. trial/step/tokens: None between trials. finished: {state name: count}."""

    worker: str
    pid: int
    gpu: int | None = None
    trial: int | None = None
    step: int | None = None
    tokens: int | None = None
    finished: dict[str, int] = field(default_factory=dict)
    updated: float = 0.0

    @classmethod
    def read(cls, path: Path) -> WorkerStatus | None:
        """The status in `path`, or None when there is none yet (or it cannot be read)."""
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        try:
            return cls(**{k: raw[k] for k in raw if k in cls.__dataclass_fields__})
        except TypeError:
            return None


class StatusWriter:
    """Keeps a WorkerStatus file current from a worker's hooks (tuner.trial.worker.WorkerHooks' three callbacks)."""

    def __init__(self, path: str | Path, worker: str, pid: int, gpu: int | None) -> None:
        self.path = Path(path)
        self.status = WorkerStatus(worker=worker, pid=pid, gpu=gpu)
        self._last = 0.0
        self._write()

    def _write(self) -> None:
        from tuner.fileio import atomic_write_text

        self.status.updated = time.time()
        self._last = time.monotonic()
        try:
            atomic_write_text(self.path, json.dumps(asdict(self.status)))
        except OSError:  # a display aid: a full disk must not end the worker's trial
            pass

    def trial_start(self, number: int, params: dict[str, Any]) -> None:  # noqa: ARG002 - WorkerHooks' signature
        self.status.trial, self.status.step, self.status.tokens = number, 0, 0
        self._write()

    def progress(self, msg: dict[str, Any]) -> None:
        self.status.step, self.status.tokens = int(msg.get("step", 0)), int(msg.get("tokens", 0))
        if time.monotonic() - self._last >= WRITE_EVERY_S:
            self._write()

    def trial_end(self, study: Any, trial: Any) -> None:  # noqa: ARG002 - Optuna callback signature
        state = trial.state.name.lower()
        self.status.finished[state] = self.status.finished.get(state, 0) + 1
        self.status.trial = self.status.step = self.status.tokens = None
        self._write()


def chain(*fns: Callable[..., None] | None) -> Callable[..., None] | None:
    """One callback calling each of `fns` (None ones skipped) in order; None when there is none."""
    live = [f for f in fns if f is not None]
    if not live:
        return None

    def call(*args: Any) -> None:
        for f in live:
            f(*args)

    return call
