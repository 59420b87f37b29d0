"""What `tuner launch` shows: one line per worker while it runs (from the workers' status files), and a summary at
the end (from the study's trials, attributed to the launch's worker slots by the pid in each trial's `worker` attr).

"trained" counts COMPLETE trials that reached the GPU: every COMPLETE one but `predicted_over_ceiling` (refused by
the estimate before any training); the trials-per-hour figures count those.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tuner.storage.trial_attrs import EndReason
from tuner.trial.worker_status import WorkerStatus


def worker_line(label: str, status: WorkerStatus | None, alive: bool) -> str:
    """`w0 gpu0  host:4242:gpu0  trial 7 step 120 (1.97M tokens)  done 3 (complete 2, pruned 1)`: the slot, the
    worker id its trials record (user attr `worker`), what it runs now, what it finished."""
    if status is None:
        return f"{label}  starting" if alive else f"{label}  stopped"
    head = f"{label}  {status.worker}"
    if status.trial is None:
        now = "between trials" if alive else "stopped"
    else:
        now = f"trial {status.trial} step {status.step or 0}"
        if status.tokens:
            now += f" ({_tokens(status.tokens)} tokens)"
    done = sum(status.finished.values())
    parts = ", ".join(f"{k} {v}" for k, v in sorted(status.finished.items()))
    return f"{head}  {now}  done {done}" + (f" ({parts})" if parts else "")


def _tokens(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.0f}k" if n >= 1000 else str(n)


@dataclass(frozen=True)
class SlotSummary:
    """Trials one worker slot ran (all its processes, restarts included)."""

    label: str
    complete: int
    pruned: int
    failed: int
    trained: int
    restarts: int


@dataclass(frozen=True)
class LaunchSummary:
    """rows: one per slot. wall_s: the launch's wall time. trained: COMPLETE trials that reached the GPU."""

    rows: tuple[SlotSummary, ...]
    wall_s: float
    unattributed: int  # finished trials of this launch's time whose worker is no slot of it (another launch)
    median_busy_frac: float | None = None  # the trained trials' gpu_busy_frac, median (None: none recorded)
    window_ended: bool = False  # a worker of this launch stopped for --stop-after (the study is left unfinished)

    @property
    def trained(self) -> int:
        return sum(r.trained for r in self.rows)

    @property
    def trained_per_hour(self) -> float:
        return self.trained / self.wall_s * 3600.0 if self.wall_s > 0 else 0.0

    def lines(self) -> list[str]:
        """The summary as printed: one line per slot, then the totals."""
        out = [
            f"{r.label}: complete {r.complete} (trained {r.trained}), pruned {r.pruned}, failed {r.failed}"
            + (f", restarts {r.restarts}" if r.restarts else "")
            for r in self.rows
        ]
        done = sum(r.complete + r.pruned + r.failed for r in self.rows)
        out.append(
            f"launch: {done} trials finished in {self.wall_s:.0f} s by {len(self.rows)} worker(s); "
            f"{self.trained} trained, {self.trained_per_hour:.1f} trained trials per hour"
            + (f"; {self.unattributed} finished by other workers" if self.unattributed else "")
            + (f"; median gpu_busy_frac {self.median_busy_frac:.2f}" if self.median_busy_frac is not None else "")
            + (
                "; --stop-after window ended (the rest of the budget is left for the next launch)"
                if self.window_ended
                else ""
            )
        )
        return out


def trial_pid(trial: Any) -> int | None:
    """The pid in a trial's `worker` user attr (host:pid[:gpuN]), or None."""
    return worker_pid(trial.user_attrs.get("worker"))


def worker_pid(worker: Any) -> int | None:
    """The pid in a worker id (host:pid[:gpuN]), or None."""
    if not isinstance(worker, str):
        return None
    parts = worker.split(":")
    try:
        return int(parts[1]) if len(parts) > 1 else None
    except ValueError:
        return None


def is_trained(trial: Any) -> bool:
    """A COMPLETE trial that reached the GPU (not refused by the pre-flight estimate)."""
    return bool(
        trial.state.name == "COMPLETE" and trial.user_attrs.get("end_reason") != EndReason.PREDICTED_OVER_CEILING.value
    )


def stopped_for_window(exits: dict[str, dict[str, Any]], pids: Iterable[int], *, since: Any = None) -> bool:
    """True when a worker of `pids` recorded the exit reason `stop_after`. exits: tuner.storage.workers.worker_exits
    (worker id -> {"reason", "at"}); since: a datetime, exits before it (an earlier launch) are left out."""
    mine = set(pids)
    return any(
        e.get("reason") == "stop_after" and worker_pid(wid) in mine and (since is None or e["at"] >= since)
        for wid, e in exits.items()
    )


def summarize(
    trials: Iterable[Any],
    slots: Sequence[tuple[str, Sequence[int], int]],
    wall_s: float,
    *,
    since: Any = None,
    window_ended: bool = False,
) -> LaunchSummary:
    """Summarize the finished `trials` (Optuna FrozenTrials) by slot. slots: (label, pids, restarts) each.
    since: a datetime; trials that started before it (an earlier launch on the same study) are left out.
    window_ended: the launch's workers stopped for --stop-after (said in the totals line)."""
    by_pid = {pid: i for i, (_, pids, _) in enumerate(slots) for pid in pids}
    counts = [{"complete": 0, "pruned": 0, "failed": 0, "trained": 0} for _ in slots]
    unattributed = 0
    busy: list[float] = []
    for t in trials:
        if not t.state.is_finished() or (since is not None and t.datetime_start and t.datetime_start < since):
            continue
        slot = by_pid.get(trial_pid(t) or -1)
        if slot is None:
            unattributed += 1
            continue
        c = counts[slot]
        state = t.state.name
        c["complete" if state == "COMPLETE" else "pruned" if state == "PRUNED" else "failed"] += 1
        c["trained"] += int(is_trained(t))
        frac = t.user_attrs.get("gpu_busy_frac")
        if is_trained(t) and isinstance(frac, (int, float)):
            busy.append(float(frac))
    rows = tuple(SlotSummary(label, restarts=restarts, **c) for (label, _, restarts), c in zip(slots, counts))
    median = sorted(busy)[len(busy) // 2] if busy else None
    return LaunchSummary(
        rows=rows,
        wall_s=float(wall_s),
        unattributed=unattributed,
        median_busy_frac=median,
        window_ended=window_ended,
    )


class LaunchDisplay:
    """`tuner launch`'s screen: the workers' own lines (prefixed with their slot) scroll, one line per worker stays
    below them, refreshed once a second (rich Live on a terminal; printed every `every_s` into a log), and the
    summary ends it.

    launcher: the tuner.trial.launcher.Launcher whose slots and status files are shown."""

    def __init__(self, launcher: Any, *, live: bool, every_s: float = 60.0) -> None:
        import datetime

        from rich.console import Console

        self.launcher = launcher
        self.console = Console(soft_wrap=True)
        self.live_on = live
        self.every_s = float(every_s)
        self._live: Any = None
        self._last = 0.0
        self.started_at = datetime.datetime.now()

    def lines(self) -> list[str]:
        out = []
        for slot, status in self.launcher.statuses():
            alive = slot.proc is not None and slot.proc.poll() is None
            out.append(worker_line(slot.label, status, alive))
        return out

    def __enter__(self) -> LaunchDisplay:
        if self.live_on:
            from rich.live import Live
            from rich.text import Text

            self._live = Live(Text(""), console=self.console, refresh_per_second=1, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def line(self, text: str) -> None:
        """A worker's output line (thread-safe: rich's console locks)."""
        self.console.print(text, highlight=False, markup=False)

    def tick(self) -> None:
        import time

        now = time.monotonic()
        if self._last == 0.0:  # the first tick starts the period: the workers have not written a status yet
            self._last = now
            return
        if now - self._last < (1.0 if self._live is not None else self.every_s):
            return
        self._last = now
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text("\n".join(self.lines())))
        else:
            for line in self.lines():
                self.console.print(f"status {line}", highlight=False, markup=False)

    def summary(self, storage: Any, study_name: str) -> LaunchSummary:
        """Print and return the summary of this launch's trials (read from `storage`)."""
        from tuner.storage.studies import load_study
        from tuner.storage.workers import worker_exits

        study = load_study(study_name, storage)
        slots = [(s.label, s.pids, s.restarts) for s in self.launcher.slots]
        pids = [pid for s in self.launcher.slots for pid in s.pids]
        ended = stopped_for_window(worker_exits(storage, study), pids, since=self.started_at)
        summary = summarize(
            study.get_trials(deepcopy=False), slots, self.launcher.wall_s, since=self.started_at, window_ended=ended
        )
        for line in summary.lines():
            self.console.print(line, highlight=False, markup=False)
        return summary
