"""Held trial writes: a running trial's attrs and intermediate values kept in this process and written to the
database together, in one transaction, at defined points, instead of one transaction each.

Why: Optuna's RDBStorage commits every `set_trial_user_attr` / `set_trial_system_attr` /
`set_trial_intermediate_value` on its own (a pooled connection checked out and pinged, the trial read, an upsert, a
commit). A tuner trial records about thirty of them, so under eight workers on one Postgres those round trips were
most of a trial's storage time.

Only a trial its worker holds is buffered (`TrialWriteBuffer.hold`, called by tuner.trial.worker once the trial is
RUNNING); every other write goes straight through, so a storage serving other processes (the `tuner proxy`) never
sits on their writes. What is held reaches the database (`flush`) at the latest:
  - at the trial's state change (COMPLETE / PRUNED / FAIL are recorded in the same transaction), so a finished
    trial has every attr and intermediate value that was set on it;
  - at each of the trial's stored progress reports (tuner.storage.workers.ProgressRecorder: the first step at once,
    then every 10 s), so a running trial shows its worker, config and estimate as soon as it trains;
  - at each of its heartbeats (every heartbeat interval, 30 s by default);
  - when the worker stops (its `finally` flushes whatever is still held).
A worker killed outright (SIGKILL, power loss) loses only what was set since the last of these: at most the writes
of the trial's setup before its first progress report or heartbeat, or of its recording between the end of
training and the state change; never anything of a finished trial.

Reads of a held trial (`get_trial`, `get_all_trials`, `get_trial_user_attrs`, `get_trial_system_attrs`) see the held
writes on top of the database's: the objective's read-modify-write of `tuner:details` keeps working. Attr reads of a
held trial are answered here, from the trial as first read plus what this process set on it since (one database read
per trial instead of one per call): only its worker writes a running trial's attrs; another worker that fails it as
stale changes its state, which the next flush or the state write meets (UpdateFinishedTrialError, as before).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from optuna.trial import FrozenTrial

from tuner.storage._optuna_compat import trial_id as trial_id_of

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class TrialWrites:
    """One trial's writes, in the form the database stores: attr values JSON round-tripped (a tuple reads back as a
    list, as from the database), intermediate values as floats keyed by step."""

    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    intermediate_values: dict[int, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.user_attrs) + len(self.system_attrs) + len(self.intermediate_values)

    def update(self, other: TrialWrites) -> None:
        self.user_attrs.update(other.user_attrs)
        self.system_attrs.update(other.system_attrs)
        self.intermediate_values.update(other.intermediate_values)

    def apply_to(self, trial: FrozenTrial) -> FrozenTrial:
        """A copy of `trial` with these writes on top (`trial` itself is left as it is: it may be Optuna's cache)."""
        if not len(self):
            return trial
        out = copy.copy(trial)
        out.user_attrs = {**trial.user_attrs, **copy.deepcopy(self.user_attrs)}
        out.system_attrs = {**trial.system_attrs, **copy.deepcopy(self.system_attrs)}
        out.intermediate_values = {**trial.intermediate_values, **self.intermediate_values}
        return out


def stored_form(value: Any) -> Any:
    """`value` as it reads back from the database (JSON round trip); raises TypeError / ValueError at the call that
    set it when it is not JSON-serialisable, as Optuna's own write would."""
    return json.loads(json.dumps(value))


def buffer_of(storage: Any) -> TrialWriteBuffer | None:
    """The held-writes buffer of `storage` (tuner.storage.resilient.ResilientStorage.writes); None for a storage that
    writes each call at once (the gRPC proxy client, Optuna's own storages), where there is nothing to hold."""
    buffer = getattr(storage, "writes", None)
    return buffer if isinstance(buffer, TrialWriteBuffer) else None


class _Held:
    """What the buffer keeps for one held trial."""

    def __init__(self) -> None:
        self.pending = TrialWrites()  # set, not yet written
        self.written = TrialWrites()  # written by this process since the hold (the base read may predate them)
        self.base: FrozenTrial | None = None  # the trial as first read while held (for attr reads)


class TrialWriteBuffer:
    """The held writes of this process's running trials (see the module docstring).

    read(trial_id): the trial from the database (a FrozenTrial), for attr reads of a held trial.
    write(trial_id, writes): one attempt at writing one trial's TrialWrites in one transaction; raises
        UpdateFinishedTrialError when the trial has finished meanwhile (another worker failed it as stale).
    retried(name, fn): `fn()` through the storage's outage retry loop (the heartbeat's flush is not retried).
    Thread-safe: the heartbeat thread flushes while the objective sets attrs; a flush holds the buffer's lock for its
    write, so a write set meanwhile waits and is never lost between snapshot and clear."""

    def __init__(
        self,
        read: Callable[[int], FrozenTrial],
        write: Callable[[int, TrialWrites], None],
        retried: Callable[[str, Callable[[], None]], None],
    ):
        self._read = read
        self._write = write
        self._retried = retried
        self._held: dict[int, _Held] = {}
        self._lock = threading.RLock()

    def hold(self, trial_id: int) -> None:
        """Buffer the writes of `trial_id` from now on (a trial this process runs)."""
        with self._lock:
            self._held.setdefault(int(trial_id), _Held())

    def holds(self, trial_id: int) -> bool:
        return trial_id in self._held

    def held_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._held)

    def pending(self, trial_id: int) -> int:
        """Writes of `trial_id` not yet in the database (0 for a trial not held)."""
        with self._lock:
            held = self._held.get(trial_id)
            return len(held.pending) if held is not None else 0

    # --- writes: True when held (the caller writes through otherwise) ---
    def set_user_attr(self, trial_id: int, key: str, value: Any) -> bool:
        return self._add(trial_id, lambda w: w.user_attrs.__setitem__(key, stored_form(value)))

    def set_system_attr(self, trial_id: int, key: str, value: Any) -> bool:
        return self._add(trial_id, lambda w: w.system_attrs.__setitem__(key, stored_form(value)))

    def set_intermediate_value(self, trial_id: int, step: int, value: float) -> bool:
        return self._add(trial_id, lambda w: w.intermediate_values.__setitem__(int(step), float(value)))

    def _add(self, trial_id: int, put: Callable[[TrialWrites], None]) -> bool:
        with self._lock:
            held = self._held.get(trial_id)
            if held is None:
                return False
            put(held.pending)
            return True

    def flush(self, trial_id: int) -> int:
        """Write what `trial_id` holds in one transaction, through the retry loop. Returns how many writes went out
        (0: nothing held). On an error the writes stay pending and the error is raised (UpdateFinishedTrialError:
        another worker failed the trial as stale)."""
        tid = int(trial_id)
        return self._flush(tid, lambda w: self._retried("write_trial_writes", lambda: self._write(tid, w)), True)

    def flush_on_beat(self, trial_id: int) -> int:
        """The heartbeat's flush: one attempt, never waiting (for the objective or an outage), never raising (a
        failure is logged; the writes stay held for the next flush point). Returns how many writes went out."""
        try:
            return self._flush(int(trial_id), functools.partial(self._write, int(trial_id)), False)
        except Exception as exc:  # noqa: BLE001 - it runs in Optuna's heartbeat thread, which dies on an exception
            log.warning("held writes of trial id %d not written at its heartbeat (%s); kept", trial_id, exc)
            return 0

    def flush_all(self) -> int:
        """The worker's stop: flush every trial still held (one whose state was never recorded), one attempt each
        (an outage is not waited out again on the way out), never raising: a failure is logged with how many
        writes it drops. Returns how many writes went out."""
        done = 0
        for tid in self.held_ids():
            try:
                done += self._flush(tid, functools.partial(self._write, tid), True)
            except Exception as exc:  # noqa: BLE001 - the exit path must not replace the worker's own error
                dropped = self.pending(tid)
                log.warning("held writes of trial id %d not written at exit (%s); %d dropped", tid, exc, dropped)
            self.release(tid)
        return done

    def finish(self, trial_id: int, write: Callable[[TrialWrites], T]) -> T:
        """`write(pending)` for the trial's state change, which writes its held writes in the same transaction (the
        caller retries it); the pending writes are cleared once it returns. Not held: `write` of nothing."""
        with self._lock:
            held = self._held.get(trial_id)
            if held is None:
                return write(TrialWrites())
            result = write(held.pending)
            held.written.update(held.pending)
            held.pending = TrialWrites()
            return result

    def _flush(self, trial_id: int, write: Callable[[TrialWrites], None], blocking: bool) -> int:
        if not self._lock.acquire(blocking=blocking):  # the objective is using the buffer: its next point flushes
            return 0
        try:
            held = self._held.get(trial_id)
            if held is None or not len(held.pending):
                return 0
            pending = held.pending
            write(pending)
            held.written.update(pending)
            held.pending = TrialWrites()
            return len(pending)
        finally:
            self._lock.release()

    def release(self, trial_id: int) -> int:
        """Stop holding `trial_id` (its state is recorded, or it was taken over); returns how many unwritten writes
        were dropped with it (0 after a flush)."""
        with self._lock:
            held = self._held.pop(int(trial_id), None)
            return len(held.pending) if held is not None else 0

    # --- reads of held trials ---
    def overlay(self, trial: FrozenTrial) -> FrozenTrial:
        """`trial` (read from the database) with this process's unwritten writes on top, if it is held."""
        if not self._held:  # nothing held: no lookup at all (every read of a trial comes through here)
            return trial
        with self._lock:
            held = self._held.get(trial_id_of(trial))
            return trial if held is None else held.pending.apply_to(trial)

    def user_attrs(self, trial_id: int) -> dict[str, Any] | None:
        """A held trial's user attrs (None: not held; the caller reads the database)."""
        view = self._view(trial_id)
        return None if view is None else view.user_attrs

    def system_attrs(self, trial_id: int) -> dict[str, Any] | None:
        """A held trial's system attrs (None: not held; the caller reads the database)."""
        view = self._view(trial_id)
        return None if view is None else view.system_attrs

    def _view(self, trial_id: int) -> FrozenTrial | None:
        if not self._held:
            return None
        with self._lock:
            held = self._held.get(trial_id)
            if held is None:
                return None
            if held.base is None:
                held.base = self._read(int(trial_id))
            both = TrialWrites()
            both.update(held.written)
            both.update(held.pending)
            return both.apply_to(held.base)
