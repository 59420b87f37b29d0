"""A worker: one process, one GPU, `study.optimize(objective)` until the study's trial budget is spent.

Heartbeats only run inside `study.optimize`, so the worker uses it (not a bare ask/tell loop); the storage from
tuner.storage.connect.open_storage carries the heartbeat and RetryHeartbeatStaleTrialCallback, so a worker that dies
(SIGKILL) has its trial failed by the heartbeat and re-run by another worker.

Shared budget: several workers on one study stop when the study holds `n_trials` counted trials in total:
COMPLETE + PRUNED + FAIL, minus failed trials that were retried (a retry replaces them). A worker takes a trial only
while the budget left exceeds the trials running now, deciding under the study lock (tuner.trial.budget), so the
study ends with exactly n_trials even when workers start at the same moment; one that finds the rest being run by
others waits for them (and fails their trials through the heartbeat if they die).

Environment: before it takes any trial the worker checks that it can run one at all (tuner.trial.environment: the
data source, the cache dir); a failure is one line and exit 2, the budget untouched. A trial that meets such a
failure anyway ends `environment_error`, is re-queued (so it does not count) and stops the worker the same way.

Storage outage (database restart): the storage (tuner.storage.resilient.ResilientStorage) retries every call with
backoff until the database answers again (up to tuner.storage.resilient.OUTAGE_LIMIT_S), so a trial that finished
during the outage is recorded when it is back, the heartbeat resumes, and the budget wait carries on; only an outage
longer than that ends the worker (exit 75, which `tuner launch` restarts; its unfinished trial is failed by the
heartbeat and retried by another worker).

Trial writes: once a trial is RUNNING the worker holds its attr and intermediate-value writes in the storage
(tuner.storage.write_buffer) and they go to the database together at its flush points (each stored progress report,
each heartbeat, the state change, the worker's stop); a SIGKILLed worker loses only what its trial set since the last.

Paused past the grace period (SIGSTOP, a suspended VM): another worker fails the trial as stale and re-queues it;
when this worker resumes, its late result is dropped with one warning and it goes on with the next trial.

Sampler seed: the caller passes it. `tuner worker` (what `tuner launch` starts several of) mixes the study's seed with
a hash of the worker id (host:pid[:gpu]; tuner.storage.samplers.worker_seed), else parallel workers would replay one
another's configurations; `tuner run` claims a per-run seed (tuner.storage.samplers.claim_run_seed: the study's
seed on a study's first run, a distinct one for each re-run or concurrent run). The seed used is logged and stored
as study system attr `tuner:sampler_seed:<worker id>`.

--stop-after (`deadline`): once it has passed the worker takes no new trial (checked where the budget is, before
ask); a trial already running trains to its end and is recorded as usual, the worker exits 0 with one line and
records the exit reason `stop_after`; the study's n_trials is untouched, so the next run resumes it.

SIGTERM / SIGINT: the current trial is asked to stop at its next step (killed after a grace period), ends FAIL
with end_reason `interrupted`, and is re-enqueued with the same params through RetryHeartbeatStaleTrialCallback's
own logic (so the retry records `failed_trial` / `retry_history` exactly like a heartbeat retry); then the worker
exits 0. During a database outage the signal also ends the storage's wait (exit 128 + signal, the trial left for the
heartbeat to retry). try/finally releases the trial child (and with it the GPU and NVML) whatever happened.
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

from tuner.errors import StorageInterrupted, StorageUnavailable, WorkerEnvironmentError
from tuner.storage._optuna_compat import study_id, trial_id
from tuner.storage.resilient import ResilientStorage, StopSignal
from tuner.storage.samplers import SEED_ATTR_PREFIX
from tuner.storage.write_buffer import buffer_of
from tuner.study.spec import StudySpec
from tuner.trial.budget import RetryInterrupted, StudyBudget, counted_trials, deadline_passed, enqueue_retry
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
    storage: ResilientStorage,
    seed: int | None,
    worker_id: str | None = None,
    gpu: int | None = None,
    n_trials: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    hooks: WorkerHooks | None = None,
    fault: FaultInjection | list[FaultInjection] | None = None,
    cpu_threads: int | None = 1,
    install_signal_handlers: bool = True,
    standby: bool | None = None,
    deadline: float | None = None,
) -> int:
    """Run trials of `spec`'s study in `storage` (created if needed) until the study holds `n_trials` counted
    trials (default: the spec's n_trials) or SIGTERM/SIGINT arrives. Returns the exit code: 0, or 128 + the signal
    when a signal arrived while the database was unreachable (the process then stops without waiting for it).

    storage: an open storage (tuner.storage.connect.open_storage: heartbeats, outage retries). Its `abort`
        StopSignal (created here if it has none) is the worker's stop event: SIGTERM/SIGINT set it.
    seed: this worker's sampler seed; the caller decides (`tuner run`: tuner.storage.samplers.claim_run_seed, so a
        re-run continues the sequence; `tuner worker`: worker_seed(study seed, worker id), so parallel workers do not
        replay one another). worker_id: default host:pid[:gpuN].
    gpu: physical GPU index to pin the trial child to (None: CPU, or the only GPU).
    cache_dir: tokenized-data cache shared by workers (default `.phase1_cache` in the cwd).
    fault: test-only tuner.trial.faults.FaultInjection (one, or a list).
    cpu_threads: torch threads of a CPU trial child (see TrialRunner).
    standby: keep a standby trial child (see TrialRunner; None: on CUDA only).
    deadline: a time.monotonic() value after which no new trial is taken (--stop-after; None: no window). Already
        past at the start: no trial child is started and no trial taken.
    Raises WorkerEnvironmentError (exit 2) when this worker's environment cannot run trials (checked before any
    trial is taken; a trial that meets it anyway is re-queued, so the budget is untouched), StorageUnavailable
    (exit 75) when the database stays unreachable longer than the storage's outage limit.
    """
    from tuner.storage.samplers import make_sampler
    from tuner.storage.studies import create_or_load_study
    from tuner.storage.study_lock import StudyLock
    from tuner.storage.urls import mask_url
    from tuner.trial.environment import check_environment
    from tuner.trial.objective import Objective
    from tuner.trial.recording import TrialFailed
    from tuner.trial.runner import TrialRunner

    hooks = hooks or WorkerHooks()
    worker_id = worker_id or default_worker_id(gpu)
    cache = Path(cache_dir) if cache_dir is not None else Path.cwd() / ".phase1_cache"
    check_environment(spec, cache)  # before the study is touched: a broken worker takes no trial
    if storage.abort is None:
        storage.abort = StopSignal()
    stop_event = storage.abort
    budget_n = int(n_trials if n_trials is not None else spec.n_trials)
    runner = TrialRunner(gpu=gpu, cache_dir=cache, cpu_threads=cpu_threads, standby=standby)
    # A worker whose window has already closed (started too late) takes no trial: it opens no device either.
    will_run = budget_n > 0 and not deadline_passed(deadline)
    if will_run:
        # The child imports torch and the model, opens the device and the data while this process opens the study,
        # takes its first turn and asks its first trial: that trial finds it ready, or nearly, instead of starting it.
        runner.prestart(_warm_data(spec))
    try:
        opt_study = create_or_load_study(spec, storage)
        opt_study.sampler = make_sampler(spec, seed)
        if spec.sampler.seed is not None:
            storage.set_study_system_attr(study_id(opt_study), f"{SEED_ATTR_PREFIX}{worker_id}", seed)
            log.info("worker %s: sampler seed %s (study seed %s)", worker_id, seed, spec.sampler.seed)
        if will_run and spec.training.step.needs_cuda:  # the device is the child's: wait for it, refuse now
            runner.ensure_started()
            problem = spec.training.step.device_problem(str(runner.device))
            if problem is not None:
                raise WorkerEnvironmentError(f"study {spec.name}: training.{problem}")
    except BaseException:
        runner.close()  # no trial will run: the prestarted child goes now
        raise

    previous = {}
    if install_signal_handlers and threading.current_thread() is threading.main_thread():

        def _on_signal(signum: int, frame: object) -> None:  # noqa: ARG001
            log.warning("worker: %s received; finishing the current trial as interrupted", signal.Signals(signum).name)
            stop_event.set_by(signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _on_signal)

    objective = Objective(
        spec,
        runner,
        stop_event=stop_event,
        worker_id=worker_id,
        on_progress=hooks.on_progress,
        on_trial_start=hooks.on_trial_start,
        fault=fault,
    )
    budget = StudyBudget(budget_n, stop_event, StudyLock(storage, study_id(opt_study)), deadline=deadline)

    writes = buffer_of(storage)
    taken = 0  # trials this worker took (the --stop-after line says how many)

    def take(trial: optuna.trial.Trial) -> tuple[float, ...]:
        nonlocal taken
        taken += 1
        budget.release()  # the trial is RUNNING in storage: the next worker may check the budget
        if writes is not None:  # its attrs and curve are written together at its flush points, not one by one
            writes.hold(trial_id(trial))
        return objective(trial)

    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = [RetryInterrupted(stop_event)]
    if hooks.on_trial_end is not None:
        callbacks.insert(0, hooks.on_trial_end)
    quiet = _TakenOverFilter()
    quiet.install()
    try:
        while True:
            try:
                if not budget.take_turn(opt_study):
                    break
                objective.last_trial_id = objective.last_trial_number = None  # set again when the trial starts
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    opt_study.optimize(take, n_trials=1, catch=(TrialFailed,), callbacks=callbacks)
            except StorageInterrupted as e:
                log.warning("worker %s: %s", worker_id, e)
                return e.exit_code
            except WorkerEnvironmentError as e:
                _requeue(opt_study, storage, objective.last_trial_id)
                raise WorkerEnvironmentError(
                    f"worker {worker_id}: {e}; fix it and start the worker again (its trial was re-queued and does "
                    "not count against n_trials)"
                ) from None
            except Exception as e:
                interrupted = _in_chain(e, StorageInterrupted)
                if isinstance(interrupted, StorageInterrupted):  # Optuna's error path may have wrapped it
                    log.warning("worker %s: %s", worker_id, interrupted)
                    return interrupted.exit_code
                lost = _in_chain(e, StorageUnavailable)
                if lost is not None:
                    raise StorageUnavailable(f"worker {worker_id}: {lost}") from None
                if _taken_over(storage, objective.last_trial_id, e):
                    # Our trial was failed as stale by another worker (this one was paused or cut off past the
                    # grace period) and its retry is queued: the late result is dropped; carry on.
                    log.warning(
                        "worker %s: trial %s had already been failed as stale by another worker (no heartbeat for "
                        "the grace period) and re-queued; its late result is dropped",
                        worker_id,
                        objective.last_trial_number,
                    )
                    continue
                raise
            finally:
                budget.release()
    finally:
        quiet.remove()
        runner.close()  # the child holds the GPU and NVML: released whatever happened
        if writes is not None:  # the last flush point: a trial whose state was never recorded (logged, not raised)
            writes.flush_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        storage.remove_session()
    if stop_event.is_set():
        _record_exit(storage, opt_study, worker_id, "interrupted")
    elif budget.window_ended and (held := counted_trials(opt_study)) < budget_n:
        _record_exit(storage, opt_study, worker_id, "stop_after")
        # WARNING, not INFO: the CLI installs no log handler, so this is the level that reaches the user's output
        # (and `tuner launch`'s log), and a study left short of its n_trials is worth seeing.
        log.warning(
            "worker %s: --stop-after reached; %d trial(s) this worker, study holds %d of %d",
            worker_id,
            taken,
            held,
            budget_n,
        )
    else:
        _record_exit(storage, opt_study, worker_id, "done")
        log.info(
            "worker %s: done (%d counted trials in study %s at %s)",
            worker_id,
            counted_trials(opt_study),
            spec.name,
            mask_url(storage.url),
        )
    return 0


def _warm_data(spec: StudySpec) -> tuple[Any, int] | None:
    """(data source, vocab_size) the study's trials open, when the spec fixes the vocabulary (else None)."""
    vocab = spec.model.get("vocab_size")
    return (spec.data, int(vocab)) if isinstance(vocab, int) else None


def _requeue(study: optuna.Study, storage: ResilientStorage, trial_id_: int | None) -> None:
    """Re-queue the trial an environment failure ended (same params): its FAIL is then a replaced attempt, which
    the budget does not count."""
    if trial_id_ is None:
        return
    trial = storage.get_trial(trial_id_)
    if trial.state == optuna.trial.TrialState.FAIL:
        enqueue_retry(study, trial)


def _taken_over(storage: ResilientStorage, trial_id_: int | None, exc: BaseException) -> bool:
    """True when `exc` comes from recording a trial that another worker has already finished (failed it as
    heartbeat-stale): Optuna refuses the update (UpdateFinishedTrialError) or the tell ("Cannot tell a FAIL trial")."""
    if trial_id_ is None:
        return False
    refused = _in_chain(exc, optuna.exceptions.UpdateFinishedTrialError) is not None or (
        isinstance(exc, ValueError) and str(exc).startswith("Cannot tell a ")
    )
    return refused and storage.get_trial(trial_id_).state.is_finished()


class _TakenOverFilter(logging.Filter):
    """Keeps Optuna's "Trial N failed ... TrialTakenOver" warning (with its traceback) out of the worker's output:
    a late result dropped because the trial was retried elsewhere is logged once, in one line, by the worker."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "TrialTakenOver" not in record.getMessage()

    def install(self) -> None:
        for handler in logging.getLogger("optuna").handlers:
            handler.addFilter(self)

    def remove(self) -> None:
        for handler in logging.getLogger("optuna").handlers:
            handler.removeFilter(self)


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
