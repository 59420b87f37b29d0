"""A worker: one process, one GPU, `study.optimize(objective)` until the study's trial budget is spent.

Heartbeats only run inside `study.optimize`, so the worker uses it (not a bare ask/tell loop); the storage from
tuner.storage.open_storage carries the heartbeat and RetryHeartbeatStaleTrialCallback, so a worker that dies
(SIGKILL) has its trial failed by the heartbeat and re-run by another worker.

Shared budget: several workers on one study stop when the study holds `n_trials` counted trials in total:
COMPLETE + PRUNED + FAIL, minus failed trials that were retried (a retry replaces them). A worker that would
start a trial while the remaining budget is already being run by others waits for them instead (and fails their
trials through the heartbeat if they die), so the study ends with exactly n_trials unless two workers ask at the
same instant.

Storage outage (database restart): the storage (tuner.resilience.ResilientRDBStorage) retries every call with
backoff until the database answers again (up to STORAGE_OUTAGE_S), so a trial that finished during the outage is
recorded when it is back, the heartbeat resumes, and the budget wait carries on; only an outage longer than that
ends the worker, with an error naming the masked URL (exit 2; its unfinished trial is failed by the heartbeat and
retried by another worker).

Sampler seed: every worker of a seeded study draws from its own sequence, the study's seed mixed with a hash of the
worker id (host:pid[:gpu]; tuner.resilience.worker_seed), else parallel workers would replay one another's
configurations. `seed_mode="study"` keeps the study's seed itself: a lone worker's run is then reproducible from
it; "auto" (default) does that for `tuner run` (given a StudySpec: one in-process worker) and mixes for
`tuner worker` (given a study name: what `tuner launch` starts several of). The seed used is logged and stored as
study system attr `tuner:sampler_seed:<worker id>`.

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
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

log = logging.getLogger(__name__)

COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
WAIT_POLL_S = 1.0
STORAGE_OUTAGE_S = 600.0  # how long a worker waits for its database to come back before giving up


def counted_trials(study: optuna.Study) -> int:
    """Finished trials that count toward the budget: COMPLETE + PRUNED + FAIL, minus FAILs a retry replaced."""
    trials = study.get_trials(deepcopy=False)
    retried: set[int] = set()
    for t in trials:
        retried.update(t.system_attrs.get("retry_history", ()))
    return sum(1 for t in trials if t.state in COUNTED_STATES and not (t.state == TrialState.FAIL
                                                                        and t.number in retried))


class StudyBudget:
    """optimize() callback: stop when the study has n_trials counted trials; wait while others run the rest."""

    def __init__(self, n_trials: int, stop_event: threading.Event):
        self.n_trials = int(n_trials)
        self.stop_event = stop_event

    def remaining(self, study: optuna.Study) -> tuple[int, int]:
        """(budget not yet counted, trials running now) for the whole study."""
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        return self.n_trials - counted_trials(study), running

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.wait_turn(study) is False:
            study.stop()

    def wait_turn(self, study: optuna.Study) -> bool:
        """True when this worker should start another trial; False when the budget is spent or we are stopping.

        A storage error that is a connection failure is temporary here (the database restarting): the wait goes
        on, for at most STORAGE_OUTAGE_S in a row."""
        from tuner.resilience import StorageUnavailable, is_connection_failure

        outage_since: float | None = None
        while not self.stop_event.is_set():
            try:
                left, running = self.remaining(study)
                if left <= 0:
                    return False
                if left > running:
                    return True
                # Every remaining trial is running on another worker: wait; if one dies, the heartbeat fails it,
                # its retry is enqueued and the budget opens again.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    optuna.storages.fail_stale_trials(study)
                outage_since = None
            except StorageUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - only connection failures are waited out, the rest re-raised
                if not is_connection_failure(exc):
                    raise
                now = time.monotonic()
                if outage_since is None:
                    outage_since = now
                    log.warning("worker: storage error while waiting for a turn (%s); treating it as temporary "
                                "for up to %.0f s", type(exc).__name__, STORAGE_OUTAGE_S)
                elif now - outage_since > STORAGE_OUTAGE_S:
                    raise
            self.stop_event.wait(WAIT_POLL_S)
        return False


class RetryInterrupted:
    """optimize() callback: re-enqueue a trial that ended `interrupted` (same params), then stop the worker.

    The retry carries the system attrs RetryHeartbeatStaleTrialCallback writes (`failed_trial`: the original
    trial's number, `retry_history`), so both kinds of retry read the same and the budget counts the replaced trial
    once; unlike that callback it does not copy the user attrs (end_reason, error_summary, ... of the interrupted
    attempt would otherwise stick to the retry)."""

    def __init__(self, stop_event: threading.Event):
        self.stop_event = stop_event

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and trial.user_attrs.get("end_reason") == "interrupted":
            enqueue_retry(study, trial)
        if self.stop_event.is_set():
            study.stop()


def enqueue_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Add a WAITING copy of `trial`'s params that records which trial it replaces."""
    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    system_attrs = {"failed_trial": trial.system_attrs.get("failed_trial", trial.number), "retry_history": history}
    user_attrs = {k: trial.user_attrs[k] for k in ("preset",) if k in trial.user_attrs}
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=trial.params,
                                              distributions=trial.distributions, user_attrs=user_attrs,
                                              system_attrs=system_attrs))


def run_worker(study: Any, storage_url: str, gpu: int | None = None, n_trials: int | None = None, *,
               cache_dir: str | os.PathLike | None = None, on_progress: Callable[[dict[str, Any]], None] | None = None,
               on_trial_start: Callable[[int, dict[str, Any]], None] | None = None,
               on_trial_end: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
               fault=None, cpu_threads: int | None = 1, install_signal_handlers: bool = True,
               heartbeat_interval_s: int | None = None, grace_period_s: int | None = None,
               seed_mode: str = "auto") -> int:
    """Run trials of `study` (a StudySpec, or the name of a study already in storage) until the study holds
    `n_trials` counted trials (default: the spec's n_trials) or SIGTERM/SIGINT arrives. Returns the exit code (0).

    gpu: physical GPU index to pin the trial child to (None: CPU, or the only GPU).
    cache_dir: tokenized-data cache shared by workers (default `.phase1_cache` in the cwd).
    fault: test-only tuner.trial_runner.FaultInjection.
    cpu_threads: torch threads of a CPU trial child (see TrialRunner).
    heartbeat_interval_s / grace_period_s: seconds between this worker's heartbeats / without one before a RUNNING
        trial counts as stale (None: tuner.storage's defaults, 30 s / 120 s). The grace period should be several
        heartbeat intervals.
    seed_mode: "worker" (study seed mixed with this worker's id), "study" (the study's seed itself), or "auto":
        "study" when `study` is a StudySpec (`tuner run`), "worker" when it is a study name (`tuner worker`).
    Raises StorageError when the database stays unreachable longer than STORAGE_OUTAGE_S.
    """
    from tuner.errors import StorageError
    from tuner.objective import Objective, TrialFailed
    from tuner.resilience import StorageUnavailable, worker_seed
    from tuner.storage import create_or_load_study, load_study, make_sampler, mask_url, open_storage
    from tuner.trial_runner import TrialRunner

    if seed_mode not in ("auto", "worker", "study"):
        raise ValueError(f"seed_mode {seed_mode!r}: use 'auto', 'worker' or 'study'")
    timing: dict[str, Any] = {}  # only what was given: open_storage's own defaults otherwise
    if heartbeat_interval_s is not None:
        timing["heartbeat_interval_s"] = int(heartbeat_interval_s)
    if grace_period_s is not None:
        timing["grace_period_s"] = int(grace_period_s)
    storage = open_storage(storage_url, outage_limit_s=STORAGE_OUTAGE_S, **timing)
    worker_id = f"{socket.gethostname()}:{os.getpid()}" + (f":gpu{gpu}" if gpu is not None else "")
    if isinstance(study, str):
        opt_study = load_study(study, storage)
        spec = spec_of_study(opt_study)
    else:
        spec = study
        opt_study = create_or_load_study(spec, storage)
    mixed = seed_mode == "worker" or (seed_mode == "auto" and isinstance(study, str))
    seed = worker_seed(spec.sampler.seed, worker_id if mixed else None)
    opt_study.sampler = make_sampler(spec, seed=seed)
    if spec.sampler.seed is not None:
        storage.set_study_system_attr(opt_study._study_id, f"tuner:sampler_seed:{worker_id}", seed)
        log.info("worker %s: sampler seed %s (%s)", worker_id, seed,
                 f"study seed {spec.sampler.seed} mixed with the worker id" if mixed else "the study's seed")
    budget_n = int(n_trials if n_trials is not None else spec.n_trials)

    stop_event = threading.Event()
    previous = {}
    if install_signal_handlers and threading.current_thread() is threading.main_thread():
        def _on_signal(signum, frame):  # noqa: ARG001
            log.warning("worker: %s received; finishing the current trial as interrupted",
                        signal.Signals(signum).name)
            stop_event.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _on_signal)

    runner = TrialRunner(gpu=gpu, cache_dir=cache_dir or Path.cwd() / ".phase1_cache", cpu_threads=cpu_threads)
    objective = Objective(spec, runner, stop_event=stop_event, worker_id=worker_id, on_progress=on_progress,
                          on_trial_start=on_trial_start, fault=fault)
    budget = StudyBudget(budget_n, stop_event)
    callbacks = [RetryInterrupted(stop_event), budget]
    if on_trial_end is not None:
        callbacks.insert(0, on_trial_end)
    try:
        while True:
            try:
                if budget.wait_turn(opt_study):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        opt_study.optimize(objective, n_trials=None, catch=(TrialFailed,), callbacks=callbacks)
                break
            except Exception as e:  # noqa: BLE001 - classified below; anything else propagates unchanged
                lost = _in_chain(e, StorageUnavailable)
                if lost is not None:
                    # Optuna's own error path may have replaced it (UnboundLocalError / AssertionError in _run_trial)
                    raise StorageError(f"worker {worker_id}: {lost}") from None
                if _in_chain(e, optuna.exceptions.UpdateFinishedTrialError) is not None:
                    # Our trial was failed as stale by another worker (an outage longer than the grace period)
                    # while its result was being recorded; its retry is queued. Carry on with the next trial.
                    log.warning("worker %s: the trial just finished had already been failed as stale by another "
                                "worker (no heartbeat for the grace period); its retry re-runs it", worker_id)
                    continue
                raise
    finally:
        runner.close()  # the child holds the GPU and NVML: released whatever happened
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        storage.remove_session()
    log.info("worker %s: done (%d counted trials in study %s at %s)", worker_id, counted_trials(opt_study),
             spec.name, mask_url(storage_url))
    return 0


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


def spec_of_study(study: optuna.Study):
    """The StudySpec stored on the study (written by tuner.storage.create_or_load_study)."""
    from tuner.errors import StorageError
    from tuner.storage import study_spec

    spec = study_spec(study)
    if spec is None:
        raise StorageError(f"study {study.study_name!r} has no stored spec; it was not made by tuner: create it "
                           "with `tuner create STUDY.yaml` or `tuner run STUDY.yaml`")
    return spec
