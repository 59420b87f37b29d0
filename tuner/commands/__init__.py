"""One module per CLI subcommand: `add_parser(subparsers)` and `run(args) -> int`. Heavy imports live inside run()."""

import argparse
from typing import Any


def add_heartbeat_options(p: argparse.ArgumentParser) -> None:
    """--heartbeat-s / --grace-s, shared by every command that runs or starts workers (run, worker, launch)."""
    p.add_argument(
        "--heartbeat-s", type=int, default=None, help="seconds between a running trial's heartbeats (default 30)"
    )
    p.add_argument(
        "--grace-s",
        type=int,
        default=None,
        help="seconds without a heartbeat before a running trial is failed and retried (default 120; "
        "several heartbeats)",
    )


def open_worker_storage(url: str, args: Any) -> Any:
    """The storage a worker runs against, with this command's --heartbeat-s / --grace-s (only those given:
    open_storage's defaults otherwise). Through a `tuner proxy` (grpc://) the proxy fails stale trials with its
    own grace period, so a worker's --grace-s is refused rather than silently ignored."""
    from tuner.errors import StorageError
    from tuner.storage.connect import open_storage
    from tuner.storage.urls import is_grpc_url

    if is_grpc_url(url) and args.grace_s is not None:
        raise StorageError(
            f"--grace-s does nothing on a worker of the storage proxy {url}: the proxy fails stale trials with "
            "its own grace period; give it to `tuner proxy --grace-s` instead"
        )
    timing: dict[str, int] = {}
    if args.heartbeat_s is not None:
        timing["heartbeat_interval_s"] = int(args.heartbeat_s)
    if args.grace_s is not None:
        timing["grace_period_s"] = int(args.grace_s)
    return open_storage(url, **timing)


def add_trial_process_options(p: argparse.ArgumentParser) -> None:
    """--cache-dir / --threads, shared by the commands that run trials in this process tree (run, worker, train)."""
    p.add_argument("--cache-dir", default=None, help="tokenized-data cache (default: .phase1_cache in the cwd)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per trial on CPU (default 1: avoids oversubscribing shared cores; 0 = torch's "
        "default); ignored on a GPU",
    )
