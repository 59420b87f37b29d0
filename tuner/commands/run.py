"""`tuner run STUDY.yaml`: create the study if needed and run its trials with one local worker (the main job).

    tuner run studies/quickstart.yaml [--storage URL] [--n-trials N] [--gpu N] [--stop-after DURATION]

Shows progress (trials done / total, the current trial's step and loss) and one line per finished trial.
--stop-after 8m: no new trial after 8 minutes; the running trial finishes and is recorded, and a later run resumes
the study's remaining budget.
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
        "run",
        help="create the study if needed and run its trials with one local worker",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("study_file", metavar="STUDY.yaml", help="study definition, e.g. studies/quickstart.yaml")
    p.add_argument(
        "--n-trials",
        type=int_at_least(1),
        default=None,
        help="trials the study should hold in total (default: the file's n_trials)",
    )
    p.add_argument(
        "--gpu", type=int_at_least(0), default=None, help="physical GPU index to run on (default: the visible one)"
    )
    add_stop_after_option(p)
    add_heartbeat_options(p)
    add_trial_process_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    with stop_on_signals() as stop:
        return _run(args, stop, window_deadline(args))


def _run(args: argparse.Namespace, stop: Any, deadline: float | None) -> int:
    from tuner.storage._optuna_compat import study_id
    from tuner.storage.samplers import claim_run_seed
    from tuner.storage.studies import create_or_load_study
    from tuner.storage.urls import mask_url, resolve_storage_url
    from tuner.study.loader import load_spec

    spec = load_spec(args.study_file)  # every spec error before storage or a GPU is touched
    url = resolve_storage_url(getattr(args, "storage", None))
    n_total = args.n_trials if args.n_trials is not None else spec.n_trials
    from tuner.commands.worker import ProgressDisplay, quiet_optuna
    from tuner.trial.worker import default_worker_id, run_worker

    quiet_optuna()
    from tuner.commands._progress import resume_state

    storage = open_worker_storage(url, args, abort=stop)
    resume = resume_state(storage, spec.name)
    if resume.finished(n_total):
        print(resume.finished_line(spec.name, n_total))
        return 0
    # One in-process worker. Its seed continues the study's sequence: the study's own seed on the first run (a fresh
    # study's run is reproducible from it), a distinct one for each later or concurrent run (claim_run_seed), so a
    # re-run does not replay the configurations already tried.
    worker_id = default_worker_id(args.gpu)
    seed = claim_run_seed(storage, study_id(create_or_load_study(spec, storage)), spec.sampler.seed, worker_id)
    display = ProgressDisplay(spec, n_total)
    display.progress_bar.update(display.trials_task, completed=resume.done)  # resumes where the study stands
    display.console.print(
        f"study [bold]{spec.name}[/] on {mask_url(url)}: {n_total} trials"
        + (f" ({resume.done} done, resuming)" if resume.done else "")
        + f", ceiling {spec.vram_ceiling_gib:g} GiB, sampler {spec.sampler.name}"
        + (f" (seed {seed})" if seed is not None else "")
    )
    with display:
        code = run_worker(
            spec,
            storage=storage,
            seed=seed,
            worker_id=worker_id,
            gpu=args.gpu,
            n_trials=n_total,
            cache_dir=args.cache_dir,
            cpu_threads=args.threads or None,
            hooks=display.hooks(),
            deadline=deadline,
        )
    if code == 0:
        display.summary(url)
    return code
