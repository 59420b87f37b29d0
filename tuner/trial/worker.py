"""A worker: one process, one GPU, `study.optimize(objective)` until the study's trial budget is spent.

Heartbeats only run inside `study.optimize`, so the worker uses it (not a bare ask/tell loop); the storage from
tuner.storage.connect.open_storage carries the heartbeat and RetryHeartbeatStaleTrialCallback, so a worker that dies
(SIGKILL) has its trial failed by the heartbeat and re-run by another worker.

Shared budget: several workers on one study stop when the study holds `n_trials` counted trials in total:
COMPLETE + PRUNED + FAIL, minus failed trials that were retried (a retry replaces them). A worker that would
start a trial while the remaining budget is already being run by others waits for them instead (and fails their
trials through the heartbeat if they die), so the study ends with exactly n_trials unless two workers ask at the
same instant.

Storage outage (database restart): the storage (tuner.storage.resilient.ResilientRDBStorage) retries every call with
backoff until the database answers again (up to tuner.storage.resilient.OUTAGE_LIMIT_S), so a trial that finished
during the outage is recorded when it is back, the heartbeat resumes, and the budget wait carries on; only an outage
longer than that ends the worker, with an error naming the masked URL (exit 2; its unfinished trial is failed by the
heartbeat and retried by another worker).

Sampler seed: every worker of a seeded study draws from its own sequence, the study's seed mixed with a hash of the
worker id (host:pid[:gpu]; tuner.storage.samplers.worker_seed), else parallel workers would replay one another's
configurations. The caller passes the seed: `tuner worker` (what `tuner launch` starts several of) mixes it,
`tuner run` (one in-process worker) keeps the study's seed itself, so a lone worker's run is reproducible from it.
The seed used is logged and stored as study system attr `tuner:sampler_seed:<worker id>`.

SIGTERM / SIGINT: the current trial is asked to stop at its next step (killed after a grace period), ends FAIL
with end_reason `interrupted`, and is re-enqueued with the same params through RetryHeartbeatStaleTrialCallback's
own logic (so the retry records `failed_trial` / `retry_history` exactly like a heartbeat retry); then the worker
exits 0. try/finally releases the trial child (and with it the GPU and NVML) whatever happened.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from tuner.storage._optuna_compat import study_id
from tuner.storage.resilient import ResilientRDBStorage
from tuner.study.spec import StudySpec
from tuner.trial.budget import RetryInterrupted, StudyBudget, counted_trials
from tuner.trial.faults import FaultInjection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerHooks:
    """Callbacks of a progress display: a trial starts (number, params), the child reports progress ({"step",
    "tokens", "loss", "trial"}), a trial ends (study, frozen trial)."""

    on_trial_start: Callable[[int, dict[str, Any]], None] | None = None
    on_progress: Callable[[dict[str, Any]], None] | None = None
    on_trial_end: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None


def default_worker_id(gpu: int | None) -> str:
    """host:pid[:gpuN], the id a worker records on its trials and mixes into its sampler seed."""
    return f"{socket.gethostname()}:{os.getpid()}" + (f":gpu{gpu}" if gpu is not None else "")


def run_worker(
    spec: StudySpec,
    *,
    storage: ResilientRDBStorage,
    seed: int | None,
    worker_id: str | None = None,
    gpu: int | None = None,
    n_trials: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    hooks: WorkerHooks | None = None,
    fault: FaultInjection | list[FaultInjection] | None = None,
    cpu_threads: int | None = 1,
    install_signal_handlers: bool = True,
) -> int:
    """Run trials of `spec`'s study in `storage` (created if needed) until the study holds `n_trials` counted
    trials (default: the spec's n_trials) or SIGTERM/SIGINT arrives. Returns the exit code (0).

    storage: an open storage (tuner.storage.connect.open_storage: heartbeats, outage retries).
    seed: this worker's sampler seed; the caller decides (`tuner run`: the study's seed, so a lone worker's run is
        reproducible; `tuner worker`: tuner.storage.samplers.worker_seed(study seed, worker id), so parallel
        workers do not replay one another). worker_id: default host:pid[:gpuN].
    gpu: physical GPU index to pin the trial child to (None: CPU, or the only GPU).
    cache_dir: tokenized-data cache shared by workers (default `.phase1_cache` in the cwd).
    fault: test-only tuner.trial.faults.FaultInjection (one, or a list).
    cpu_threads: torch threads of a CPU trial child (see TrialRunner).
    Raises StorageError when the database stays unreachable longer than the storage's outage limit.
    """
    from tuner.errors import StorageError
    from tuner.storage.resilient import StorageUnavailable
    from tuner.storage.samplers import make_sampler
    from tuner.storage.studies import create_or_load_study
    from tuner.storage.urls import mask_url
    from tuner.trial.objective import Objective
    from tuner.trial.recording import TrialFailed
    from tuner.trial.runner import TrialRunner

    hooks = hooks or WorkerHooks()
    worker_id = worker_id or default_worker_id(gpu)
    opt_study = create_or_load_study(spec, storage)
    opt_study.sampler = make_sampler(spec, seed)
    if spec.sampler.seed is not None:
        storage.set_study_system_attr(study_id(opt_study), f"tuner:sampler_seed:{worker_id}", seed)
        log.info("worker %s: sampler seed %s (study seed %s)", worker_id, seed, spec.sampler.seed)
    budget_n = int(n_trials if n_trials is not None else spec.n_trials)

    stop_event = threading.Event()
    previous = {}
    if install_signal_handlers and threading.current_thread() is threading.main_thread():

        def _on_signal(signum: int, frame: object) -> None:  # noqa: ARG001
            log.warning("worker: %s received; finishing the current trial as interrupted", signal.Signals(signum).name)
            stop_event.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _on_signal)

    runner = TrialRunner(gpu=gpu, cache_dir=cache_dir or Path.cwd() / ".phase1_cache", cpu_threads=cpu_threads)
    objective = Objective(
        spec,
        runner,
        stop_event=stop_event,
        worker_id=worker_id,
        on_progress=hooks.on_progress,
        on_trial_start=hooks.on_trial_start,
        fault=fault,
    )
    budget = StudyBudget(budget_n, stop_event)
    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = [RetryInterrupted(stop_event), budget]
    if hooks.on_trial_end is not None:
        callbacks.insert(0, hooks.on_trial_end)
    try:
        while True:
            try:
                if budget.wait_turn(opt_study):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        opt_study.optimize(objective, n_trials=None, catch=(TrialFailed,), callbacks=callbacks)
                break
            except Exception as e:
                lost = _in_chain(e, StorageUnavailable)
                if lost is not None:
                    # Optuna's own error path may have replaced it (UnboundLocalError / AssertionError in _run_trial)
                    raise StorageError(f"worker {worker_id}: {lost}") from None
                if _in_chain(e, optuna.exceptions.UpdateFinishedTrialError) is not None:
                    # Our trial was failed as stale by another worker (an outage longer than the grace period)
                    # while its result was being recorded; its retry is queued. Carry on with the next trial.
                    log.warning(
                        "worker %s: the trial just finished had already been failed as stale by another "
                        "worker (no heartbeat for the grace period); its retry re-runs it",
                        worker_id,
                    )
                    continue
                raise
    finally:
        runner.close()  # the child holds the GPU and NVML: released whatever happened
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        storage.remove_session()
    _record_exit(storage, opt_study, worker_id, "interrupted" if stop_event.is_set() else "done")
    log.info(
        "worker %s: done (%d counted trials in study %s at %s)",
        worker_id,
        counted_trials(opt_study),
        spec.name,
        mask_url(storage.url),
    )
    return 0


def _record_exit(storage: Any, study: optuna.Study, worker_id: str, reason: str) -> None:
    """The clean stop, for `tuner status` (stopped, not stale); never turns a clean exit into a failure."""
    from tuner.storage.workers import record_worker_exit

    try:
        record_worker_exit(storage, study, worker_id, reason)
    except Exception as e:  # noqa: BLE001 - a status hint: the exit code must not depend on it
        log.warning("worker %s: could not record its exit (%s)", worker_id, e)


def _in_chain(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type `kind` in `exc`'s cause/context chain (or None)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def spec_of_study(study: optuna.Study) -> StudySpec:
    """The StudySpec stored on the study (written by tuner.storage.create_or_load_study)."""
    from tuner.errors import StorageError
    from tuner.storage.studies import study_spec

    spec = study_spec(study)
    if spec is None:
        raise StorageError(
            f"study {study.study_name!r} has no stored spec; it was not made by tuner: create it "
            "with `tuner create STUDY.yaml` or `tuner run STUDY.yaml`"
        )
    return spec
