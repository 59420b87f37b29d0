"""Where one trial's wall time in its worker goes, phase by phase, and the one definition of `gpu_busy_frac`.

A trial's wall time runs from its creation in storage (`datetime_start`: the worker's ask) to the moment its figures
are recorded, just before the worker tells Optuna its values. It is cut into consecutive phases, in seconds:

    sample      creation -> config built: the ask itself, the sampler, blanking a retried attempt's attrs
    wait_child  waiting for the warm trial child to be ready (a fresh child imports torch and opens the device)
    estimate    the pre-flight VRAM estimate and the learning-curve request (reads the study's complete trials)
    data        the child opening the token data (memory-mapped; once per child and data source)
    build       the VRAM guard's start and the model, optimizer and schedule being built
    train       training steps (a child killed mid-run counts its whole run here)
    eval        validation passes (mid-run, final, the LNS evaluation)
    handoff     the rest of the child's run as the worker saw it: the request and the outcome crossing the pipe
    report      recording the outcome on the trial

gpu_busy_frac = (train + eval) / wall: the share of the trial's wall time the device spent training or
evaluating it. Phases the worker never reached are absent. The gap between two trials of one worker (Optuna's tell,
the budget check, the next ask) belongs to no trial; `idle_before_s` records it on the later one.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

PHASES = ("sample", "wait_child", "estimate", "data", "build", "train", "eval", "handoff", "report")
BUSY_PHASES = ("train", "eval")


def busy_fraction(phase_s: dict[str, float]) -> float:
    """(train + eval) / (sum of all phases), in [0, 1]; 0.0 when no time was measured."""
    wall = sum(max(0.0, v) for v in phase_s.values())
    busy = sum(max(0.0, phase_s.get(k, 0.0)) for k in BUSY_PHASES)
    return min(1.0, busy / wall) if wall > 0 else 0.0


class PhaseClock:
    """Consecutive phases of one trial, timed from `start` (the trial's datetime_start, a naive local datetime as
    Optuna's storages write it; None: from now), the first phase being `first`.

    `enter(name)` closes the running phase and opens `name`; `enter(name, parts=...)` first carves `parts` (seconds
    measured elsewhere, e.g. by the child, clipped so they never exceed the closing phase) out of the closing
    phase. `close()` closes the running phase (the trial's end)."""

    def __init__(self, start: datetime.datetime | None, first: str = "sample") -> None:
        self._origin = time.monotonic()
        # Optuna stamps datetime_start with the wall clock; from then on the monotonic clock measures
        lead = (datetime.datetime.now() - start).total_seconds() if start is not None else 0.0
        self._origin -= max(0.0, lead)
        self._last = self._origin
        self._running: str | None = first
        self.phase_s: dict[str, float] = {}

    def enter(self, name: str | None, parts: dict[str, float] | None = None) -> None:
        """Close the running phase (carving `parts` out of it first) and open `name` (None: none)."""
        now = time.monotonic()
        left = now - self._last
        self._last = now
        for key, seconds in (parts or {}).items():
            take = min(left, max(0.0, float(seconds)))
            left -= take
            self.phase_s[key] = self.phase_s.get(key, 0.0) + take
        if self._running is not None:
            self.phase_s[self._running] = self.phase_s.get(self._running, 0.0) + left
        self._running = name

    def close(self) -> None:
        """Close the running phase; the clock then stands (wall_s and attrs are final)."""
        self.enter(None)

    @property
    def origin(self) -> float:
        """The trial's start on the monotonic clock."""
        return self._origin

    @property
    def wall_s(self) -> float:
        """Seconds from the trial's start to the last phase change."""
        return self._last - self._origin

    def attrs(self) -> dict[str, Any]:
        """The user attrs: `phase_s` (seconds rounded to ms, in PHASES order) and `gpu_busy_frac`."""
        ordered = {k: round(self.phase_s[k], 3) for k in PHASES if k in self.phase_s}
        ordered.update({k: round(v, 3) for k, v in self.phase_s.items() if k not in ordered})
        return {"phase_s": ordered, "gpu_busy_frac": round(busy_fraction(self.phase_s), 4)}
