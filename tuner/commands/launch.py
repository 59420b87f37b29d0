"""`tuner launch STUDY.yaml`: create the study if needed and supervise one worker per GPU (or N CPU workers).

    tuner launch studies/phase1_8gb.yaml --gpus all|0,1 [--storage URL]
    tuner launch studies/quickstart.yaml --workers 2

A crashed worker is restarted (at most --max-restarts times); SIGTERM is forwarded to every worker, whose current
trials end as `interrupted` and are re-enqueued; launch exits 0 within 30 s.
"""

from __future__ import annotations

import argparse
from typing import Any

from tuner.commands import add_heartbeat_options, int_at_least


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser
    p = subparsers.add_parser(
        "launch", help="supervise one worker per GPU (or --workers N on CPU)", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("study_file", metavar="STUDY.yaml", help="study definition")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--gpus", help="'all' or a comma-separated list of GPU indices, e.g. 0,1")
    which.add_argument("--workers", type=int_at_least(1), help="number of workers without GPUs (CPU)")
    p.add_argument(
        "--n-trials", type=int_at_least(1), default=None, help="trials in total (default: the file's n_trials)"
    )
    p.add_argument(
        "--max-restarts", type=int_at_least(0), default=3, help="restarts per crashed worker before giving up"
    )
    p.add_argument("--cache-dir", default=None, help="tokenized-data cache shared by the workers")
    add_heartbeat_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tuner.errors import TunerError
    from tuner.storage.connect import open_storage
    from tuner.storage.studies import create_or_load_study
    from tuner.storage.urls import mask_url, resolve_storage_url
    from tuner.study.loader import load_spec
    from tuner.trial.launcher import Launcher, parse_gpus

    spec = load_spec(args.study_file)
    if args.workers is not None and args.workers < 1:
        raise TunerError(f"--workers {args.workers}: give at least 1")
    gpus = parse_gpus(args.gpus) if args.gpus is not None else None
    url = resolve_storage_url(getattr(args, "storage", None))
    create_or_load_study(spec, open_storage(url))
    extra = ["--quiet"] + (["--cache-dir", args.cache_dir] if args.cache_dir else [])
    extra += ["--heartbeat-s", str(args.heartbeat_s)] if args.heartbeat_s is not None else []
    extra += ["--grace-s", str(args.grace_s)] if args.grace_s is not None else []
    n = len(gpus) if gpus is not None else args.workers
    print(
        f"launch: {n} worker(s) on study {spec.name} at {mask_url(url)}"
        + (f", GPUs {','.join(map(str, gpus))}" if gpus is not None else ""),
        flush=True,
    )
    launcher = Launcher(
        spec.name,
        url,
        gpus=gpus,
        workers=args.workers,
        n_trials=args.n_trials,
        max_restarts=args.max_restarts,
        extra_args=extra,
    )
    return launcher.run()
