"""`tuner run STUDY.yaml`: create the study if needed and run its trials with one local worker (the main job).

    tuner run studies/quickstart.yaml [--storage URL] [--n-trials N] [--gpu N]

Shows progress (trials done / total, the current trial's step and loss) and one line per finished trial.
"""

from __future__ import annotations

import argparse
from typing import Any

from tuner.commands import (
    add_heartbeat_options,
    add_trial_process_options,
    open_worker_storage,
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
        type=int,
        default=None,
        help="trials the study should hold in total (default: the file's n_trials)",
    )
    p.add_argument("--gpu", type=int, default=None, help="physical GPU index to run on (default: the visible one)")
    add_heartbeat_options(p)
    add_trial_process_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tuner.storage.urls import mask_url, resolve_storage_url
    from tuner.study.loader import load_spec

    spec = load_spec(args.study_file)  # every spec error before storage or a GPU is touched
    url = resolve_storage_url(getattr(args, "storage", None))
    n_total = args.n_trials if args.n_trials is not None else spec.n_trials
    from tuner.commands.worker import ProgressDisplay, quiet_optuna
    from tuner.trial.worker import run_worker

    quiet_optuna()
    from tuner.commands._progress import resume_state

    storage = open_worker_storage(url, args)
    resume = resume_state(storage, spec.name)
    if resume.finished(n_total):
        print(resume.finished_line(spec.name, n_total))
        return 0
    display = ProgressDisplay(spec, n_total)
    display.progress_bar.update(display.trials_task, completed=resume.done)  # resumes where the study stands
    display.console.print(
        f"study [bold]{spec.name}[/] on {mask_url(url)}: {n_total} trials"
        + (f" ({resume.done} done, resuming)" if resume.done else "")
        + ", ceiling "
        f"{spec.vram_ceiling_gib:g} GiB, sampler {spec.sampler.name}"
    )
    with display:
        # One in-process worker: the study's own seed, so the run is reproducible from it.
        code = run_worker(
            spec,
            storage=storage,
            seed=spec.sampler.seed,
            gpu=args.gpu,
            n_trials=n_total,
            cache_dir=args.cache_dir,
            cpu_threads=args.threads or None,
            hooks=display.hooks(),
        )
    display.summary(url)
    return code
