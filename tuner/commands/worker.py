"""`tuner worker --study NAME`: one worker process (one GPU) on a study already in storage.

    tuner worker --study NAME [--storage URL] [--gpu N] [--n-trials N] [--stop-after DURATION]

Runs until the study holds its n_trials trials (shared with every other worker), its --stop-after window is over
(no new trial after it; the running one finishes and is recorded; exit 0, the rest of the budget left for the next
run) or SIGTERM (the current trial ends as `interrupted` and is re-enqueued; exit 0). Exit codes: 0 done or
stopped, 2 a user error (the study, the flags, or this worker's environment: data folder, --cache-dir), 75 the
database stayed unreachable past the outage limit (`tuner launch` restarts it), 143 / 130 SIGTERM / SIGINT while the
database was unreachable (the trial is retried once its heartbeat lapses). Also holds the progress display
`tuner run` uses.
"""

from __future__ import annotations

import argparse
from typing import Any

from tuner.commands import (
    add_heartbeat_options,
    add_stop_after_option,
    add_trial_process_options,
    int_at_least,
    open_worker_storage,
    stop_on_signals,
    window_deadline,
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser
    p = subparsers.add_parser(
        "worker", help="run trials of a study in storage (one process, one GPU)", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--study", required=True, help="study name (as created by `tuner create` / `tuner run`)")
    p.add_argument(
        "--gpu", type=int_at_least(0), default=None, help="physical GPU index (NVML numbering) to pin this worker to"
    )
    p.add_argument(
        "--n-trials",
        type=int_at_least(1),
        default=None,
        help="trials the study should hold in total, shared by all workers (default: the spec's)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display, one line per finished trial only")
    add_stop_after_option(p)
    add_heartbeat_options(p)
    add_trial_process_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    with stop_on_signals() as stop:
        return _run(args, stop, window_deadline(args))


def _run(args: argparse.Namespace, stop: Any, deadline: float | None) -> int:
    from tuner.storage.samplers import worker_seed
    from tuner.storage.studies import load_study
    from tuner.storage.urls import mask_url, resolve_storage_url
    from tuner.trial.worker import default_worker_id, run_worker, spec_of_study

    url = resolve_storage_url(getattr(args, "storage", None))
    storage = open_worker_storage(url, args, abort=stop)  # waits for a database that is down
    spec = spec_of_study(load_study(args.study, storage))
    n_total = args.n_trials if args.n_trials is not None else spec.n_trials
    quiet_optuna()
    display = ProgressDisplay(spec, n_total, live=not args.quiet)
    display.console.print(
        f"worker on study [bold]{spec.name}[/] at {mask_url(url)}"
        + (f", GPU {args.gpu}" if args.gpu is not None else "")
    )
    with display:
        # One of several workers (tuner launch): the study seed mixed with this worker's id, so parallel workers
        # do not replay one another's configurations.
        worker_id = default_worker_id(args.gpu)
        hooks = with_status_file(display.hooks(), worker_id, args.gpu)
        code = run_worker(
            spec,
            storage=storage,
            seed=worker_seed(spec.sampler.seed, worker_id),
            worker_id=worker_id,
            gpu=args.gpu,
            n_trials=n_total,
            cache_dir=args.cache_dir,
            cpu_threads=args.threads or None,
            hooks=hooks,
            deadline=deadline,
        )
    return code


def with_status_file(hooks: Any, worker_id: str, gpu: int | None) -> Any:
    """`hooks` plus a status file for `tuner launch`'s per-worker lines when the launcher asked for one
    (tuner.trial.worker_status.STATUS_ENV); `hooks` unchanged otherwise."""
    import os

    from tuner.trial.worker import WorkerHooks
    from tuner.trial.worker_status import STATUS_ENV, StatusWriter, chain

    path = os.environ.get(STATUS_ENV)
    if not path:
        return hooks
    w = StatusWriter(path, worker_id, os.getpid(), gpu)
    return WorkerHooks(
        on_trial_start=chain(hooks.on_trial_start, w.trial_start),
        on_progress=chain(hooks.on_progress, w.progress),
        on_trial_end=chain(hooks.on_trial_end, w.trial_end),
    )


def quiet_optuna() -> None:
    """Optuna logs every finished trial at INFO; the display prints its own line per trial instead."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


class ProgressDisplay:
    """rich progress: trials done / total and the current trial's step, tokens and loss; a line per trial."""

    def __init__(self, spec: Any, n_total: int, live: bool = True):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.spec = spec
        self.console = Console(stderr=False, soft_wrap=True)  # piped output: one line per line, no 80-column wrap
        self.live = live
        self.progress_bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not live,
        )
        self.trials_task = self.progress_bar.add_task("trials", total=n_total)
        self.step_task = self.progress_bar.add_task("trial -", total=spec.budget.train_tokens)

    def __enter__(self) -> ProgressDisplay:
        self.progress_bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress_bar.__exit__(*exc)

    def hooks(self) -> Any:
        """This display's callbacks for run_worker."""
        from tuner.trial.worker import WorkerHooks

        return WorkerHooks(on_trial_start=self.trial_start, on_progress=self.progress, on_trial_end=self.trial_end)

    def trial_start(self, number: int, params: dict[str, Any]) -> None:  # noqa: ARG002 - WorkerHooks' signature
        self.progress_bar.reset(self.step_task, total=self.spec.budget.train_tokens, description=f"trial {number}")

    def progress(self, msg: dict[str, Any]) -> None:
        self.progress_bar.update(
            self.step_task,
            completed=msg["tokens"],
            description=f"trial {msg['trial']} step {msg['step']} loss {msg['loss']:.3f}",
        )

    def trial_end(self, study: Any, trial: Any) -> None:
        from tuner.trial.budget import counted_trials

        self.progress_bar.update(self.trials_task, completed=counted_trials(study))
        reason = trial.user_attrs.get("end_reason", "?")
        if trial.values:
            vals = ", ".join(f"{m} {v:.4g}" for m, v in zip(self.spec.metric_names, trial.values))
        else:
            vals = trial.user_attrs.get("error_summary", "") or ""
        wall = trial.user_attrs.get("trial_wall_s")
        ref = trial.user_attrs.get("reference")
        state = trial.state.name.lower()
        ending = state if reason == state else f"{state} ({reason})"  # `complete`, not `complete (complete)`
        self.console.print(
            f"trial {trial.number}{f' (reference: {ref})' if ref else ''} {ending}: {vals}"
            + (f" [{wall:.1f} s]" if wall is not None else ""),
            highlight=False,
        )

    def summary(self, url: str) -> None:
        from tuner.storage.connect import open_storage
        from tuner.storage.studies import load_study

        study = load_study(self.spec.name, open_storage(url))
        by_reason: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            finished = t.state.is_finished()
            key = (t.user_attrs.get("end_reason") or t.state.name.lower()) if finished else t.state.name.lower()
            by_reason[key] = by_reason.get(key, 0) + 1
        parts = ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items()))
        self.console.print(
            f"study {self.spec.name}: {len(study.trials)} trials ({parts}); "
            f"see `tuner pareto --study {self.spec.name}`",
            highlight=False,
        )
